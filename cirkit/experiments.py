"""Evaluating a pipeline on a benchmark split: index its gallery, run every query in batches,
score with the official protocol, store one experiment with every query's run.

Rankings are the pipeline's own: where a protocol ranks a per-query candidate set (CIRR's image
set, GeneCIS), the queries carry their candidates and the pipeline's search ranks them by its final
scores (after every fusion and re-scoring), so a rerank step judges them too. GeneCIS attribute
tasks rank object instances: their crops are written once under DATA/.cirkit-crops/ and indexed as
images.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, ClassVar

from cirkit.benchmarks import Benchmark, evaluate, load, load_group, write_circo_submission, write_cirr_submission
from cirkit.benchmarks.evaluation import GROUP_KEYS
from cirkit.benchmarks.metrics import average_over
from cirkit.benchmarks.registry import family
from cirkit.console import progress_bar, stderr
from cirkit.costs import add_totals, token_totals
from cirkit.engines import ModelPool
from cirkit.errors import CirkitError, ImageError
from cirkit.gallery import GalleryIndex, build_index
from cirkit.pipelines import load_pipeline
from cirkit.pipelines.spec import Pipeline
from cirkit.pipelines.runner import Query, run_queries
from cirkit.store import RunStore
from cirkit.sweep import Axis, Setting, check_settings, headline, parse_grid, repeat_params, spread, variant, varies

DEPTH = 100  # results kept per query: enough for every protocol's K (50) after dropping the reference


@dataclass
class Experiment:
    id: str
    metrics: dict[str, Any]
    failed_runs: int
    submission: list[Path]
    tokens: dict[str, Any] | None = None  # cirkit.costs.token_totals over every run's steps


@dataclass
class Prepared:
    """A benchmark split ready to run: its queries, its gallery index open, the models loaded so far."""

    bench: str
    data_dir: Path
    split: str
    benchmark: Benchmark
    queries: list
    runnable: list
    index_dir: Path
    index: GalleryIndex
    name_of: dict[str, str]
    available: set[str]
    models: ModelPool


@dataclass
class SweepRow:
    setting: Setting
    experiments: list[Experiment]
    metrics: dict[str, Any]  # the mean over the repeats
    sd: dict[str, float]  # the sample standard deviation over the repeats (0 for one)
    failed_runs: int

    @property
    def tokens(self) -> dict[str, Any]:
        """Token totals over the setting's repeats."""
        return add_totals([e.tokens for e in self.experiments])


@dataclass
class GroupSweep:
    """A sweep over a group's members: each member's sweep, and the settings averaged over the members."""

    members: dict[str, Sweep]  # member key (fashioniq category, GeneCIS task) -> its sweep
    average: Sweep  # rows: each setting's average over the members (mean ± sd over the repeats); id: the members' ids


@dataclass
class ParaphraseStudy:
    """The pipeline run with the original modifications and with each paraphrase, grouped as a sweep."""

    id: str  # the sweep's
    count: int
    labels: list[str]  # "original", "paraphrase 1", ...
    experiments: list[Experiment]
    paraphrase_runs: dict[str, str]  # query id -> the run that made its paraphrases
    summary: dict[str, Any]  # cirkit.paraphrases.summarize
    left_out: list[str]  # queries that got no paraphrases (their run failed), left out of every variant
    paraphrase_tokens: dict[str, Any] | None = None
    best: ClassVar[None] = None  # no variant is the best one (what a tracker's sweep is tagged with)

    @property
    def tokens(self) -> dict[str, Any]:
        """Token totals: the paraphrases' and every variant's."""
        return add_totals([self.paraphrase_tokens, *(e.tokens for e in self.experiments)])


@dataclass
class Sweep:
    id: str
    axes: list[Axis]
    repeats: int
    metric: str | None
    rows: list[SweepRow]
    best: int | None  # the row with the highest metric


def run_experiment(
    bench: str,
    data_dir: str | Path,
    split: str,
    *,
    pipeline: str | Path,
    store: RunStore,
    index_dir: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 64,
    submission_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: bool = True,
    model_overrides: dict[str, Any] | None = None,
    tracker: Any = None,
) -> Experiment:
    """`tracker` (cirkit.tracking.Tracker): logs the experiment to MLflow."""
    spec, prepared = _prepare(bench, data_dir, split, pipeline, model_overrides, index_dir, limit, progress)
    exp = _evaluate(prepared, spec, store, batch_size=batch_size, submission_dir=submission_dir, use_cache=use_cache,
                    progress=progress)
    if tracker is not None:
        tracker.log_experiment(store, exp, spec, bench, split)
    return exp


def run_sweep(
    bench: str,
    data_dir: str | Path,
    split: str,
    *,
    pipeline: str | Path,
    store: RunStore,
    grid: list[str] | None = None,
    repeats: int = 1,
    metric: str | None = None,
    index_dir: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 64,
    use_cache: bool = True,
    progress: bool = True,
    model_overrides: dict[str, Any] | None = None,
    on_experiment: Callable[[Setting, int, Experiment], None] | None = None,
    tracker: Any = None,
) -> Sweep:
    """Every setting of the grid (`STEP.PARAM=[v1,...]` items; none: the pipeline as it is), `repeats`
    times each, one experiment per setting and repeat, grouped as one sweep.

    Every setting is validated before anything runs. Settings share the models, the gallery index
    and every step they share (kind, model, parameters, templates, inputs) through the step cache, so
    only the steps a parameter touches run again, and a sweep run again after an interruption takes
    what was done from the cache. Repeats change the seed of the steps that sample or call a hosted
    model (see cirkit.sweep.repeat_params)."""
    plan = _plan_sweep(load(bench, data_dir, split), bench, pipeline, grid, repeats, metric, model_overrides)
    return _run_sweep(plan, data_dir, store, index_dir=index_dir, limit=limit, batch_size=batch_size, use_cache=use_cache,
                      progress=progress, on_experiment=on_experiment, tracker=tracker)


def run_group_sweep(
    bench: str,
    data_dir: str | Path,
    split: str,
    *,
    pipeline: str | Path,
    store: RunStore,
    grid: list[str] | None = None,
    repeats: int = 1,
    metric: str | None = None,
    limit: int | None = None,
    batch_size: int = 64,
    use_cache: bool = True,
    progress: bool = True,
    model_overrides: dict[str, Any] | None = None,
    tracker: Any = None,
) -> GroupSweep:
    """A sweep over every member of a group (FashionIQ's three categories, GeneCIS's tasks with split
    `all`), one sweep per member, each setting's metrics averaged over the members as the papers
    report them (FashionIQ R@10/50, GeneCIS R@1..3); every member's settings are validated before
    anything runs. `limit` applies to each member."""
    members = load_group(bench, data_dir, split)
    protocol = next(iter(members.values())).protocol
    keys = GROUP_KEYS[protocol]
    if metric is not None and metric not in keys:
        raise CirkitError(f"--metric {metric}: {bench} {split} averages only {', '.join(keys)} over its members")
    chosen = metric or headline(protocol, dict.fromkeys(keys, 0.0))
    plans = {key: _plan_sweep(member, member.name, pipeline, grid, repeats, chosen, model_overrides) for key, member in members.items()}
    sweeps = {key: _run_sweep(plan, data_dir, store, limit=limit, batch_size=batch_size, use_cache=use_cache, progress=progress,
                              tracker=tracker) for key, plan in plans.items()}
    first = next(iter(sweeps.values()))
    rows = []
    for i, row in enumerate(first.rows):
        per_repeat = [average_over({key: sweep.rows[i].experiments[r].metrics for key, sweep in sweeps.items()}, keys)
                      for r in range(repeats)]
        mean, sd = spread(per_repeat)
        rows.append(SweepRow(row.setting, [e for sweep in sweeps.values() for e in sweep.rows[i].experiments], mean, sd,
                             sum(sweep.rows[i].failed_runs for sweep in sweeps.values())))
    best = max(range(len(rows)), key=lambda i: rows[i].metrics[chosen])
    return GroupSweep(sweeps, Sweep("+".join(s.id for s in sweeps.values()), first.axes, repeats, chosen, rows, best))


@dataclass
class _SweepPlan:
    """A sweep validated before anything runs: every setting's pipeline, per repeat."""

    bench: str
    benchmark: Benchmark
    base: Pipeline
    axes: list[Axis]
    plans: list[tuple[Setting, list[Pipeline]]]
    metric: str


def _plan_sweep(benchmark: Benchmark, bench: str, pipeline, grid, repeats, metric, model_overrides) -> _SweepPlan:
    if repeats < 1:
        raise CirkitError(f"--repeats must be at least 1, got {repeats}")
    axes = parse_grid(grid)
    base = load_pipeline(pipeline, model_overrides=model_overrides, benchmark=family(benchmark))
    checked = check_settings(base, axes) if grid is not None else [(Setting(), base)]
    if repeats > 1 and not any(varies(spec) for _, spec in checked):
        stderr.print(f"no step of {base.name} samples (temperature > 0) or calls a hosted model: its {repeats} repeats will be the same")
    plans = [(setting, [variant(spec, repeat_params(spec, r), f"{setting.label}, repeat {r + 1}") if r else spec
                        for r in range(repeats)]) for setting, spec in checked]
    if not benchmark.has_ground_truth:
        raise CirkitError(f"{benchmark.title} has no ground truth here: {'a sweep' if grid is not None else '--repeats'} needs metrics (use the val split)")
    empty = evaluate(benchmark, {}, missing="miss")  # the metrics the protocol reports, before anything runs
    chosen = headline(benchmark.protocol, empty, metric)
    if chosen not in empty or isinstance(empty[chosen], bool):
        raise CirkitError(f"--metric {chosen}: {benchmark.title} reports no such metric "
                          f"(its metrics: {', '.join(k for k, v in empty.items() if isinstance(v, float))})")
    return _SweepPlan(bench, benchmark, base, axes, plans, chosen)


def _run_sweep(plan: _SweepPlan, data_dir, store: RunStore, *, index_dir=None, limit=None, batch_size=64, use_cache=True,
               progress=True, on_experiment=None, tracker=None) -> Sweep:
    benchmark, base, axes, chosen = plan.benchmark, plan.base, plan.axes, plan.metric
    split, repeats = benchmark.split, len(plan.plans[0][1])
    _, prepared = _prepare(plan.bench, data_dir, split, base, None, index_dir, limit, progress, benchmark=benchmark)
    sweep_id = store.add_sweep(benchmark=plan.bench, split=split, pipeline=base,
                               grid=[{"step": a.step, "param": a.param, "values": a.values} for a in axes],
                               repeats=repeats, metric=chosen)
    if tracker is not None:
        tracker.start_sweep(sweep_id, plan.bench, split, base, axes, repeats, chosen)
    result = None
    try:
        rows = []
        for setting, specs in plan.plans:
            done = []
            for r, spec in enumerate(specs):
                if progress:
                    stderr.print(f"{benchmark.title}: setting {len(rows) + 1}/{len(plan.plans)}: {setting.label}"
                                 + (f", repeat {r + 1}/{repeats}" if repeats > 1 else ""))
                exp = _evaluate(prepared, spec, store, batch_size=batch_size, use_cache=use_cache, progress=progress,
                                sweep=(sweep_id, setting.values, r))
                done.append(exp)
                if tracker is not None:
                    tracker.log_experiment(store, exp, spec, plan.bench, split, setting=setting.values, repeat=r)
                if on_experiment:
                    on_experiment(setting, r, exp)
            mean, sd = spread([e.metrics for e in done])
            rows.append(SweepRow(setting, done, mean, sd, sum(e.failed_runs for e in done)))
        scores = [row.metrics.get(chosen) for row in rows]
        numeric = [i for i, v in enumerate(scores) if isinstance(v, (int, float))]
        best = max(numeric, key=lambda i: scores[i]) if numeric else None
        result = Sweep(sweep_id, axes, repeats, chosen, rows, best)
    finally:
        if tracker is not None:
            tracker.end_sweep(result)
    return result


def run_paraphrases(
    bench: str,
    data_dir: str | Path,
    split: str,
    *,
    pipeline: str | Path,
    store: RunStore,
    count: int,
    paraphrase_model: str | None = None,
    paraphrases_file: str | Path | None = None,
    index_dir: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 64,
    use_cache: bool = True,
    progress: bool = True,
    model_overrides: dict[str, Any] | None = None,
    tracker: Any = None,
) -> ParaphraseStudy:
    """`count` paraphrases of each query's modification (by the pipeline's LLM, see
    cirkit.paraphrases, or from a JSON file {query id: [texts]}), stored as one run per query; then
    the pipeline over the split with the original modifications and with each paraphrase in their
    place, one experiment each, grouped as a sweep whose setting names the variant. Everything is
    checked before any model loads."""
    from cirkit.paraphrases import check_count, check_given, paraphrase_pipeline, summarize

    check_count(count)
    benchmark = load(bench, data_dir, split)
    base = load_pipeline(pipeline, model_overrides=model_overrides, benchmark=family(benchmark))
    if paraphrases_file is not None and paraphrase_model is not None:
        raise CirkitError("--paraphrases-file gives the paraphrases: leave out --paraphrase-model")
    maker = paraphrase_pipeline(base, count, model=paraphrase_model, given=paraphrases_file)
    if not benchmark.has_ground_truth:
        raise CirkitError(f"{benchmark.title} has no ground truth here: --paraphrases needs metrics (use the val split)")
    if paraphrases_file is not None:
        check_given(maker, [q.id for q in (benchmark.queries[:limit] if limit else benchmark.queries)], count)
    _, prepared = _prepare(bench, data_dir, split, base, None, index_dir, limit, progress, benchmark=benchmark)

    # paraphrases fixed by hand (`cirkit runs edit RUN paraphrase`) are used as they were fixed
    edited = store.edited_runs(maker.hash) if paraphrases_file is None else {}
    paraphrase_runs = {q.id: edited[(q.id, q.text)] for q in prepared.runnable if (q.id, q.text) in edited}
    if paraphrase_runs and progress:
        stderr.print(f"{len(paraphrase_runs)} queries have paraphrases edited by hand: those are used")
    todo = [q for q in prepared.runnable if q.id not in paraphrase_runs]
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        batch = [Query(benchmark.data_dir / benchmark.gallery.get(q.reference, q.reference), q.text, q.id) for q in chunk]
        ids = run_queries(maker, batch, index=prepared.index, store=store, models=prepared.models, progress=progress,
                          raise_on_failure=False, use_cache=use_cache)
        paraphrase_runs.update(zip((q.id for q in chunk), ids))
        if progress:
            stderr.print(f"paraphrases: {min(start + batch_size, len(todo))}/{len(todo)} queries")
    paraphrase_runs = {q.id: paraphrase_runs[q.id] for q in prepared.runnable}  # in query order
    texts, steps, left_out, short = {}, [], [], []
    for qid, run_id in paraphrase_runs.items():
        run = store.get(run_id)
        steps.extend(run.steps)
        if run.status != "ok":
            left_out.append(qid)
            continue
        found = run.step("paraphrase").outputs["texts"]
        if len(found) < count:  # edited by hand to fewer lines
            short.append(qid)
        texts[qid] = (found + [run.inputs["modification"]] * count)[:count]
    if short:
        stderr.print(f"{len(short)} queries have fewer than {count} paraphrases (e.g. run {paraphrase_runs[short[0]]}): "
                     "the original modification takes the missing places")
    if left_out:
        stderr.print(f"{len(left_out)} of {len(paraphrase_runs)} queries got no paraphrases (e.g. run {paraphrase_runs[left_out[0]]}: "
                     f"{store.get(paraphrase_runs[left_out[0]]).error}): they are left out of every variant")
    kept = [q for q in prepared.queries if q.id not in set(left_out)]

    labels = ["original", *(f"paraphrase {i}" for i in range(1, count + 1))]
    sweep_id = store.add_sweep(benchmark=bench, split=split, pipeline=base,
                               grid=[{"step": "query", "param": "modification", "values": labels,
                                      "paraphrases": maker.source, "paraphrase_runs": paraphrase_runs}],
                               repeats=1, metric=None)
    axes = [Axis("query", "modification", labels)]
    if tracker is not None:
        tracker.start_sweep(sweep_id, bench, split, base, axes, 1, headline(benchmark.protocol, evaluate(benchmark, {}, missing="miss")))
    runnable = {q.id for q in prepared.runnable}
    done: list[Experiment] = []
    study = None
    try:
        for variant_index, label in enumerate(labels):
            if progress:
                stderr.print(f"variant {variant_index + 1}/{len(labels)}: {label}")
            worded = [replace(q, text=texts[q.id][variant_index - 1]) if variant_index and q.id in texts else q for q in kept]
            part = replace(prepared, queries=worded, runnable=[q for q in worded if q.id in runnable])
            setting = {"modification": label}
            exp = _evaluate(part, base, store, batch_size=batch_size, use_cache=use_cache, progress=progress,
                            sweep=(sweep_id, setting, 0))
            done.append(exp)
            if tracker is not None:
                tracker.log_experiment(store, exp, base, bench, split, setting=setting)
        ranks = [{r["query_id"]: r["target_rank"] for r in store.experiment(e.id)["runs"]} for e in done]
        study = ParaphraseStudy(sweep_id, count, labels, done, paraphrase_runs, summarize([e.metrics for e in done], ranks),
                                left_out, token_totals(steps))
    finally:
        if tracker is not None:
            tracker.end_sweep(study)
    return study


def _prepare(bench, data_dir, split, pipeline, model_overrides, index_dir, limit, progress, *, benchmark=None) -> tuple[Any, Prepared]:
    """The pipeline (a reference, or one already validated) and the split with its gallery indexed."""
    benchmark = benchmark or load(bench, data_dir, split)
    if benchmark.boxes:
        benchmark = _as_crop_files(benchmark, progress)
    spec = pipeline if isinstance(pipeline, Pipeline) else load_pipeline(pipeline, model_overrides=model_overrides, benchmark=family(benchmark))
    queries = benchmark.queries[:limit] if limit else benchmark.queries
    clip_spec = spec.clip_model()
    models = ModelPool()
    clip = models.get(clip_spec)
    index_dir = Path(index_dir) if index_dir else Path(data_dir) / ".cirkit-index" / _index_name(benchmark, clip.identity)
    index_dir.parent.mkdir(parents=True, exist_ok=True)
    report = build_index(benchmark.data_dir, index_dir, clip, files=sorted(set(benchmark.gallery.values())), progress=progress)
    if report.skipped:
        stderr.print(f"{len(report.skipped)} of {len(benchmark.gallery)} gallery images are missing or unreadable: "
                     "they count as misses (see the index manifest)")
    index = GalleryIndex.open(index_dir)
    name_of = {path: name for name, path in benchmark.gallery.items()}
    available = {name_of[p] for p in index.paths if p in name_of}

    # with ground truth, a query whose reference image is missing or unreadable is not run: it counts as a miss
    runnable = [q for q in queries if not benchmark.has_ground_truth or q.reference not in benchmark.gallery
                or q.reference in available]
    if len(runnable) < len(queries):
        stderr.print(f"{len(queries) - len(runnable)} queries have a missing reference image: they count as misses")
    return spec, Prepared(bench, Path(data_dir), split, benchmark, queries, runnable, index_dir, index, name_of, available, models)


def _evaluate(p: Prepared, spec, store: RunStore, *, batch_size: int, use_cache: bool, progress: bool,
              submission_dir: str | Path | None = None, sweep: tuple[str, dict[str, Any], int] | None = None) -> Experiment:
    """Run the pipeline over the prepared split's queries in batches, score, store one experiment."""
    benchmark, runnable, name_of = p.benchmark, p.runnable, p.name_of
    runs: list[tuple[str, str]] = []
    for start in range(0, len(runnable), batch_size):
        chunk = runnable[start : start + batch_size]
        batch = [
            Query(benchmark.data_dir / benchmark.gallery.get(q.reference, q.reference), q.text, q.id,
                  [benchmark.gallery[t] for t in q.targets if t in benchmark.gallery],
                  candidates=[benchmark.gallery[c] for c in q.candidates if c in benchmark.gallery] if q.candidates else None,
                  only_candidates=benchmark.protocol == "genecis")
            for q in chunk
        ]
        ids = run_queries(spec, batch, index=p.index, store=store, models=p.models, k=DEPTH, progress=progress,
                          raise_on_failure=False, use_cache=use_cache)
        runs.extend(zip((q.id for q in chunk), ids))
        if progress:
            stderr.print(f"{benchmark.title}: {min(start + batch_size, len(runnable))}/{len(runnable)} queries")

    rankings, failed, steps = {}, 0, []
    for query, (qid, run_id) in zip(runnable, runs):
        run = store.get(run_id)
        steps.extend(run.steps)
        if run.status != "ok":
            failed += 1
            continue
        rankings[qid] = [name_of[hit["path"]] for hit in run.results or [] if hit["path"] in name_of]
    part = _subset(benchmark, p.queries)
    submission: list[Path] = []
    if benchmark.has_ground_truth:
        metrics = evaluate(part, rankings, available=p.available, missing="miss")
    else:
        metrics = {"queries": len(p.queries), "scored": False}
        if submission_dir is not None and len(p.queries) == len(benchmark.queries):
            submission = _write_submission(benchmark, rankings, Path(submission_dir))
    metrics["failed_runs"] = failed
    per_candidates = benchmark.protocol == "genecis"  # ranked among its candidates only
    drop_reference = benchmark.protocol in ("cirr", "triplets")  # CIRCO and FashionIQ rank the reference too
    target_ranks = [(qid, run_id, _target_rank(q, rankings.get(qid), per_candidates, drop_reference))
                    for q, (qid, run_id) in zip(runnable, runs)]
    sweep_id, setting, repeat = sweep or (None, None, None)
    exp_id = store.add_experiment(
        benchmark=p.bench, split=p.split, pipeline=spec, data_dir=str(p.data_dir.resolve()),
        index_dir=str(p.index_dir.resolve()), metrics=metrics, runs=target_ranks,
        sweep_id=sweep_id, setting=setting, repeat=repeat,
    )
    return Experiment(exp_id, metrics, failed, submission, token_totals(steps))


def failures(store: RunStore, exp_id: str, k: int = 10, limit: int | None = None) -> list[dict[str, Any]]:
    """The experiment's queries whose target is not in the top k, with their intermediates."""
    exp = store.experiment(exp_id)
    out = []
    for row in exp["runs"]:
        if row["target_rank"] is not None and row["target_rank"] <= k:
            continue
        run = store.get(row["run_id"])
        texts = {}
        for step in run.steps:
            if "caption" in step.outputs:
                texts["caption"] = step.outputs["caption"]
            if "descriptions" in step.outputs:
                texts["descriptions"] = step.outputs["descriptions"]
        out.append({
            "query_id": row["query_id"], "run_id": run.id, "status": run.status, "target_rank": row["target_rank"],
            "reference": run.inputs.get("image"), "modification": run.inputs.get("modification"),
            "targets": run.inputs.get("targets"), **texts, "error": run.error,
        })
        if limit and len(out) >= limit:
            break
    return out


def compare(store: RunStore, a: str, b: str) -> dict[str, Any]:
    """Metrics side by side, and the queries whose target rank got better or worse."""
    ea, eb = store.experiment(a), store.experiment(b)
    keys = list(dict.fromkeys([*ea["metrics"], *eb["metrics"]]))
    metrics = [{"metric": key, "a": ea["metrics"].get(key), "b": eb["metrics"].get(key)} for key in keys]
    rank_a = {r["query_id"]: r["target_rank"] for r in ea["runs"]}
    run_a = {r["query_id"]: r["run_id"] for r in ea["runs"]}
    better, worse = [], []
    for r in eb["runs"]:
        if r["query_id"] not in rank_a:
            continue
        old, new = rank_a[r["query_id"]], r["target_rank"]
        old_key, new_key = old or 10**9, new or 10**9
        if new_key < old_key:
            better.append({"query_id": r["query_id"], "rank_a": old, "rank_b": new, "run_a": run_a[r["query_id"]], "run_b": r["run_id"]})
        elif new_key > old_key:
            worse.append({"query_id": r["query_id"], "rank_a": old, "rank_b": new, "run_a": run_a[r["query_id"]], "run_b": r["run_id"]})
    return {"a": ea["id"], "b": eb["id"], "metrics": metrics, "better": better, "worse": worse}


def _subset(benchmark: Benchmark, queries) -> Benchmark:
    if len(queries) == len(benchmark.queries):
        return benchmark
    return replace(benchmark, queries=list(queries))


def run_group(bench: str, data_dir: str | Path, split: str, **options: Any) -> tuple[list[tuple[str, Experiment]], dict[str, float]]:
    """Every member of a group (FashionIQ's three categories, GeneCIS's tasks with split `all`), one
    experiment each, and the average the papers report (FashionIQ R@10/50, GeneCIS R@1..3)."""
    members = load_group(bench, data_dir, split)
    done = []
    for key, member in members.items():
        name, part = (member.name, member.split)
        done.append((key, run_experiment(name, data_dir, part, **options)))
    keys = GROUP_KEYS.get(next(iter(members.values())).protocol, ())
    scored = {key: exp.metrics for key, exp in done if all(k in exp.metrics for k in keys)}
    return done, (average_over(scored, keys) if keys and len(scored) == len(done) else {})


def _as_crop_files(benchmark: Benchmark, progress: bool) -> Benchmark:
    """The benchmark with each instance box's crop written as a PNG under DATA/.cirkit-crops/ (once), so
    that the crops are indexed and queried like any image. An unreadable source image leaves its crop
    missing, which counts as a miss."""
    folder = Path(".cirkit-crops") / benchmark.name / benchmark.split
    (benchmark.data_dir / folder).mkdir(parents=True, exist_ok=True)
    gallery = {}
    todo = []
    for name in benchmark.gallery:
        rel = folder / (name.replace(":", "_").replace(",", "_") + ".png")
        gallery[name] = str(rel)
        if name in benchmark.boxes and not (benchmark.data_dir / rel).is_file():
            todo.append((name, rel))
    unreadable = 0
    with progress_bar(progress and bool(todo)) as bar:
        task = bar.add_task(f"cropping {benchmark.title} instances", total=len(todo))
        for name, rel in todo:
            try:
                crop = benchmark.load_image(name)
            except (ImageError, CirkitError):
                unreadable += 1
            else:
                tmp = benchmark.data_dir / rel.with_suffix(".tmp.png")
                crop.save(tmp)
                tmp.replace(benchmark.data_dir / rel)
            bar.advance(task)
    if unreadable:
        stderr.print(f"{unreadable} instance crops could not be made (source image missing or unreadable)")
    return replace(benchmark, gallery=gallery, boxes={})


def _target_rank(query, ranking: list[str] | None, per_candidates: bool, drop_reference: bool = True) -> int | None:
    """The first target's rank under the protocol: the reference removed where it is (CIRR, triplets),
    within the candidates for GeneCIS."""
    if not ranking or not query.targets:
        return None
    if drop_reference:
        ranking = [name for name in ranking if name != query.reference]
    if per_candidates and query.candidates:
        allowed = set(query.candidates)
        ranking = [name for name in ranking if name in allowed]
    targets = set(query.targets)
    return next((i + 1 for i, name in enumerate(ranking) if name in targets), None)


def _write_submission(benchmark: Benchmark, rankings: dict[str, list[str]], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    if benchmark.protocol == "cirr":
        return list(write_cirr_submission(benchmark, rankings, out))
    if benchmark.protocol == "circo":
        return [write_circo_submission(benchmark, rankings, out / f"circo_{benchmark.split}.json")]
    return []


def _index_name(benchmark: Benchmark, identity: dict[str, Any]) -> str:
    digest = hashlib.sha256(repr(sorted(identity.items())).encode()).hexdigest()[:10]
    return f"{benchmark.name}-{benchmark.split}-{identity.get('name')}-{digest}"
