"""Fixing runs by hand: edit an intermediate, re-run only what follows, compare two runs.

A revision never changes the original run: it is stored as a new run linked to it (parent_id),
with the steps before the change copied, the edited step marked as edited by hand, and the steps
after it run again (from the cache where their inputs did not change). It runs the pipeline text
stored with the original run, not the file it came from (which may have changed or gone since),
unless another pipeline is given.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cirkit.engines import ModelPool
from cirkit.errors import CirkitError, ImageError, one_line
from cirkit.gallery import GalleryIndex
from cirkit.images import load_image
from cirkit.pipelines import Pipeline, load_pipeline
from cirkit.pipelines.spec import BUILTIN_DIR, validate_pipeline
from cirkit.pipelines.runner import Prefilled, Query, run_queries
from cirkit.pipelines.stored_images import stored_images
from cirkit.store import RunRecord, RunStore, StepRecord


@dataclass
class Revision:
    """One change to apply to a stored run: edit a step's text, or re-run from a step."""

    run_id: str
    step: str | None  # None: the pipeline's first step
    text: str | None = None  # None: re-run from `step` without editing
    round: int = 0  # of a step in a loop: which round to edit or re-run from
    image: Path | None = None  # for a step that makes an image: the image to put in its place


def revise(
    store: RunStore,
    revisions: list[Revision],
    *,
    pipeline: str | Path | None = None,
    prompts: dict[str, list[str]] | None = None,
    index: str | Path | None = None,
    models: ModelPool | None = None,
    use_cache: bool = True,
    progress: bool = False,
    model_overrides: dict[str, dict[str, Any]] | None = None,
) -> list[str]:
    """Apply the revisions (batched per pipeline); returns the new run ids in order.

    Each new run uses the pipeline text stored with the original unless `pipeline` (a file or a
    built-in name) is given, with `prompts` swapped in and `model_overrides` replacing model entries
    (on top of those the original's command line replaced); where the original's pipeline file changed
    since, the new run's change says so under "note". Validation problems raise CirkitError before
    anything is stored.
    """
    plans = [_plan(store, r, pipeline, prompts, model_overrides) for r in revisions]
    run_ids: list[str | None] = [None] * len(plans)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, plan in enumerate(plans):
        groups.setdefault((plan["pipeline"].hash, plan["index"]), []).append(i)
    models = models or ModelPool()
    for (_, index_dir), members in groups.items():
        gallery = GalleryIndex.open(index_dir)
        pipe = plans[members[0]]["pipeline"]
        ids = run_queries(
            pipe,
            [plans[i]["query"] for i in members],
            index=gallery,
            store=store,
            models=models,
            progress=progress,
            use_cache=use_cache,
            raise_on_failure=False,
            prefilled=[plans[i]["prefilled"] for i in members],
        )
        for i, run_id in zip(members, ids):
            run_ids[i] = run_id
    return run_ids  # type: ignore[return-value]


def _plan(store: RunStore, revision: Revision, pipeline_ref, prompts, model_overrides=None) -> dict[str, Any]:
    run = store.get(revision.run_id)
    note = None
    if pipeline_ref is not None:
        pipe = load_pipeline(pipeline_ref, prompts, model_overrides, benchmark=(run.overrides or {}).get("benchmark"))
    else:
        pipe = stored_pipeline(run, prompts, model_overrides)
        note = _source_note(run)
    step = pipe.step(revision.step) if revision.step else pipe.steps[0]
    start = pipe.steps.index(step)
    if revision.round and not step.in_loop:
        raise CirkitError(f"step '{step.name}' is in no loop, so it has no round {revision.round}")
    target = next((j for j, r in enumerate(run.steps) if r.name == step.name and r.round == revision.round), None)
    if target is None:
        run.step(step.name, revision.round if step.in_loop else None)  # names the rounds it has, if any
        raise CirkitError(f"run {run.id} has no stored step '{step.name}' to start from (it failed or was skipped before it)")
    earlier = run.steps[:target]
    names = {s.name: s for s in pipe.steps}
    for stored in earlier:
        if stored.name not in names or stored.kind != names[stored.name].kind or stored.status not in ("ok", "skipped"):
            raise CirkitError(
                f"run {run.id}: step '{stored.name}' cannot be reused (it is {stored.status} or of another kind); "
                f"re-run from an earlier step"
            )
    missing = [s.name for s in pipe.steps[:start] if s.in_loop is None and s.name not in {r.name for r in earlier}]
    if missing:
        raise CirkitError(f"run {run.id} has no stored step '{missing[0]}' to reuse; re-run from an earlier step")
    copied = [_copy(record, pos) for pos, record in enumerate(earlier)]
    change: dict[str, Any] = {"from": step.name}
    if revision.round:
        change["round"] = revision.round
    if prompts:
        change["prompts"] = prompts
    if pipeline_ref is not None:
        change["pipeline"] = str(pipeline_ref)
    if note:
        change["note"] = note
    if revision.text is not None or revision.image is not None:
        old = run.steps[target]
        outputs, was, what = _hand_outputs(pipe, step, revision, old, store)
        copied.append(
            StepRecord(
                position=len(copied), name=step.name, kind=step.kind, status="ok", model=None, params={}, templates=[],
                prompts=[], raw=[], outputs=outputs, notes=[f"edited by hand (was: {was})"],
                seconds=0.0, error=None, origin="edited", round=revision.round,
            )
        )
        change.update(edited=step.name, **what)
        start += 1
    values: dict[str, Any] = {}
    for record in copied:
        values.update(names[record.name].published(record.outputs))
    candidates = run.inputs.get("candidates") or {}
    query = Query(run.inputs["image"], run.inputs["modification"], run.inputs.get("query_id"), run.inputs.get("targets"),
                  candidates=candidates.get("paths"), only_candidates=candidates.get("only", False),
                  exclude=run.inputs.get("excluded"))
    return {
        "pipeline": pipe,
        "index": run.index_dir,
        "query": query,
        "prefilled": Prefilled(start=start, steps=copied, values=values, parent_id=run.id, change=change, round=revision.round),
    }


def _hand_outputs(pipe: Pipeline, step, revision: Revision, old: StepRecord, store: RunStore) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """The outputs a hand edit puts in the step's place, what they replace, and what the change records."""
    if revision.image is not None:
        name = step.component.editable_image
        if name is None:
            raise CirkitError(f"step '{step.name}' ({step.kind}) makes no image to replace; give the new text with --text")
        try:
            image = load_image(revision.image)
        except ImageError as exc:
            raise CirkitError(f"{revision.image}: {exc}") from None
        outputs = stored_images({name: image}, store.data_dir)
        return outputs, str((old.outputs.get(name) or {}).get("image_file")), {"image": outputs[name]["image_file"]}
    text = revision.text.strip()
    if not text:
        raise CirkitError(f"run {revision.run_id}: the new text for step '{step.name}' is empty")
    if step.component.editable is None:
        raise CirkitError(
            f"step '{step.name}' ({step.kind}) has no text output to edit; editable steps: "
            + ", ".join(s.name for s in pipe.steps if s.component.editable)
        )
    return step.component.given_outputs(text), repr(old.outputs.get(step.component.editable)), {"text": text}


def stored_pipeline(
    run: RunRecord, prompts: dict[str, list[str]] | None = None, model_overrides: dict[str, dict[str, Any]] | None = None,
) -> Pipeline:
    """The pipeline as the run ran it: its stored text, validated again, with the models and prompts
    its command line replaced (run.overrides) replaced again, and `prompts` swapped in on top.
    Relative paths in it resolve against the folder of the file it came from."""
    source = run.pipeline_source
    base_dir = Path(source).parent
    if not base_dir.is_dir() and base_dir.parts[-2:] == BUILTIN_DIR.parts[-2:]:
        base_dir = BUILTIN_DIR  # a built-in pipeline of a cirkit installed elsewhere since
    try:
        data = yaml.safe_load(run.pipeline_text)
    except yaml.YAMLError as exc:
        raise CirkitError(f"run {run.id}: its stored pipeline is not valid YAML ({one_line(exc)}); give --pipeline") from None
    stored = run.overrides or {}
    prompts = {**(stored.get("prompts") or {}), **(prompts or {})}
    models = {**(stored.get("models") or {}), **(model_overrides or {})}
    try:
        return validate_pipeline(data, source, run.pipeline_text, base_dir, prompts, models, stored.get("benchmark"))
    except CirkitError as exc:
        raise CirkitError(f"run {run.id}: its stored pipeline no longer validates: {one_line(exc)}; give --pipeline") from None


def _source_note(run: RunRecord) -> str | None:
    """A line saying the run's pipeline file differs from the text stored with it, if it does."""
    path = Path(run.pipeline_source)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return f"pipeline file {path} is gone since run {run.id}; using the stored text"
    except (OSError, UnicodeDecodeError):
        return f"pipeline file {path} cannot be read; using the text stored with run {run.id}"
    if text != run.pipeline_text:
        return f"pipeline file {path} changed since run {run.id}; using the stored text"
    return None


def _copy(record: StepRecord, position: int) -> StepRecord:
    return StepRecord(**{**vars(record), "position": position, "origin": "copied", "seconds": 0.0})


def read_overrides(path: str | Path, store: RunStore, *, partial: bool = False) -> tuple[list[Revision], list[str]]:
    """Revisions from a JSONL or CSV file of rows (run_id or query_id, step, text).

    Returns (revisions, problems); problems name the line. Unless `partial`, any problem applies nothing.
    A query_id picks the most recent run with that query id.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CirkitError(f"cannot read overrides file {path}: {one_line(exc)}") from None
    if path.suffix.lower() == ".csv":
        rows = [(n + 2, row) for n, row in enumerate(csv.DictReader(text.splitlines()))]
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((n, json.loads(line)))
                except ValueError as exc:
                    rows.append((n, f"not JSON ({one_line(exc)})"))
    revisions, problems = [], []
    for line, row in rows:
        try:
            if isinstance(row, str):
                raise CirkitError(row)
            if not isinstance(row, dict) or not row.get("step") or not isinstance(row.get("text"), str):
                raise CirkitError("expected run_id or query_id, step and text")
            run_id = row.get("run_id") or store.latest_for_query(str(row.get("query_id") or ""))
            round_ = row.get("round") or 0
            if isinstance(round_, str) and round_.isdigit():
                round_ = int(round_)
            if not isinstance(round_, int) or round_ < 0:
                raise CirkitError(f"round must be a whole number, got {row.get('round')!r}")
            revisions.append(Revision(store.resolve_id(run_id), row["step"], row["text"], round=round_))
        except CirkitError as exc:
            problems.append(f"{path.name} line {line}: {exc}")
    if problems and not partial:
        return [], problems
    return revisions, problems


def diff_runs(a: RunRecord, b: RunRecord, k: int = 10) -> dict[str, Any]:
    """What changed between two runs: per step (its last round, in a loop) the texts, and how the top
    results' ranks moved."""
    steps = []
    for name in dict.fromkeys([s.name for s in a.steps] + [s.name for s in b.steps]):
        sa = next((s for s in reversed(a.steps) if s.name == name), None)
        sb = next((s for s in reversed(b.steps) if s.name == name), None)
        ta, tb = _texts(sa), _texts(sb)
        steps.append({"step": name, "a": ta, "b": tb, "changed": ta != tb,
                      "origin_b": sb.origin if sb else None})
    rank_a = {r["path"]: r["rank"] for r in a.results or []}
    rank_b = {r["path"]: r["rank"] for r in b.results or []}
    top = list(dict.fromkeys([r["path"] for r in (a.results or [])[:k]] + [r["path"] for r in (b.results or [])[:k]]))
    moves = [{"path": p, "rank_a": rank_a.get(p), "rank_b": rank_b.get(p)} for p in top]
    moves.sort(key=lambda m: (m["rank_b"] or 10**9, m["rank_a"] or 10**9))
    targets = sorted(set(a.inputs.get("targets") or []) | set(b.inputs.get("targets") or []))
    target_ranks = [{"path": t, "rank_a": rank_a.get(t), "rank_b": rank_b.get(t)} for t in targets]
    return {"a": a.id, "b": b.id, "steps": steps, "ranks": moves, "targets": target_ranks}


def _texts(step: StepRecord | None) -> list[str]:
    if step is None:
        return []
    out = step.outputs
    if "descriptions" in out:
        return list(out["descriptions"])
    return [v for v in out.values() if isinstance(v, str)]
