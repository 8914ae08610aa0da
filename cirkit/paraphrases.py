"""Paraphrase robustness: how much a pipeline's scores depend on the wording of the modification.

The paraphrases come from a one-step pipeline (a `paraphrase` step on one of the pipeline's
language models, or texts given in a JSON file), so each query's paraphrases are a stored run that
can be read and edited like any other. The pipeline then runs once with the original modifications
and once per paraphrase; this module builds the paraphrase pipeline and sums up the variants.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from cirkit.components.paraphrase import MAX_PARAPHRASES, Paraphrase
from cirkit.errors import CirkitError
from cirkit.pipelines.spec import Pipeline, validate_pipeline

STEP = "paraphrase"
TEMPLATE = "paraphrase-modification"


def check_count(count: int) -> None:
    if not 1 <= count <= MAX_PARAPHRASES:
        raise CirkitError(f"--paraphrases must be between 1 and {MAX_PARAPHRASES}, got {count}")


def paraphrase_model(base: Pipeline, name: str | None) -> str:
    """The model entry that paraphrases: `name`, else the model of the pipeline's first rewrite
    step, else its first llm entry."""
    if name is not None:
        model = base.models.get(name)
        if model is None:
            raise CirkitError(f"--paraphrase-model {name}: pipeline '{base.name}' has no model '{name}' (its models: {', '.join(base.models)})")
        if model.type not in ("llm", "vlm"):
            raise CirkitError(f"--paraphrase-model {name}: '{name}' is a {model.type} model; paraphrasing needs an llm or vlm")
        return name
    for step in base.steps:
        model = base.model_for(step)
        if step.kind == "rewrite" and not step.given and model is not None and model.type == "llm":
            return step.spec.model
    llms = [key for key, model in base.models.items() if model.type == "llm"]
    if not llms:
        vlms = [key for key, model in base.models.items() if model.type == "vlm"]
        hint = f"; --paraphrase-model {vlms[0]} paraphrases with its vlm" if vlms else ""
        raise CirkitError(f"--paraphrases: pipeline '{base.name}' has no llm model to paraphrase with{hint}")
    return llms[0]


def paraphrase_pipeline(base: Pipeline, count: int, *, model: str | None = None, given: str | Path | None = None) -> Pipeline:
    """The one-step pipeline that makes `count` paraphrases of each modification: with the base
    pipeline's model (see paraphrase_model), or taken from a JSON file {query id: [texts]}."""
    if given is not None:
        step: dict[str, Any] = {"name": STEP, "kind": "paraphrase", "given": str(Path(given).expanduser().resolve())}
        models: dict[str, Any] = {}
        how = f"taken from {given}"
    else:
        name = paraphrase_model(base, model)
        models = {name: base.models[name].model_dump(mode="json", exclude_none=True)}
        step = {"name": STEP, "kind": "paraphrase", "model": name, "prompt": TEMPLATE, "params": {"count": count}}
        how = f"by model '{name}'"
    data = {"name": f"{base.name}-paraphrases", "description": f"{count} paraphrases of each modification, {how}",
            "models": models, "steps": [step]}
    text = f"# paraphrases of the modifications for {base.source}\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    return validate_pipeline(data, base.source, text, Path(base.source).parent, {})


def check_given(pipeline: Pipeline, query_ids: list[str], count: int) -> None:
    """Every query has at least `count` paraphrases in the file the pipeline's step takes them from."""
    source, texts = pipeline.step(STEP).given
    for qid in query_ids:
        value = texts.get(qid)
        if value is None:
            raise CirkitError(f"--paraphrases-file {source}: no paraphrases for query {qid}")
        have = len(Paraphrase.given_outputs(value)["texts"])
        if have < count:
            raise CirkitError(f"--paraphrases-file {source}: query {qid} has {have} paraphrase{'' if have == 1 else 's'}, --paraphrases asks for {count}")


def summarize(metrics: list[dict[str, Any]], ranks: list[dict[str, int | None]]) -> dict[str, Any]:
    """The variants (the original first, then each paraphrase) summed up: per metric, each variant's
    value, the mean and sample standard deviation (n - 1), min, max and spread (max - min); and the
    queries whose target rank is not the same in every variant (a target not found is a rank too)."""
    keys = [k for k, v in metrics[0].items() if isinstance(v, float)]  # the protocol's metrics (counts aside)
    out: dict[str, Any] = {}
    for key in keys:
        values = [m.get(key) for m in metrics]
        if not all(isinstance(v, (int, float)) for v in values):
            continue
        mean = sum(values) / len(values)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        out[key] = {"original": values[0], "paraphrases": values[1:], "mean": mean, "sd": sd,
                    "min": min(values), "max": max(values), "spread": max(values) - min(values)}
    common = [qid for qid in ranks[0] if all(qid in r for r in ranks[1:])]
    changed = [qid for qid in common if len({r[qid] for r in ranks}) > 1]
    return {"metrics": out, "rank_changed": len(changed) / len(common) if common else 0.0,
            "queries_changed": changed, "queries": len(common)}
