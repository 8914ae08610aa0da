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
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from cirkit.benchmarks import Benchmark, evaluate, load, load_group, write_circo_submission, write_cirr_submission
from cirkit.benchmarks.evaluation import GROUP_KEYS
from cirkit.benchmarks.metrics import average_over
from cirkit.benchmarks.registry import family
from cirkit.console import progress_bar, stderr
from cirkit.engines import ModelPool
from cirkit.errors import CirkitError, ImageError
from cirkit.gallery import GalleryIndex, build_index
from cirkit.pipelines import load_pipeline
from cirkit.pipelines.runner import Query, run_queries
from cirkit.store import RunStore

DEPTH = 100  # results kept per query: enough for every protocol's K (50) after dropping the reference


@dataclass
class Experiment:
    id: str
    metrics: dict[str, Any]
    failed_runs: int
    submission: list[Path]


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
) -> Experiment:
    benchmark = load(bench, data_dir, split)
    if benchmark.boxes:
        benchmark = _as_crop_files(benchmark, progress)
    spec = load_pipeline(pipeline, model_overrides=model_overrides, benchmark=family(benchmark))
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
        ids = run_queries(spec, batch, index=index, store=store, models=models, k=DEPTH, progress=progress,
                          raise_on_failure=False, use_cache=use_cache)
        runs.extend(zip((q.id for q in chunk), ids))
        if progress:
            stderr.print(f"{benchmark.title}: {min(start + batch_size, len(runnable))}/{len(runnable)} queries")

    rankings, failed = {}, 0
    for query, (qid, run_id) in zip(runnable, runs):
        run = store.get(run_id)
        if run.status != "ok":
            failed += 1
            continue
        rankings[qid] = [name_of[hit["path"]] for hit in run.results or [] if hit["path"] in name_of]
    part = _subset(benchmark, queries)
    submission: list[Path] = []
    if benchmark.has_ground_truth:
        metrics = evaluate(part, rankings, available=available, missing="miss")
    else:
        metrics = {"queries": len(queries), "scored": False}
        if submission_dir is not None and len(queries) == len(benchmark.queries):
            submission = _write_submission(benchmark, rankings, Path(submission_dir))
    metrics["failed_runs"] = failed
    per_candidates = benchmark.protocol == "genecis"  # ranked among its candidates only
    drop_reference = benchmark.protocol in ("cirr", "triplets")  # CIRCO and FashionIQ rank the reference too
    target_ranks = [(qid, run_id, _target_rank(q, rankings.get(qid), per_candidates, drop_reference))
                    for q, (qid, run_id) in zip(runnable, runs)]
    exp_id = store.add_experiment(
        benchmark=bench, split=split, pipeline=spec, data_dir=str(Path(data_dir).resolve()),
        index_dir=str(index_dir.resolve()), metrics=metrics, runs=target_ranks,
    )
    return Experiment(exp_id, metrics, failed, submission)


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
    better, worse = [], []
    for r in eb["runs"]:
        if r["query_id"] not in rank_a:
            continue
        old, new = rank_a[r["query_id"]], r["target_rank"]
        old_key, new_key = old or 10**9, new or 10**9
        if new_key < old_key:
            better.append({"query_id": r["query_id"], "rank_a": old, "rank_b": new, "run_b": r["run_id"]})
        elif new_key > old_key:
            worse.append({"query_id": r["query_id"], "rank_a": old, "rank_b": new, "run_b": r["run_id"]})
    return {"a": ea["id"], "b": eb["id"], "metrics": metrics, "better": better, "worse": worse}


def _subset(benchmark: Benchmark, queries) -> Benchmark:
    if len(queries) == len(benchmark.queries):
        return benchmark
    from dataclasses import replace

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
    from dataclasses import replace

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
