"""The runner: the only code that knows the order of steps.

It runs every step once over the whole batch of queries, wires each step's inputs from the
query and earlier outputs, and records every step of every query in the run store as it goes.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cirkit.components import ItemResult
from cirkit.console import stderr
from cirkit.engines import ModelPool
from cirkit.errors import CirkitError, ImageError, one_line
from cirkit.gallery import GalleryIndex
from cirkit.images import image_sha256, load_image
from cirkit.pipelines.spec import Pipeline
from cirkit.store import RunStore, StepRecord

MAX_MODIFICATION_CHARS = 4000


@dataclass
class Query:
    image: str | Path
    modification: str
    id: str | None = None  # the user's name for the query (a line of a queries file, a benchmark id)


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
) -> list[str]:
    """Run the pipeline over the queries, each step once for the whole batch; returns the run ids
    in query order. Bad input raises CirkitError before anything is stored. A failing step is stored
    with its runs; then CirkitError is raised, unless raise_on_failure is False."""
    models = models or ModelPool()
    contexts = [_query_context(q) for q in queries]

    clip = models.get(pipeline.clip_model())
    index.check_model(clip.identity)

    run_ids = [
        store.start_run(pipeline=pipeline, inputs=ctx.pop("_inputs"), index_dir=str(index.directory))
        for ctx in contexts
    ]
    live = list(range(len(queries)))
    failures: list[str] = []
    for position, step in enumerate(pipeline.steps):
        if not live:
            break
        model_spec = pipeline.model_for(step)
        params = step.params
        if step.kind == "search" and k is not None and k > params.k:
            params = params.model_copy(update={"k": k})
        items = [{name: contexts[i][source] for name, source in step.inputs.items()} for i in live]
        model_info = None
        start = time.perf_counter()
        with stderr.status(f"{step.name}: {step.kind} x {len(live)}", spinner="dots") if progress else nullcontext():
            try:
                model = models.get(model_spec) if model_spec else None
                model_info = model.describe() if model is not None else None
                component = step.component(params, model=model, prompts=step.prompts, index=index)
                results = component.run(items)
            except CirkitError as exc:
                results = [ItemResult(error=str(exc)) for _ in live]
            except Exception as exc:  # a model or library failure: stored with the run, reported as one line
                results = [ItemResult(error=f"{type(exc).__name__}: {one_line(exc)}") for _ in live]
        share = (time.perf_counter() - start) / len(live)
        still_live = []
        for i, result in zip(live, results):
            store.add_step(
                run_ids[i],
                StepRecord(
                    position=position,
                    name=step.name,
                    kind=step.kind,
                    status="failed" if result.error else "ok",
                    model=model_info,
                    params=params.model_dump(),
                    templates=[{"name": p.name, "source": p.source} for p in step.prompts],
                    prompts=result.prompts,
                    raw=result.raw,
                    outputs=result.outputs,
                    notes=result.notes,
                    seconds=share,
                    error=result.error,
                ),
            )
            if result.error:
                error = f"step '{step.name}' failed: {result.error}"
                store.finish_run(run_ids[i], results=None, error=error)
                failures.append(f"{error} (run {run_ids[i]})")
            else:
                for name, value in result.outputs.items():
                    contexts[i][name] = value
                    contexts[i][f"{step.name}.{name}"] = value
                still_live.append(i)
        live = still_live
    for i in live:
        store.finish_run(run_ids[i], results=contexts[i].get("results"), error=None)
    if failures and raise_on_failure:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise CirkitError(failures[0] + more)
    return run_ids


def _query_context(query: Query) -> dict[str, Any]:
    which = f"query {query.id}: " if query.id is not None else ""
    text = (query.modification or "").strip()
    if not text:
        raise CirkitError(f"{which}the modification text is empty: say how the target differs from the reference image")
    if len(text) > MAX_MODIFICATION_CHARS:
        raise CirkitError(f"{which}the modification text is {len(text)} characters long; the limit is {MAX_MODIFICATION_CHARS}")
    path = Path(query.image).expanduser()
    try:
        image = load_image(path)
        sha = image_sha256(path)
    except ImageError as exc:
        raise CirkitError(f"{which}reference image {query.image}: {exc}") from None
    inputs = {"image": str(path.resolve()), "image_sha256": sha, "modification": text}
    if query.id is not None:
        inputs["query_id"] = query.id
    return {"image": image, "modification": text, "_inputs": inputs}

