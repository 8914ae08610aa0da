"""`cirkit demo`: the whole pipeline, offline, in the toy world, with meaningful results.

In one directory it draws the toy gallery and benchmark (cirkit/toy), indexes the gallery with the
toy CLIP, runs a few composed queries through the built-in `toy` pipeline (printing each caption,
rewrite and ranking), and evaluates the pipeline on the toy benchmark with the CIRR protocol.

The directory is the demo's own: a non-empty directory that is not a demo directory is refused.
Every step is idempotent, so a demo interrupted anywhere (Ctrl-C, kill -9) re-runs cleanly: the
images already written are kept, the index resumes, and the queries run again.
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from cirkit.console import progress_bar
from cirkit.errors import CirkitError, one_line

MARKER = ".cirkit-demo"
PIPELINE = "toy"
INDEX = "index"
RUNS = "runs"

# What the demo shows before evaluating: (reference scene, modification, target scene), scenes as
# (shape, colour, size, position, background).
DEMO_QUERIES = [
    (("circle", "red", "large", "left", "black"), "make it blue", ("circle", "blue", "large", "left", "black")),
    (("star", "yellow", "small", "center", "gray"), "same shape but green and on white", ("star", "green", "small", "center", "white")),
    (("heart", "purple", "large", "right", "white"), "change the background to gray", ("heart", "purple", "large", "right", "gray")),
    (("triangle", "orange", "small", "left", "black"), "a square instead, and move it to the right", ("square", "orange", "small", "right", "black")),
]


def run_demo(
    directory: str | Path,
    *,
    progress: bool = True,
    console=None,
    data_dir: Path | None = None,
    eval_limit: int | None = None,
) -> dict[str, Any]:
    """Build the toy gallery in `directory`, index it, run a few composed queries and evaluate the
    `toy` pipeline on the toy benchmark. Prints as it goes; returns the metrics.

    Runs go to the run store in `data_dir` when given, else to one inside `directory` (DIR/runs).
    `eval_limit` evaluates only the first N benchmark queries (all by default).

    Returns {"recall@1", "recall@5", "recall@10" (fractions), "metrics" (the evaluation's metrics,
    in percent), "experiment", "queries" (the demo queries with caption, rewrite and top results),
    "directory", "index", "data_dir", "seconds"}.
    """
    from cirkit.console import stdout

    out = console or stdout
    started = time.perf_counter()
    directory = Path(directory).expanduser()
    _claim(directory)
    directory = directory.resolve()
    store_dir = Path(data_dir).expanduser() if data_dir else directory / RUNS
    data_dir_flag = f"--data-dir {_sh(store_dir)} "

    out.print(f"[bold]cirkit demo[/bold]: the whole pipeline, offline, in a toy world of coloured shapes ({escape(str(directory))})")

    # 1. the world: gallery images + a composed-retrieval benchmark in CIRR's format
    from cirkit.toy import benchmark as toy
    from cirkit.toy.world import Scene

    out.print(f"\n[bold]1. Toy world[/bold]: {len(toy.gallery_names())} images and {toy.NUM_QUERIES} composed queries, in CIRR's layout")
    with progress_bar(progress) as bar:
        task = bar.add_task("drawing", total=len(toy.gallery_names()))
        toy.write_benchmark(directory, on_image=lambda: bar.advance(task), prune=True)
    out.print(f"   {escape(str(toy.captions_path(directory)))}\n   {escape(str(toy.images_root(directory) / toy.FOLDER))}/")

    # 2. the gallery index
    from cirkit.engines import ModelPool
    from cirkit.gallery import build_index
    from cirkit.pipelines import load_pipeline

    pipeline = load_pipeline(PIPELINE)
    models = ModelPool()
    clip = models.get(pipeline.clip_model())
    index_dir = directory / INDEX
    _reset_index_if_stale(index_dir, clip.identity)
    out.print("\n[bold]2. Gallery index[/bold]: the toy CLIP's vectors of the gallery images")
    names = toy.gallery_names()
    gallery_files = sorted(f"cirr/img_raw/{toy.FOLDER}/{name}.png" for name in names.values())
    report = build_index(directory, index_dir, clip, files=gallery_files, progress=progress)
    out.print(f"   {escape(str(index_dir))}: {report.count} images ({report.embedded} embedded now, {report.reused} already there)")
    if report.skipped:
        raise CirkitError(f"{len(report.skipped)} toy images could not be indexed (first: {report.skipped[0]}): delete {directory} and run the demo again")

    # 3. a few composed queries, every intermediate printed
    from cirkit.api import query_many
    from cirkit.pipelines.runner import Query

    out.print(f"\n[bold]3. Composed queries[/bold] through the `{PIPELINE}` pipeline: caption (toy BLIP) -> rewrite (toy Qwen2) -> embed (toy CLIP) -> search")
    batch = [
        Query(toy.images_root(directory) / toy.FOLDER / f"{names[Scene(*reference)]}.png", text, f"demo-{i}")
        for i, (reference, text, _) in enumerate(DEMO_QUERIES, start=1)
    ]
    runs = query_many(batch, index_dir, pipeline=PIPELINE, k=5, data_dir=store_dir, models=models, progress=progress)
    shown = [
        _print_query(out, i, run, text, names[Scene(*target)], data_dir_flag)
        for i, (run, (_, text, target)) in enumerate(zip(runs, DEMO_QUERIES), start=1)
    ]

    # 4. evaluation on the benchmark, with the CIRR protocol
    from cirkit.experiments import run_experiment
    from cirkit.store import RunStore

    count = min(eval_limit, toy.NUM_QUERIES) if eval_limit else toy.NUM_QUERIES
    out.print(f"\n[bold]4. Evaluation[/bold]: the `{PIPELINE}` pipeline on {count} held-out toy queries (CIRR protocol: the reference image is not a result)")
    store = RunStore(store_dir)
    try:
        experiment = run_experiment(
            "cirr", directory, toy.SPLIT, pipeline=PIPELINE, store=store, index_dir=index_dir, limit=eval_limit, progress=progress
        )
    finally:
        store.close()
    metrics = experiment.metrics
    table = Table("metric", "value", title=f"toy benchmark, {count} queries (experiment {experiment.id})")
    for key in ("R@1", "R@5", "R@10", "R_subset@1"):
        if key in metrics:
            table.add_row(key, f"{metrics[key]:.1f}")
    out.print(table)
    if experiment.failed_runs:
        out.print(f"[yellow]{experiment.failed_runs} queries failed[/yellow] (see `cirkit {data_dir_flag}runs failures {experiment.id}`)")

    seconds = time.perf_counter() - started
    example = shown[0]
    out.print(f"\nDone in {seconds:.0f} s. Try it yourself:")
    out.print(
        f"  cirkit {data_dir_flag}query --pipeline {PIPELINE} --index {_sh(index_dir)} "
        f"--image {_sh(example['image'])} --text 'make it green'"
    )
    out.print(f"  cirkit {data_dir_flag}runs show {example['run_id']}")
    out.print(f"  cirkit {data_dir_flag}eval cirr --data {_sh(directory)} --split {toy.SPLIT} --pipeline {PIPELINE} --index {_sh(index_dir)}")
    return {
        "recall@1": round(metrics.get("R@1", 0.0) / 100, 6),
        "recall@5": round(metrics.get("R@5", 0.0) / 100, 6),
        "recall@10": round(metrics.get("R@10", 0.0) / 100, 6),
        "metrics": metrics,
        "experiment": experiment.id,
        "queries": shown,
        "directory": str(directory),
        "index": str(index_dir),
        "data_dir": str(store_dir),
        "seconds": seconds,
    }


def _sh(path) -> str:
    """A path as a shell word, escaped for rich markup."""
    return escape(shlex.quote(str(path)))


def _claim(directory: Path) -> None:
    """Make `directory` the demo's, or refuse: it must be new, empty, or an earlier demo's."""
    if directory.exists() and not directory.is_dir():
        raise CirkitError(f"{directory} is a file, not a directory: choose a new or empty directory for the demo")
    marker = directory / MARKER
    try:
        if directory.is_dir() and any(directory.iterdir()) and not marker.is_file():
            raise CirkitError(
                f"{directory} is not empty and is not a cirkit demo directory: choose a new or empty directory "
                "(the demo writes its images, index and runs there)"
            )
        directory.mkdir(parents=True, exist_ok=True)
        if not marker.is_file():
            marker.write_text(json.dumps({"cirkit": "demo", "pipeline": PIPELINE}) + "\n", encoding="utf-8")
    except OSError as exc:
        raise CirkitError(f"cannot use {directory} for the demo: {one_line(exc)}") from None


def _reset_index_if_stale(index_dir: Path, identity: dict[str, Any]) -> None:
    """The demo owns its index: one from another CLIP (an older toy model) or a half-created one
    (interrupted before its first write) is removed, so that indexing starts afresh."""
    if not index_dir.is_dir():
        return
    built_with = None
    for name in ("cache/model.json", "manifest.json"):
        try:
            data = json.loads((index_dir / name).read_text(encoding="utf-8"))
            built_with = data if name.startswith("cache") else data.get("model")
            break
        except (OSError, ValueError, AttributeError):
            continue
    if built_with != identity:
        shutil.rmtree(index_dir)


def _print_query(out, number: int, run: dict[str, Any], text: str, target: str, data_dir_flag: str) -> dict[str, Any]:
    image = Path(run["inputs"]["image"])
    out.print(f"\n   [bold]query {number}[/bold]: {escape(image.name)} + [italic]\"{escape(text)}\"[/italic]")
    summary: dict[str, Any] = {"image": str(image), "text": text, "target": target, "run_id": run["id"], "status": run["status"]}
    if run["status"] != "ok":
        out.print(f"   [red]failed[/red]: {escape(run['error'] or '')}")
        return {**summary, "error": run["error"]}
    steps = {s["name"]: s for s in run["steps"]}
    caption = steps["caption"]["outputs"].get("caption", "")
    description = steps["rewrite"]["outputs"].get("description", "")
    out.print(f"   caption:  {escape(caption)}")
    out.print(f"   rewrite:  {escape(description)}")
    results = []
    for hit in run["results"]:
        name = Path(hit["path"]).stem
        mark = "  [green]<- target[/green]" if name == target else ""
        out.print(f"     {hit['rank']}. {escape(name)}  {hit['score']:.3f}{mark}")
        results.append({"rank": hit["rank"], "name": name, "score": hit["score"]})
    out.print(f"   [dim]run {run['id']}: cirkit {data_dir_flag}runs show {run['id']}[/dim]")
    return {**summary, "caption": caption, "description": description, "results": results,
            "target_rank": next((r["rank"] for r in results if r["name"] == target), None)}


# ---------------------------------------------------------------- cirkit demo --hard

HARD = "hard"
HARD_PIPELINES = ("toy-hard-cirevl", "toy-hard-pdv", "toy-hard-ldre", "toy-hard-seize", "toy-hard-feedback", "toy-hard-rerank",
                  "toy-hard-full", "toy-hard-wiser")
HARD_SPLIT = "test"


def run_hard_demo(
    directory: str | Path,
    *,
    progress: bool = True,
    console=None,
    data_dir: Path | None = None,
    eval_limit: int | None = None,
    pipelines: tuple[str | Path, ...] = HARD_PIPELINES,
    quiet: bool = False,
    split: str = HARD_SPLIT,
) -> dict[str, Any]:
    """Build the hard toy world's test split (or `split`: "val", for choosing parameters) in DIR/hard,
    index its gallery and evaluate every toy-hard pipeline on it with the CIRR protocol. Prints one
    table (unless `quiet`); returns
    {"pipelines": {NAME: {"R@1", "R@5" (percent), "calls_per_query", "seconds", "experiment"}},
    "queries", "directory", "data_dir", "seconds"}."""
    from cirkit.console import stdout
    from cirkit.engines import ModelPool
    from cirkit.experiments import run_experiment
    from cirkit.gallery import build_index
    from cirkit.pipelines import load_pipeline
    from cirkit.store import RunStore
    from cirkit.toy import hard

    out = console or stdout
    say = (lambda *a, **k: None) if quiet else out.print
    started = time.perf_counter()
    directory = Path(directory).expanduser()
    _claim(directory)
    directory = directory.resolve()
    world = directory / HARD
    store_dir = Path(data_dir).expanduser() if data_dir else directory / RUNS
    count = min(eval_limit, hard.NUM_QUERIES[split]) if eval_limit else hard.NUM_QUERIES[split]
    held_out = "held-out test" if split == "test" else split

    names = hard.gallery_names()
    say(f"[bold]cirkit demo --hard[/bold]: {len(names)} images whose pattern and small mark captions mostly leave out, "
        f"{count} {held_out} queries ({escape(str(world))})")
    with progress_bar(progress) as bar:
        task = bar.add_task("drawing", total=len(names))
        hard.write_benchmark(world, split, on_image=lambda: bar.advance(task), prune=True)

    clip = ModelPool().get(load_pipeline(pipelines[0]).clip_model())
    index_dir = world / INDEX
    _reset_index_if_stale(index_dir, clip.identity)
    files = sorted(f"cirr/img_raw/{hard.FOLDER}/{name}.png" for name in names.values())
    report = build_index(world, index_dir, clip, files=files, progress=progress)
    if report.skipped:
        raise CirkitError(f"{len(report.skipped)} toy images could not be indexed (first: {report.skipped[0]}): delete {world} and run the demo again")
    for name in pipelines:  # relevance feedback reads the top results' gallery captions
        spec = load_pipeline(name)
        if any(step.kind == "feedback" for step in spec.steps):
            from cirkit.pipelines.gallery_captions import caption_gallery

            caption_gallery(index_dir, spec, ModelPool(), progress=progress)

    rows: dict[str, dict[str, Any]] = {}
    store = RunStore(store_dir)
    try:
        for name in pipelines:
            say(f"   {name} ...")
            began = time.perf_counter()
            experiment = run_experiment("cirr", world, hard.CIRR_SPLIT, pipeline=name, store=store, index_dir=index_dir,
                                        limit=eval_limit, progress=progress, use_cache=False)
            seconds = time.perf_counter() - began
            if experiment.failed_runs:
                raise CirkitError(f"{experiment.failed_runs} queries of {name} failed (see `cirkit runs failures {experiment.id}`)")
            rows[str(name)] = {
                "R@1": round(experiment.metrics.get("R@1", 0.0), 2),
                "R@5": round(experiment.metrics.get("R@5", 0.0), 2),
                "calls_per_query": _calls_per_query(store, experiment.id),
                "seconds": round(seconds, 1),
                "experiment": experiment.id,
            }
    finally:
        store.close()

    table = Table("pipeline", "R@1", "R@5", "model calls / query", "seconds",
                  title=f"hard toy world, {count} {held_out} queries (CIRR protocol)")
    for name, row in rows.items():
        table.add_row(name, f"{row['R@1']:.1f}", f"{row['R@5']:.1f}", f"{row['calls_per_query']:.1f}", f"{row['seconds']:.0f}")
    say(table)
    total = time.perf_counter() - started
    say(f"Done in {total:.0f} s. Compare runs: cirkit --data-dir {_sh(store_dir)} eval list")
    return {"pipelines": rows, "queries": count, "directory": str(directory), "data_dir": str(store_dir), "seconds": total}


def _calls_per_query(store, experiment_id: str) -> float:
    """Model calls per query, over the experiment's runs: one per generated text (caption, rewrite,
    verdict) and one per embedded text or image."""
    runs = store.experiment(experiment_id)["runs"]
    calls = 0
    for row in runs:
        for step in store.get(row["run_id"]).steps:
            if step.model:
                calls += len(step.raw) or len(step.prompts) or 1
    return round(calls / max(1, len(runs)), 1)
