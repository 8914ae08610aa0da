"""Parameter grids and repeats over one pipeline: parsing `--grid STEP.PARAM=[v1, v2, ...]`, the
pipeline of each setting (validated before anything runs), the seeds of each repeat, and the mean
and standard deviation of metrics across repeats.

A setting's pipeline is the base file with its step parameters replaced; its stored text is that
variant, so a run of it re-runs as it ran. Settings share every step whose kind, model, parameters,
templates and inputs they share, through the run store's step cache.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cirkit.errors import CirkitError, one_line
from cirkit.pipelines.spec import Pipeline, validate_pipeline

MAX_SETTINGS = 10_000

# The metric a protocol's papers lead with: what a sweep ranks its settings by (CIRR's leaderboard
# reports Avg = (R@5 + R_subset@1) / 2 where the subset metrics exist).
HEADLINE = {"cirr": ("Avg", "R@1"), "circo": ("mAP@5",), "fashioniq": ("R@10",), "genecis": ("R@1",), "triplets": ("R@1",)}


@dataclass
class Axis:
    step: str
    param: str
    values: list[Any]

    @property
    def name(self) -> str:
        return f"{self.step}.{self.param}"


@dataclass
class Setting:
    values: dict[str, Any] = field(default_factory=dict)  # {"STEP.PARAM": value}, in grid order

    @property
    def label(self) -> str:
        return ", ".join(f"{key}={show_value(value)}" for key, value in self.values.items()) or "as in the file"

    def params(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for key, value in self.values.items():
            step, _, param = key.partition(".")
            out.setdefault(step, {})[param] = value
        return out


def parse_grid(items: list[str] | None) -> list[Axis]:
    """`STEP.PARAM=[v1, v2, ...]` flags (values in YAML flow style; one value without brackets)."""
    axes: list[Axis] = []
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        step, dot, param = key.partition(".")
        if not sep or not dot or not step or not param or not text.strip():
            raise CirkitError(f"--grid expects STEP.PARAM=[v1,v2,...], e.g. 'pdv.beta=[0.5,0.7,0.9]', got '{item}'")
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise CirkitError(f"--grid {key}: the values are not a YAML list: {one_line(exc)}") from None
        if not isinstance(values, list):
            values = [values]
        if not values:
            raise CirkitError(f"--grid {key}: the list of values is empty")
        seen = []
        for value in values:
            if value in seen:
                raise CirkitError(f"--grid {key}: value {show_value(value)} is given twice")
            seen.append(value)
        if any(axis.name == key for axis in axes):
            raise CirkitError(f"--grid names {key} twice: give all its values in one list")
        axes.append(Axis(step, param, values))
    return axes


def settings_of(axes: list[Axis]) -> list[Setting]:
    """The cartesian product of the axes, the first axis slowest; one empty setting for no axes."""
    count = math.prod(len(a.values) for a in axes)
    if count > MAX_SETTINGS:
        raise CirkitError(f"--grid makes {count} settings; the limit is {MAX_SETTINGS}")
    return [Setting(dict(zip((a.name for a in axes), combo))) for combo in itertools.product(*(a.values for a in axes))]


def variant(base: Pipeline, params: dict[str, dict[str, Any]], label: str | None = None) -> Pipeline:
    """The base pipeline with these step parameters replaced, validated (CirkitError on one line)."""
    if not params:
        return base
    data = yaml.safe_load(base.text)
    steps = {s.get("name"): s for s in data.get("steps", []) if isinstance(s, dict)}
    for step, values in params.items():
        entry = steps[step]
        entry["params"] = {**(entry.get("params") or {}), **values}
    text = f"# {base.source}, with {label or _label(params)}\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    overrides = base.overrides or {}
    return validate_pipeline(data, base.source, text, Path(base.source).parent, overrides.get("prompts") or {},
                             overrides.get("models"), overrides.get("benchmark"))


def check_settings(base: Pipeline, axes: list[Axis]) -> list[tuple[Setting, Pipeline]]:
    """Every setting's pipeline, validated before anything runs: each value alone first, so that an
    error names the one value at fault, then each combination."""
    if not axes:
        raise CirkitError("the grid is empty: give at least one --grid STEP.PARAM=[v1,v2,...]")
    names = [s.name for s in base.steps]
    for axis in axes:
        if axis.step not in names:
            raise CirkitError(f"--grid {axis.name}: pipeline '{base.name}' has no step '{axis.step}' (steps: {', '.join(names)})")
        step = base.step(axis.step)
        fields = list(step.component.Params.model_fields)
        if axis.param not in fields:
            raise CirkitError(
                f"--grid {axis.name}: a {step.kind} step has no parameter '{axis.param}' (its parameters: {', '.join(fields) or 'none'})"
            )
        if step.given:
            raise CirkitError(f"--grid {axis.name}: step '{axis.step}' takes its texts from {step.given[0]}, so its parameters do nothing")
        for value in axis.values:
            _checked(base, {axis.step: {axis.param: value}}, f"{axis.name}={show_value(value)}")
    out = []
    for setting in settings_of(axes):
        out.append((setting, _checked(base, setting.params(), setting.label)))
    return out


def repeat_params(pipeline: Pipeline, repeat: int) -> dict[str, dict[str, Any]]:
    """The seeds of repeat `repeat` (0 is the file's own): seed + repeat for every step that samples
    (temperature > 0) or calls a hosted model (openai, langchain engines), whose answers may differ
    between calls; a changed seed is also a new cache key, so such a step is called again."""
    if repeat == 0:
        return {}
    out = {}
    for step in pipeline.steps:
        if step.given or "seed" not in type(step.params).model_fields:
            continue
        model = pipeline.model_for(step)
        hosted = model is not None and model.engine in ("openai", "langchain")
        if getattr(step.params, "temperature", 0) > 0 or hosted:
            out[step.name] = {"seed": step.params.seed + repeat}
    return out


def varies(pipeline: Pipeline) -> bool:
    """Whether repeats of the pipeline can differ (a step samples or calls a hosted model)."""
    return bool(repeat_params(pipeline, 1))


def spread(values: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, float]]:
    """The mean of each numeric metric over the repeats, and its sample standard deviation (n - 1;
    0 for one repeat). Non-numeric entries are kept from the first repeat."""
    mean: dict[str, Any] = {}
    sd: dict[str, float] = {}
    for key, first in values[0].items():
        column = [m.get(key) for m in values]
        if isinstance(first, bool) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in column):
            mean[key] = first
            continue
        mu = sum(column) / len(column)
        mean[key] = mu
        sd[key] = math.sqrt(sum((v - mu) ** 2 for v in column) / (len(column) - 1)) if len(column) > 1 else 0.0
    return mean, sd


def headline(protocol: str, metrics: dict[str, Any], chosen: str | None = None) -> str:
    """The metric to rank settings by: the chosen one, else the protocol's headline."""
    if chosen:
        return chosen
    for key in HEADLINE.get(protocol, ()):
        if isinstance(metrics.get(key), (int, float)):
            return key
    return next((k for k, v in metrics.items() if isinstance(v, float)), "")


def _checked(base: Pipeline, params: dict[str, dict[str, Any]], label: str) -> Pipeline:
    try:
        return variant(base, params, label)
    except CirkitError as exc:
        message = str(exc).removeprefix(f"{base.source}: ")
        raise CirkitError(f"--grid {label}: {message}") from None


def _label(params: dict[str, dict[str, Any]]) -> str:
    return ", ".join(f"{step}.{k}={show_value(v)}" for step, values in params.items() for k, v in values.items())


def show_value(value: Any) -> str:
    return value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
