"""The runner: the only code that knows the order of steps.

It runs every step once over the whole batch of queries, wires each step's inputs from the
query and earlier outputs, and records every step of every query in the run store as it goes.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


from cirkit.components import ItemResult
from cirkit.console import stderr
from cirkit.engines import ModelPool
from cirkit.engines.base import metered
from cirkit.errors import CirkitError, ImageError, one_line
from cirkit.gallery import GalleryIndex
from cirkit.images import image_sha256, load_image
from cirkit.pipelines.fingerprint import cache_key, step_hash
from cirkit.pipelines.spec import Pipeline
from cirkit.pipelines.stored_images import live_values, stored_images
from cirkit.store import RunStore, StepRecord

MAX_MODIFICATION_CHARS = 4000


@dataclass
class Query:
    image: str | Path
    modification: str
    id: str | None = None  # the user's name for the query (a line of a queries file, a benchmark id)
    targets: list[str] | None = None  # known targets (gallery paths relative to the index root), if any
    candidates: list[str] | None = None  # the query's own candidate images (gallery paths), if a benchmark gives them
    only_candidates: bool = False  # rank only the candidates (GeneCIS), else the top k and then them (CIRR subsets)
    exclude: list[str] | None = None  # gallery paths left out of the results (the reference image's copies in the gallery)


@dataclass
class Prefilled:
    """For a re-run: the step records before the pipeline's step `start` (of loop round `round`) are
    taken from a stored run (possibly edited by hand)."""

    start: int
    steps: list[StepRecord]
    values: dict[str, Any]
    parent_id: str
    change: dict[str, Any]
    round: int = 0


def run_queries(
    pipeline: Pipeline,
    queries: list[Query],
    *,
    index: GalleryIndex,
    store: RunStore,
    models: ModelPool | None = None,
    k: int | None = None,
    progress: bool = True,
    raise_on_failure: bool = True,
    use_cache: bool = True,
    prefilled: list[Prefilled | None] | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> list[str]:
    """Run the pipeline over the queries, each step once for the whole batch; returns the run ids
    in query order.

    A step's output is taken from the store's cache when the same step (kind, model, parameters,
    templates) already ran on the same inputs, unless use_cache is False. Bad input raises
    CirkitError before anything is stored. A failing step is stored with its runs; then CirkitError
    is raised, unless raise_on_failure is False.

    `on_event(event, data)` is told ("run", {"run_id"}) as each run is started and ("step",
    {"run_id", "step"}) before each step record is stored; an exception it raises stops the runs.
    """
    tell = on_event or (lambda event, data: None)
    models = models or ModelPool()
    prefilled = prefilled or [None] * len(queries)
    needs_image = any("image" in step.inputs.values() for step in pipeline.steps)
    contexts = [_query_context(q, load=needs_image and (pre is None or _uses_image(pipeline, pre.start))) for q, pre in zip(queries, prefilled)]

    if any((model := pipeline.model_for(step)) is not None and model.type == "clip" for step in pipeline.steps):
        index.check_model(models.get(pipeline.clip_model()).identity)  # a pipeline with no CLIP step reads no vectors

    run_ids = []
    for ctx, pre in zip(contexts, prefilled):
        run_id = store.start_run(
            pipeline=pipeline,
            inputs=ctx.pop("_inputs"),
            index_dir=str(index.directory),
            parent_id=pre.parent_id if pre else None,
            change=pre.change if pre else None,
            overrides=pipeline.overrides,
        )
        tell("run", {"run_id": run_id})
        if pre:
            for record in pre.steps:
                tell("step", {"run_id": run_id, "step": record.name})
                store.add_step(run_id, record)
            ctx.update(live_values(pre.values))
        run_ids.append(run_id)
    failures: list[str] = []
    steps = pipeline.steps
    at = [pre.start if pre else 0 for pre in prefilled]  # each query's next step
    rounds = [pre.round if pre else 0 for pre in prefilled]  # each query's loop round
    seq = [len(pre.steps) if pre else 0 for pre in prefilled]  # each run's step records so far
    live = list(range(len(queries)))
    while waiting := [i for i in live if at[i] < len(steps)]:
        position = min(at[i] for i in waiting)  # queries a loop sent back run before those past it
        step = steps[position]
        todo = [i for i in waiting if at[i] == position]
        todo = _skip_unmet(step, position, todo, contexts, rounds, at, seq, run_ids, store, tell)
        if not todo:
            continue
        params = step.component.for_request(step.params, k=k)
        if step.given:
            ok = _take_given(step, todo, contexts, run_ids, store, failures, tell, seq)
            live = sorted(set(live) - set(todo) | set(ok))
            for i in ok:
                at[i] = position + 1
            continue
        todo = _fail_unmade(step, todo, live, contexts, rounds, seq, run_ids, store, failures, tell)
        if not todo:
            continue
        items = {i: {name: contexts[i][source] if source else None for name, source in step.inputs.items()} for i in todo}
        hashed = step_hash(pipeline.model_for(step), step, params) if step.component.cacheable else None  # once per step, not per query
        keys = {i: cache_key(hashed, items[i]) for i in todo} if hashed else {}
        cached = {i: hit for i in todo if use_cache and keys and (hit := store.cache_get(keys[i])) is not None
                  and set(step.component.outputs) <= set(hit["outputs"])}  # else made by a cirkit with fewer outputs
        misses = [i for i in todo if i not in cached]
        results: dict[int, ItemResult] = {}
        model_info = None
        share = 0.0
        tokens: dict[int, dict[str, int] | None] = {}
        if misses:
            start = time.perf_counter()
            label = f"{step.name}: {step.kind} x {len(misses)}"
            with stderr.status(label, spinner="dots") if progress else nullcontext(), metered() as usage:
                model_info, answers = run_step(step, params, pipeline.model_for(step), models, [items[i] for i in misses], index)
                results = dict(zip(misses, answers))
            share = (time.perf_counter() - start) / len(misses)
            tokens = dict(zip(misses, usage.shares(len(misses))))
        for i in todo:
            round_ = rounds[i] if step.in_loop else 0
            if i in cached:
                record = StepRecord.from_cache(cached[i], position=seq[i], name=step.name, round=round_)
            else:
                result = results[i]
                record = StepRecord(
                    position=seq[i],
                    name=step.name,
                    kind=step.kind,
                    status="failed" if result.error else "ok",
                    model=model_info,
                    params=params.model_dump(),
                    templates=[{"name": p.name, "source": p.source} for p in step.prompts],
                    prompts=result.prompts,
                    raw=result.raw,
                    outputs=stored_images(result.outputs, store.data_dir),
                    notes=result.notes,
                    seconds=share,
                    error=result.error,
                    tokens=tokens.get(i),
                    round=round_,
                )
                if keys and not result.error:
                    store.cache_put(keys[i], record)
            if record.error:
                tell("step", {"run_id": run_ids[i], "step": step.name})
                store.add_step(run_ids[i], record)
                error = f"step '{step.name}' failed: {record.error}"
                store.finish_run(run_ids[i], results=None, error=error)
                failures.append(f"{error} (run {run_ids[i]})")
                live.remove(i)
                continue
            contexts[i].update(step.published(live_values(record.outputs)))
            at[i] = position + 1
            if step.in_loop and position == step.in_loop.last:
                record.notes.append(_next_round(step.in_loop, i, contexts, rounds, at))
            tell("step", {"run_id": run_ids[i], "step": step.name})
            store.add_step(run_ids[i], record)
            seq[i] += 1
    for i in live:
        store.finish_run(run_ids[i], results=_without(contexts[i].get("results"), queries[i].exclude), error=None)
    if failures and raise_on_failure:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise CirkitError(failures[0] + more)
    return run_ids


def _without(results: list[dict[str, Any]] | None, paths: list[str] | None) -> list[dict[str, Any]] | None:
    """The results with the excluded gallery paths left out, ranked again from 1."""
    if not results or not paths:
        return results
    left_out = set(paths)
    kept = [hit for hit in results if hit["path"] not in left_out]
    return [{**hit, "rank": rank} for rank, hit in enumerate(kept, start=1)]


def run_step(step, params, model_spec, models: ModelPool, items: list[dict[str, Any]], index: Any = None) -> tuple[dict | None, list[ItemResult]]:
    """One step over a batch of inputs: the model's description and one result per item. A failure
    becomes every item's error (stored with the runs, reported as one line)."""
    model_info = None
    try:
        model = models.get(model_spec) if model_spec else None
        model_info = model.describe() if model is not None else None
        component = step.component(params, model=model, prompts=step.prompts, index=index)
        return model_info, component.run(items)
    except CirkitError as exc:
        return model_info, [ItemResult(error=str(exc)) for _ in items]
    except Exception as exc:
        return model_info, [ItemResult(error=f"{type(exc).__name__}: {one_line(exc)}") for _ in items]


def _skip_unmet(step, position, todo, contexts, rounds, at, seq, run_ids, store, tell) -> list[int]:
    """The queries that run the step. A query that does not meet the step's `when`, or the `while` of
    the loop the step opens (tested on entering; a query sent back by the loop met it already), gets a
    skipped record saying why and moves past the step, or past the loop."""
    run = []
    for i in todo:
        unmet = None
        if step.loop is not None and rounds[i] == 0:
            met, why = step.loop.condition.holds(contexts[i])
            if not met:
                unmet = f"loop not entered: {why}"
                at[i] = step.loop.last + 1
        in_round = unmet is None and step.in_loop is not None  # skipped inside a round, which still ends here
        if unmet is None and step.when is not None:
            met, why = step.when.holds(contexts[i])
            if not met:
                unmet = f"skipped: {why}"
                at[i] = position + 1
        if unmet is None:
            run.append(i)
            continue
        record = StepRecord(
            position=seq[i], name=step.name, kind=step.kind, status="skipped", model=None, params={}, templates=[],
            prompts=[], raw=[], outputs={}, notes=[unmet], seconds=0.0, error=None, round=rounds[i] if step.in_loop else 0,
        )
        if in_round and position == step.in_loop.last:
            record.notes.append(_next_round(step.in_loop, i, contexts, rounds, at))
        tell("step", {"run_id": run_ids[i], "step": step.name})
        store.add_step(run_ids[i], record)
        seq[i] += 1
    return run


def _fail_unmade(step, todo, live, contexts, rounds, seq, run_ids, store, failures, tell) -> list[int]:
    """The queries that have every input the step reads; for the others a step that makes one was
    skipped (its `when`, or a loop they did not enter), and the step fails for them with one line."""
    ready = []
    for i in todo:
        missing = next(((name, source) for name, source in step.inputs.items() if source and source not in contexts[i]), None)
        if missing is None:
            ready.append(i)
            continue
        error = f"input '{missing[0]}' reads '{missing[1]}', which no step made for this query (the step that makes it was skipped)"
        record = StepRecord(
            position=seq[i], name=step.name, kind=step.kind, status="failed", model=None, params={}, templates=[], prompts=[],
            raw=[], outputs={}, notes=[], seconds=0.0, error=error, round=rounds[i] if step.in_loop else 0,
        )
        tell("step", {"run_id": run_ids[i], "step": step.name})
        store.add_step(run_ids[i], record)
        store.finish_run(run_ids[i], results=None, error=f"step '{step.name}' failed: {error}")
        failures.append(f"step '{step.name}' failed: {error} (run {run_ids[i]})")
        live.remove(i)
    return ready


def _next_round(loop, i, contexts, rounds, at) -> str:
    """At the end of a loop's round: send the query back for another round while the condition holds
    and the bound allows; returns the line for the trace."""
    met, why = loop.condition.holds(contexts[i])
    done = rounds[i] + 1
    if not met:
        at[i] = loop.last + 1
        return f"loop ends after {done} round(s): {why}"
    if done >= loop.max_rounds:
        at[i] = loop.last + 1
        return f"loop ends at its bound, {loop.max_rounds} round(s): {why}"
    rounds[i] += 1
    at[i] = loop.first
    return f"round {done + 1} of at most {loop.max_rounds}: {why}"


def _take_given(step, todo, contexts, run_ids, store, failures, tell, seq) -> list[int]:
    """A step whose texts come from a file, keyed by query id, else reference image name or stem;
    returns the queries that got theirs."""
    source, texts = step.given
    ok = []
    for i in todo:
        image = Path(contexts[i]["_image_path"])
        key = next((k for k in (contexts[i].get("_query_id"), image.name, image.stem) if k is not None and k in texts), None)
        if key is None:
            error = f"no text for query {contexts[i].get('_query_id') or image.name} in {source}"
            outputs = {}
        else:
            error, outputs = None, step.component.given_outputs(texts[key])
        record = StepRecord(
            position=seq[i], name=step.name, kind=step.kind, status="failed" if error else "ok", model=None,
            params={}, templates=[], prompts=[], raw=[], outputs=outputs, notes=[f"given: {source} [{key}]"] if key else [],
            seconds=0.0, error=error, origin="given",
        )
        tell("step", {"run_id": run_ids[i], "step": step.name})
        store.add_step(run_ids[i], record)
        seq[i] += 1
        if error:
            store.finish_run(run_ids[i], results=None, error=f"step '{step.name}' failed: {error}")
            failures.append(f"step '{step.name}' failed: {error} (run {run_ids[i]})")
            continue
        contexts[i].update(step.published(outputs))
        ok.append(i)
    return ok


def _uses_image(pipeline: Pipeline, start: int) -> bool:
    return any("image" in step.inputs.values() for step in pipeline.steps[start:])


def _query_context(query: Query, load: bool = True) -> dict[str, Any]:
    which = f"query {query.id}: " if query.id is not None else ""
    text = (query.modification or "").strip()
    if not text:
        raise CirkitError(f"{which}the modification text is empty: say how the target differs from the reference image")
    if len(text) > MAX_MODIFICATION_CHARS:
        raise CirkitError(f"{which}the modification text is {len(text)} characters long; the limit is {MAX_MODIFICATION_CHARS}")
    path = Path(query.image).expanduser()
    try:
        image = load_image(path) if load else None
        sha = image_sha256(path) if load or path.exists() else None
    except ImageError as exc:
        raise CirkitError(f"{which}reference image {query.image}: {exc}") from None
    inputs = {"image": str(path.resolve()), "image_sha256": sha, "modification": text}
    if query.id is not None:
        inputs["query_id"] = query.id
    if query.targets:
        inputs["targets"] = list(query.targets)
    candidates = {"paths": list(query.candidates), "only": query.only_candidates} if query.candidates else None
    if candidates:
        inputs["candidates"] = candidates
    if query.exclude:
        inputs["excluded"] = list(query.exclude)
    return {"image": image, "modification": text, "candidates": candidates, "_inputs": inputs, "_image_path": str(path),
            "_query_id": query.id}
