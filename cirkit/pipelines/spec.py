"""Pipeline files: what they may contain, and validation before any model loads.

Every error names the file, the step and the field, on one line.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cirkit.components import COMPONENTS, QUERY_VALUES
from cirkit.components.values import accepts
from cirkit.errors import CirkitError, one_line
from cirkit.pipelines.control import MAX_ROUNDS, Condition, Loop, LoopSpec
from cirkit.prompts import Prompt, load_prompt

BUILTIN_DIR = Path(__file__).parent / "builtin"


class ModelSpec(BaseModel):
    """A model a step uses, and the engine that reaches it.

    vlm / llm engines:
      transformers  in process; `id` is a Hugging Face id or a local directory
      vllm          in process (optional extra); `id` as for transformers, `options` go to vllm.LLM
      openai        any OpenAI-compatible server: `base_url`, `id` = the served model name,
                    the API key read from the environment variable `api_key_env` (if set)
      langchain     any langchain-core chat model: `class_path` ("package.module:Class"), `options` its kwargs
      ray           on a Ray cluster (Ray Data): `options.processor` http (`base_url`), vllm or transformers
                    (`id` loaded by each replica); `options.address`, `replicas`, ... (cirkit.engines.ray_engine)
    clip (engine `open_clip`): `name` + `pretrained` tag (or checkpoint path), or a local model
    config JSON as `name` + a checkpoint as `pretrained`.
    image_editor (engine `diffusers`, an optional extra): `id` is a diffusers pipeline that edits an
    image by a prompt (hub id or local directory); `options` go to DiffusionPipeline.from_pretrained.
    """

    model_config = ConfigDict(extra="forbid")
    type: Literal["vlm", "llm", "clip", "image_editor"]
    engine: Literal["transformers", "vllm", "openai", "langchain", "ray", "open_clip", "diffusers"] | None = None
    id: str | None = None
    revision: str | None = None
    name: str | None = None
    pretrained: str | None = None
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: str = "auto"
    base_url: str | None = None
    api_key_env: str | None = None
    timeout: float = Field(120.0, gt=0)
    max_concurrency: int = Field(8, ge=1, le=1024)
    max_retries: int = Field(5, ge=0, le=100)
    class_path: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    # clip models: image preprocessing, "clip" (open_clip's own) or "targetpad" ({name: targetpad,
    # pad_ratio: 1.25}); checked into None (clip) or {name: targetpad, pad_ratio: R}
    preprocess: str | dict[str, Any] | None = Field(None, exclude_if=lambda v: v is None)

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.type == "clip":
            from cirkit.engines.open_clip_engine import preprocess_option

            self.engine = self.engine or "open_clip"
            if self.engine != "open_clip":
                raise ValueError("a clip model runs on engine 'open_clip'")
            if not self.name:
                raise ValueError("a clip model needs 'name' (open_clip model name or config JSON path)")
            self.preprocess = preprocess_option(self.preprocess)
            return self
        if self.preprocess is not None:
            raise ValueError(f"'preprocess' (clip or targetpad) is an option of clip models, not of a {self.type} model")
        if self.type == "image_editor" or self.engine == "diffusers":
            self.engine = self.engine or "diffusers"
            if self.type != "image_editor" or self.engine != "diffusers":
                raise ValueError("an image_editor model runs on engine 'diffusers', and engine 'diffusers' runs image_editor models")
            if not self.id:
                raise ValueError("an image_editor model needs 'id' (a diffusers pipeline: hub id or local directory)")
            return self
        self.engine = self.engine or "transformers"
        if self.engine == "open_clip":
            raise ValueError(f"a {self.type} model runs on engine transformers, vllm, openai, langchain or ray")
        if self.engine in ("transformers", "vllm") and not self.id:
            raise ValueError(f"a {self.type} model on {self.engine} needs 'id' (Hugging Face id or local directory)")
        if self.engine == "openai" and not (self.base_url and self.id):
            raise ValueError("an openai-engine model needs 'base_url' and 'id' (the model name the server serves)")
        if self.engine == "langchain" and not self.class_path:
            raise ValueError("a langchain-engine model needs 'class_path', e.g. langchain_openai:ChatOpenAI")
        if self.engine == "ray":
            from cirkit.engines.ray_engine import ray_options

            ray_options(self)
        return self

    def resolve_paths(self, base_dir: Path) -> None:
        """Make file references relative to the pipeline file absolute."""
        local = self.engine in ("transformers", "vllm", "open_clip", "diffusers") or (self.engine == "ray" and not self.base_url)
        fields = ("id", "name", "pretrained") if local else ()
        for field in fields:
            value = getattr(self, field)
            if value and _looks_like_path(value):
                path = Path(value).expanduser()
                candidates = [path] if path.is_absolute() else [base_dir / path, path]
                found = next((c for c in candidates if c.exists()), None)
                if found is None:
                    raise ValueError(f"'{field}': no such file or directory: {value}")
                setattr(self, field, str(found.resolve()))


class StepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str
    kind: str
    model: str | None = None
    # one template, several for an ensemble, or a map {benchmark family or "default": template(s)}
    prompt: str | list[str] | dict[str, str | list[str]] | None = None
    inputs: dict[str, str] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    # take the step's texts from a JSON file {query id or reference image name: text or [texts]}
    given: str | None = None
    when: str | None = None  # run only for the queries meeting this condition (cirkit.pipelines.control)
    loop: LoopSpec | None = None  # open a group of steps repeated per query while a condition holds
    # publish outputs under other names: {results: text_results} makes `text_results` the latest such value
    # (STEP.results still names this step's own)
    as_: dict[str, str] = Field(default_factory=dict, alias="as")


class PipelineFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    steps: list[StepSpec]


class Step:
    """A validated step: its component class, parsed params, prompt templates and input wiring."""

    def __init__(
        self, spec: StepSpec, params: BaseModel, prompts: list[Prompt], inputs: dict[str, str],
        given: tuple[str, dict[str, Any]] | None = None, when: Condition | None = None,
    ):
        self.spec = spec
        self.name = spec.name
        self.kind = spec.kind
        self.component = COMPONENTS[spec.kind]
        self.params = params
        self.prompts = prompts
        self.inputs = inputs
        self.given = given  # (file, {key: text or [texts]}) when the step's texts come from a file
        self.when = when
        self.loop: Loop | None = None  # set on the step that opens a loop
        self.in_loop: Loop | None = None  # set on every step of a loop

    def published(self, outputs: dict[str, Any]) -> dict[str, Any]:
        """The names later steps read the outputs by: each under its own (or `as`) name, and as STEP.OUTPUT."""
        named = {}
        for name, value in outputs.items():
            named[self.spec.as_.get(name, name)] = value
            named[f"{self.name}.{name}"] = value
        return named


class Pipeline:
    """A validated pipeline: the models it names and its ordered steps."""

    def __init__(self, spec: PipelineFile, steps: list[Step], source: str, text: str, overrides: dict[str, Any] | None = None):
        self.spec = spec
        self.steps = steps
        self.source = source
        self.text = text
        self.overrides = overrides  # what the command line replaced: {"models": {name: entry}, "prompts": {step: [templates]}}

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def models(self) -> dict[str, ModelSpec]:
        return self.spec.models

    @property
    def hash(self) -> str:
        """Content hash of the pipeline as it runs: the file plus the prompt templates it uses."""
        h = hashlib.sha256(self.text.encode())
        if self.overrides:
            h.update(json.dumps(self.overrides, sort_keys=True).encode())
        for step in self.steps:
            for prompt in step.prompts:
                h.update(f"\x00{step.name}\x00{prompt.text}".encode())
        return h.hexdigest()

    def model_for(self, step: Step) -> ModelSpec | None:
        return self.models[step.spec.model] if step.spec.model else None

    def clip_model(self) -> ModelSpec:
        """The CLIP model whose image vectors the gallery index must hold."""
        for step in self.steps:
            spec = self.model_for(step)
            if spec is not None and spec.type == "clip":
                return spec
        raise CirkitError(f"{self.source}: no step uses a clip model, so it cannot search a gallery")

    def wiring(self) -> list[dict[str, Any]]:
        """Each step's inputs resolved to the query value or the earlier step output they read, with types."""
        producers = {name: f"query.{name}" for name in QUERY_VALUES}
        makers: dict[str, list[str]] = {}
        types = dict(QUERY_VALUES)
        out = []
        for step in self.steps:
            inputs = {}
            for name, source in step.inputs.items():
                if source is None:
                    continue
                origin = producers.get(source, source)
                inputs[name] = {"from": origin, "type": types.get(source, step.component.inputs[name].type)}
            outputs = dict(step.component.outputs)
            for name, value_type in outputs.items():
                bare = step.spec.as_.get(name, name)
                made = f"{step.name}.{name}"
                # a step some queries skip leaves them the value an earlier step made under that name
                may_skip = step.in_loop is not None or step.when is not None
                makers[bare] = [*makers.get(bare, []), made] if may_skip else [made]
                producers[bare] = made if len(makers[bare]) == 1 else "latest of " + ", ".join(makers[bare])
                producers[made] = made
                types[bare] = types[made] = value_type
            model = self.model_for(step)
            out.append({
                "step": step.name, "kind": step.kind, "model": step.spec.model,
                "model_id": (model.id or model.name) if model else None,
                "prompts": [p.name for p in step.prompts], "given": step.given[0] if step.given else None,
                "inputs": inputs, "outputs": outputs,
            })
        return out

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise CirkitError(f"pipeline '{self.name}' has no step '{name}' (steps: {', '.join(s.name for s in self.steps)})")


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def builtin_path(name: str) -> Path | None:
    path = BUILTIN_DIR / f"{name}.yaml"
    return path if path.is_file() else None


def load_pipeline(
    ref: str | Path, prompt_overrides: dict[str, list[str]] | None = None,
    model_overrides: dict[str, dict[str, Any]] | None = None, benchmark: str | None = None,
) -> Pipeline:
    """A built-in pipeline by name or a pipeline file by path, validated; loads no model.

    `model_overrides` replaces model entries for this call ({name: entry}); an entry that leaves
    out `type` keeps the type of the entry it replaces."""
    path = builtin_path(str(ref)) if not _looks_like_path(str(ref)) else None
    if path is None:
        path = Path(ref).expanduser()
        if not path.is_file():
            hint = "" if _looks_like_path(str(ref)) else f"; built-in pipelines: {', '.join(builtin_names())}"
            raise CirkitError(f"pipeline not found: {ref}{hint}")
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise CirkitError(f"{source}: cannot read pipeline file: {one_line(exc)}") from None
    except yaml.YAMLError as exc:
        raise CirkitError(f"{source}: not valid YAML: {one_line(exc)}") from None
    return validate_pipeline(data, source, text, path.parent, prompt_overrides or {}, model_overrides or {}, benchmark)


def validate_pipeline(
    data: Any, source: str, text: str, base_dir: Path, prompt_overrides: dict[str, list[str]],
    model_overrides: dict[str, dict[str, Any]] | None = None, benchmark: str | None = None,
) -> Pipeline:
    """`benchmark` (a family such as cirr or genecis-focus-attribute, see BENCHMARK_FAMILIES) picks
    from per-benchmark prompt maps and `by_benchmark` params; None picks their `default`."""
    if not isinstance(data, dict):
        raise CirkitError(f"{source}: a pipeline file must be a mapping with 'name', 'models' and 'steps'")
    if model_overrides:
        data = _with_models(data, model_overrides, source)
    step_names = [s.get("name") if isinstance(s, dict) else None for s in data.get("steps") or []]
    try:
        spec = PipelineFile.model_validate(data)
    except ValidationError as exc:
        raise CirkitError(f"{source}: {_where(exc, step_names)}") from None
    for key, model in spec.models.items():
        try:
            model.resolve_paths(base_dir)
        except ValueError as exc:
            raise CirkitError(f"{source}: model '{key}': {exc}") from None
    if not spec.steps:
        raise CirkitError(f"{source}: field 'steps': the pipeline has no steps")

    unknown = set(prompt_overrides) - {s.name for s in spec.steps}
    if unknown:
        raise CirkitError(f"--prompt names no step of pipeline '{spec.name}': {', '.join(sorted(unknown))}")

    available: dict[str, str] = dict(QUERY_VALUES)  # value name -> value type
    seen: set[str] = set()
    steps = []
    for spec_step in spec.steps:
        where = f"{source}: step '{spec_step.name}'"
        if spec_step.name in seen:
            raise CirkitError(f"{where}: field 'name': another step has the same name")
        seen.add(spec_step.name)
        component = COMPONENTS.get(spec_step.kind)
        if component is None:
            raise CirkitError(
                f"{where}: field 'kind': unknown component kind '{spec_step.kind}' "
                f"(known: {', '.join(sorted(COMPONENTS))})"
            )
        given = None
        if spec_step.given:
            if component.editable is None:
                raise CirkitError(f"{where}: field 'given': a {spec_step.kind} step has no text output to take from a file")
            given = _read_given(spec_step.given, base_dir, where)
        if component.model_types and given is None:
            if not spec_step.model:
                raise CirkitError(f"{where}: field 'model': a {spec_step.kind} step needs a model")
            model = spec.models.get(spec_step.model)
            if model is None:
                raise CirkitError(
                    f"{where}: field 'model': unknown model reference '{spec_step.model}' "
                    f"(models in this file: {', '.join(spec.models) or 'none'})"
                )
            if model.type not in component.model_types:
                raise CirkitError(
                    f"{where}: field 'model': '{spec_step.model}' is a {model.type} model; "
                    f"a {spec_step.kind} step needs {' or '.join(component.model_types)}"
                )
        elif spec_step.model:
            raise CirkitError(f"{where}: field 'model': a {spec_step.kind} step takes no model")

        refs = prompt_overrides.get(spec_step.name) or _for_benchmark(spec_step.prompt, benchmark, f"{where}: field 'prompt'") or []
        refs = [refs] if isinstance(refs, str) else list(refs)
        prompts = []
        if component.prompt_variables is not None and given is None:
            if not refs:
                raise CirkitError(f"{where}: field 'prompt': a {spec_step.kind} step needs a prompt template")
            if component.max_prompts is not None and len(refs) > component.max_prompts:
                raise CirkitError(f"{where}: field 'prompt': a {spec_step.kind} step takes one template, got {len(refs)}")
            for ref in refs:
                try:
                    prompt = load_prompt(ref, base_dir)
                except CirkitError as exc:
                    group, _, constant = str(ref).partition("/")
                    hint = ""
                    if constant and "/" not in constant and not group.startswith((".", "~")) and not str(ref).endswith((".yaml", ".yml")):
                        hint = f"; '{group}/...' templates are imported: cirkit prompts import PATH/TO/prompts.py --as {group}"
                    raise CirkitError(f"{where}: field 'prompt': {exc}{hint}") from None
                missing = [v for v in prompt.variables if v not in component.prompt_variables]
                if missing:
                    raise CirkitError(
                        f"{where}: field 'prompt': template '{prompt.name}' uses variable(s) "
                        f"{', '.join(missing)} that a {spec_step.kind} step does not provide "
                        f"(it provides: {', '.join(component.prompt_variables) or 'none'})"
                    )
                prompts.append(prompt)
        elif refs and given is None:
            raise CirkitError(f"{where}: field 'prompt': a {spec_step.kind} step takes no prompt")

        try:
            chosen = {
                key: _for_benchmark(value["by_benchmark"], benchmark, f"{where}: field 'params.{key}.by_benchmark'")
                if isinstance(value, dict) and set(value) == {"by_benchmark"} and isinstance(value["by_benchmark"], dict) else value
                for key, value in spec_step.params.items()
            }
            params = component.Params.model_validate(chosen)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(x) for x in err["loc"])
            raise CirkitError(f"{where}: field 'params.{field}': {err['msg']}") from None

        unknown_inputs = set(spec_step.inputs) - set(component.inputs)
        if unknown_inputs:
            raise CirkitError(
                f"{where}: field 'inputs': a {spec_step.kind} step has no input(s) {', '.join(sorted(unknown_inputs))} "
                f"(its inputs: {', '.join(component.inputs)})"
            )
        wiring = {name: spec_step.inputs.get(name, port.default) for name, port in component.inputs.items()}
        for name, value_name in wiring.items():
            port = component.inputs[name]
            if value_name is None:
                if port.optional:
                    continue
                raise CirkitError(
                    f"{where}: field 'inputs.{name}': a {spec_step.kind} step needs its input '{name}' ({port.type}) wired, "
                    f"e.g. inputs: {{{name}: STEP.OUTPUT}} (available: {_listing(available, port.type)})"
                )
            if value_name not in available:
                raise CirkitError(
                    f"{where}: field 'inputs.{name}': no earlier step produces '{value_name}' "
                    f"(available: {_listing(available, port.type)})"
                )
            if not accepts(port.type, available[value_name]):
                raise CirkitError(
                    f"{where}: field 'inputs.{name}': '{value_name}' is of type {available[value_name]}, the input takes "
                    f"{port.type} (available of that type: {_listing(available, port.type)})"
                )
        try:
            component.check(params, wiring)
        except ValueError as exc:
            raise CirkitError(f"{where}: {exc}") from None
        when = _condition(spec_step.when, available, f"{where}: field 'when'") if spec_step.when is not None else None
        if spec_step.loop is not None:
            _condition(spec_step.loop.while_, available, f"{where}: field 'loop.while'")
        for out, alias in spec_step.as_.items():
            if out not in component.outputs:
                raise CirkitError(f"{where}: field 'as': a {spec_step.kind} step has no output '{out}' (its outputs: {', '.join(component.outputs)})")
            if not alias.isidentifier() or alias in QUERY_VALUES:
                raise CirkitError(f"{where}: field 'as.{out}': '{alias}' must be a plain name, not one of the query's values")
        for out, value_type in component.outputs.items():
            available[spec_step.as_.get(out, out)] = available[f"{spec_step.name}.{out}"] = value_type
        steps.append(Step(spec_step, params, prompts, wiring, given, when))
    _attach_loops(steps, source)
    overrides = {key: value for key, value in (("models", model_overrides), ("prompts", prompt_overrides), ("benchmark", benchmark)) if value}
    return Pipeline(spec, steps, source, text, overrides or None)


def _condition(text: str, available: dict[str, str], where: str) -> Condition:
    try:
        condition = Condition.parse(text)
    except ValueError as exc:
        raise CirkitError(f"{where}: {exc}") from None
    scores = sorted(name for name, value_type in available.items() if value_type == "score")
    if condition.value not in available:
        raise CirkitError(f"{where}: no earlier step makes '{condition.value}' (values a condition can test: {', '.join(scores) or 'none'})")
    if available[condition.value] != "score":
        raise CirkitError(
            f"{where}: '{condition.value}' is of type {available[condition.value]}; a condition tests a score "
            f"(available: {', '.join(scores) or 'none'})"
        )
    return condition


def _attach_loops(steps: list[Step], source: str) -> None:
    """Resolve each `loop:` to the positions it spans; loops may neither overlap nor nest."""
    names = [step.name for step in steps]
    for first, step in enumerate(steps):
        spec = step.spec.loop
        if spec is None:
            continue
        where = f"{source}: step '{step.name}': field 'loop"
        if spec.max_rounds is None:
            raise CirkitError(f"{where}.max_rounds': a loop needs a bound: the most rounds a query may run (1..{MAX_ROUNDS})")
        if not 1 <= spec.max_rounds <= MAX_ROUNDS:
            raise CirkitError(f"{where}.max_rounds': {spec.max_rounds} is out of range (1..{MAX_ROUNDS})")
        if spec.through not in names or names.index(spec.through) < first:
            raise CirkitError(f"{where}.through': '{spec.through}' is not this step or a later one (later steps: {', '.join(names[first:])})")
        loop = Loop(first, names.index(spec.through), Condition.parse(spec.while_), spec.max_rounds)
        step.loop = loop
        for inner in steps[loop.first : loop.last + 1]:
            if inner.in_loop is not None:
                raise CirkitError(f"{where}': step '{inner.name}' is already in the loop opened by '{steps[inner.in_loop.first].name}'; loops may not overlap")
            if inner.given is not None:
                raise CirkitError(f"{where}': step '{inner.name}' takes its texts from a file, which a loop cannot repeat")
            inner.in_loop = loop


def _with_models(data: dict[str, Any], overrides: dict[str, dict[str, Any]], source: str) -> dict[str, Any]:
    models = data.get("models") if isinstance(data.get("models"), dict) else {}
    unknown = [name for name in overrides if name not in models]
    if unknown:
        raise CirkitError(f"--model {unknown[0]}: {source} has no model '{unknown[0]}' (its models: {', '.join(models) or 'none'})")
    replaced = dict(models)
    for name, entry in overrides.items():
        old_type = models[name].get("type") if isinstance(models[name], dict) else None
        replaced[name] = {"type": old_type, **entry} if old_type and "type" not in entry else dict(entry)
    return {**data, "models": replaced}


# What a per-benchmark map may name: a benchmark family, `genecis` for its four tasks, or `default`.
BENCHMARK_FAMILIES = (
    "cirr", "circo", "fashioniq", "genecis-focus-object", "genecis-change-object",
    "genecis-focus-attribute", "genecis-change-attribute", "triplets",
)


def _for_benchmark(value: Any, benchmark: str | None, where: str) -> Any:
    """The entry of a per-benchmark map for this benchmark family (else its group, else `default`)."""
    if not isinstance(value, dict):
        return value
    unknown = sorted(set(value) - {*BENCHMARK_FAMILIES, "genecis", "default"})
    if unknown:
        raise CirkitError(f"{where}: '{unknown[0]}' is not a benchmark family (known: {', '.join(BENCHMARK_FAMILIES)}, genecis, default)")
    for key in (benchmark, benchmark.split("-")[0] if benchmark else None, "default"):
        if key in value:
            return value[key]
    for_what = f"benchmark '{benchmark}'" if benchmark else "a query outside a benchmark"
    raise CirkitError(f"{where}: the per-benchmark map has no entry for {for_what} and no 'default' (it has: {', '.join(value)})")


def _listing(available: dict[str, str], value_type: str) -> str:
    fitting = sorted(name for name, t in available.items() if accepts(value_type, t))
    return ", ".join(fitting) or "none"


def _read_given(ref: str, base_dir: Path, where: str) -> tuple[str, dict[str, Any]]:
    path = Path(ref).expanduser()
    if not path.is_absolute() and (base_dir / path).exists():
        path = base_dir / path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CirkitError(f"{where}: field 'given': cannot read {ref}: {one_line(exc)}") from None
    except ValueError as exc:
        raise CirkitError(f"{where}: field 'given': {ref} is not JSON: {one_line(exc)}") from None
    if not isinstance(data, dict) or not all(
        isinstance(v, str) or (isinstance(v, list) and v and all(isinstance(x, str) for x in v)) for v in data.values()
    ):
        raise CirkitError(f"{where}: field 'given': {ref} must be a JSON object {{key: text or [texts]}}")
    return str(path.resolve()), data


def _where(exc: ValidationError, step_names: list[Any]) -> str:
    err = exc.errors()[0]
    loc = list(err["loc"])
    prefix = ""
    if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
        name = step_names[loc[1]] if loc[1] < len(step_names) else None
        prefix = f"step '{name}': " if name else f"step #{loc[1] + 1}: "
        loc = loc[2:]
    elif len(loc) >= 2 and loc[0] == "models":
        prefix = f"model '{loc[1]}': "
        loc = loc[2:]
    field = ".".join(str(x) for x in loc)
    msg = err["msg"].removeprefix("Value error, ")
    return f"{prefix}field '{field}': {msg}" if field else f"{prefix}{msg}"


def _looks_like_path(value: str) -> bool:
    return (
        value.startswith((".", "/", "~"))
        or value.endswith((".yaml", ".yml", ".json", ".pt", ".bin", ".safetensors"))
        or Path(value).expanduser().exists() and "/" in value
    )
