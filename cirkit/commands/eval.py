"""`cirkit eval`: run a pipeline on a benchmark, score prediction files, list and compare experiments."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from cirkit.commands.common import AsJson, ModelOverrides, NoCache, PipelineRef, Prices, open_store
from cirkit.console import stdout
from cirkit.errors import CirkitError

eval_app = typer.Typer(
    help="Evaluate on CIRR, CIRCO, FashionIQ, GeneCIS or your own triplets (`cirkit eval BENCH --data DIR --split S`).",
    no_args_is_help=True,
)
Mlflow = Annotated[
    bool,
    typer.Option("--mlflow", help="Log each experiment as an MLflow run (also when MLFLOW_TRACKING_URI is set); needs cirkit[mlflow]."),
]
Repeats = Annotated[
    int,
    typer.Option("--repeats", min=1, help="Run N times (new seeds for steps that sample or call a hosted model); mean ± sd per metric."),
]
Paraphrases = Annotated[
    Optional[int],
    typer.Option("--paraphrases", metavar="N",
                 help="Also run with N paraphrases of each modification (1-10, by the pipeline's LLM; kept as runs): the spread per metric, and the queries whose target rank changes."),
]
ParaphraseModel = Annotated[
    Optional[str],
    typer.Option("--paraphrase-model", metavar="NAME", help="With --paraphrases: the pipeline's model entry that paraphrases (default: the rewrite step's)."),
]
ParaphrasesFile = Annotated[
    Optional[Path],
    typer.Option("--paraphrases-file", metavar="FILE", help="With --paraphrases: take them from a JSON file {query id: [texts]} instead of an LLM."),
]
SUBCOMMANDS = ("run", "sweep", "score", "compare", "list", "--help", "-h")


@eval_app.command("run")
def eval_run(
    ctx: typer.Context,
    bench: Annotated[str, typer.Argument(help="cirr, circo, fashioniq-dress|shirt|toptee, genecis, triplets")],
    data: Annotated[Path, typer.Option("--data", help="The data directory (layout: see the README).")],
    split: Annotated[str, typer.Option("--split", help="val, test1, test, a GeneCIS task, or a triplets file name.")],
    pipeline: PipelineRef = "cirevl",
    index: Annotated[Optional[Path], typer.Option("--index", help="Gallery index directory (default: under DATA).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Only the first N queries.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Queries per batch.")] = 64,
    submission: Annotated[Path, typer.Option("--submission-dir", help="Where test-split submission files go.")] = Path("."),
    no_cache: NoCache = False,
    as_json: AsJson = False,
    model: ModelOverrides = None,
    repeats: Repeats = 1,
    prices: Prices = None,
    mlflow: Mlflow = False,
    paraphrases: Paraphrases = None,
    paraphrase_model: ParaphraseModel = None,
    paraphrases_file: ParaphrasesFile = None,
) -> None:
    """Run a pipeline over a benchmark split in batches and score it with the official protocol."""
    from cirkit.commands.common import parse_model_overrides
    from cirkit.costs import load_prices
    from cirkit.experiments import run_experiment, run_group, run_group_sweep, run_paraphrases, run_sweep
    from cirkit.tracking import open_tracker

    if paraphrases is None and (paraphrase_model or paraphrases_file):
        raise CirkitError(f"{'--paraphrase-model' if paraphrase_model else '--paraphrases-file'} goes with --paraphrases N")
    if paraphrases is not None:
        from cirkit.paraphrases import check_count

        check_count(paraphrases)
        if repeats > 1:
            raise CirkitError("--paraphrases and --repeats each run the pipeline several times: give one of them")
        if bench == "fashioniq" or (bench == "genecis" and split == "all"):
            raise CirkitError(f"--paraphrases runs one benchmark split: give one member of {bench} (e.g. fashioniq-dress, genecis --split focus_object)")
    price_table = load_prices(prices)
    tracker = open_tracker(mlflow, price_table)
    if paraphrases is not None:
        study = run_paraphrases(bench, data, split, pipeline=pipeline, store=open_store(ctx), count=paraphrases,
                                paraphrase_model=paraphrase_model, paraphrases_file=paraphrases_file, index_dir=index,
                                limit=limit, batch_size=batch_size, use_cache=not no_cache, progress=not as_json,
                                model_overrides=parse_model_overrides(model), tracker=tracker)
        _print_paraphrases(study, as_json, f"{bench} {split}", price_table)
        return
    if repeats > 1:
        if bench == "fashioniq" or (bench == "genecis" and split == "all"):
            if index is not None:
                raise CirkitError(f"--index names one gallery; {bench} --split {split} runs several: leave it out")
            group = run_group_sweep(bench, data, split, pipeline=pipeline, store=open_store(ctx), grid=None, repeats=repeats,
                                    limit=limit, batch_size=batch_size, use_cache=not no_cache, progress=not as_json,
                                    model_overrides=parse_model_overrides(model), tracker=tracker)
            _print_group_sweep(group, as_json, bench, split, price_table)
            return
        sweep = run_sweep(bench, data, split, pipeline=pipeline, store=open_store(ctx), grid=None, repeats=repeats,
                          index_dir=index, limit=limit, batch_size=batch_size, use_cache=not no_cache, progress=not as_json,
                          model_overrides=parse_model_overrides(model), tracker=tracker)
        _print_sweep(sweep, as_json, f"{bench} {split}", price_table)
        return

    options = dict(
        pipeline=pipeline, store=open_store(ctx), index_dir=index, limit=limit, batch_size=batch_size,
        submission_dir=submission, use_cache=not no_cache, progress=not as_json, model_overrides=parse_model_overrides(model),
        tracker=tracker,
    )
    if bench == "fashioniq" or (bench == "genecis" and split == "all"):
        if index is not None:
            raise CirkitError(f"--index names one gallery; {bench} --split {split} runs several: leave it out")
        done, average = run_group(bench, data, split, **options)
        if as_json:
            print(json.dumps({"experiments": {key: {"experiment": exp.id, "metrics": exp.metrics, "failed_runs": exp.failed_runs,
                                                    **_token_fields(exp.tokens, price_table)}
                                              for key, exp in done}, "average": average}))
            return
        for key, exp in done:
            _metrics_table(exp.metrics, f"{bench} {key} (experiment {exp.id})")
            _print_tokens(exp.tokens, price_table)
        if average:
            _metrics_table(average, f"{bench} {split}: average over {len(done)}")
        return
    exp = run_experiment(bench, data, split, **options)
    if as_json:
        print(json.dumps({"experiment": exp.id, "metrics": exp.metrics, "failed_runs": exp.failed_runs,
                          "submission": [str(p) for p in exp.submission], **_token_fields(exp.tokens, price_table)}))
    else:
        _metrics_table(exp.metrics, f"{bench} {split} (experiment {exp.id})")
        _print_tokens(exp.tokens, price_table)
        for path in exp.submission:
            stdout.print(f"submission file: {path}")
        stdout.print(f"failures: cirkit runs failures {exp.id}")
    _fail_when_no_run_succeeded(options["store"], exp)


def _fail_when_no_run_succeeded(store, exp) -> None:
    """A non-zero exit when every query's run failed (a model that cannot load, a server that is gone):
    the metrics are stored, but they measure nothing."""
    runs = store.experiment(exp.id)["runs"]
    if runs and exp.failed_runs == len(runs):
        raise CirkitError(f"every run of experiment {exp.id} failed; the first: {store.get(runs[0]['run_id']).error}")


@eval_app.command("sweep")
def eval_sweep(
    ctx: typer.Context,
    bench: Annotated[str, typer.Argument(help="cirr, circo, fashioniq-dress|shirt|toptee, genecis, triplets")],
    data: Annotated[Path, typer.Option("--data", help="The data directory (layout: see the README).")],
    split: Annotated[str, typer.Option("--split", help="val, a GeneCIS task, or a triplets file name.")],
    grid: Annotated[
        Optional[list[str]],
        typer.Option("--grid", metavar="STEP.PARAM=[V1,V2,...]",
                     help="A step parameter and its values, e.g. 'pdv.beta=[0.5,0.7,0.9]'. Repeat for a cartesian grid."),
    ] = None,
    pipeline: PipelineRef = "cirevl",
    metric: Annotated[Optional[str], typer.Option("--metric", help="Rank settings by this metric (default: the protocol's headline).")] = None,
    index: Annotated[Optional[Path], typer.Option("--index", help="Gallery index directory (default: under DATA).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Only the first N queries.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Queries per batch.")] = 64,
    no_cache: NoCache = False,
    as_json: AsJson = False,
    model: ModelOverrides = None,
    repeats: Repeats = 1,
    prices: Prices = None,
    mlflow: Mlflow = False,
    paraphrases: Annotated[Optional[int], typer.Option("--paraphrases", hidden=True)] = None,
) -> None:
    """Evaluate every setting of a parameter grid: shared steps run once, one experiment per setting, the best marked."""
    from cirkit.commands.common import parse_model_overrides
    from cirkit.costs import load_prices
    from cirkit.experiments import run_group_sweep, run_sweep
    from cirkit.tracking import open_tracker

    if paraphrases is not None:
        raise CirkitError("--paraphrases goes with cirkit eval BENCH, not with a sweep: run the setting you pick with --paraphrases")

    price_table = load_prices(prices)
    tracker = open_tracker(mlflow, price_table)
    if bench == "fashioniq" or (bench == "genecis" and split == "all"):
        if index is not None:
            raise CirkitError(f"--index names one gallery; {bench} --split {split} runs several: leave it out")
        group = run_group_sweep(bench, data, split, pipeline=pipeline, store=open_store(ctx), grid=grid or [], repeats=repeats,
                                metric=metric, limit=limit, batch_size=batch_size, use_cache=not no_cache, progress=not as_json,
                                model_overrides=parse_model_overrides(model), tracker=tracker)
        _print_group_sweep(group, as_json, bench, split, price_table)
        return
    sweep = run_sweep(bench, data, split, pipeline=pipeline, store=open_store(ctx), grid=grid or [], repeats=repeats,
                      metric=metric, index_dir=index, limit=limit, batch_size=batch_size, use_cache=not no_cache,
                      progress=not as_json, model_overrides=parse_model_overrides(model), tracker=tracker)
    _print_sweep(sweep, as_json, f"{bench} {split}", price_table)


def _token_fields(tokens: dict | None, prices: dict) -> dict:
    """The JSON fields of an experiment's tokens (and cost, with a price table)."""
    from cirkit.costs import cost

    if not tokens:
        return {}
    return {"tokens": tokens, **({"cost": cost(tokens, prices)} if prices else {})}


def _print_tokens(tokens: dict | None, prices: dict) -> None:
    from cirkit.costs import cost, describe

    if tokens and any(tokens.get(k) for k in ("spent_input", "spent_output", "cached_input", "cached_output")):
        stdout.print(describe(tokens, cost(tokens, prices)))


def _sweep_json(sweep, prices: dict) -> dict:
    return {
        "sweep": sweep.id, "repeats": sweep.repeats, "metric": sweep.metric,
        "grid": [{"step": a.step, "param": a.param, "values": a.values} for a in sweep.axes],
        "settings": [{"setting": row.setting.values, "experiments": [e.id for e in row.experiments], "metrics": row.metrics,
                      "sd": row.sd, "failed_runs": row.failed_runs, "best": i == sweep.best,
                      **_token_fields(row.tokens, prices)} for i, row in enumerate(sweep.rows)],
        "best": sweep.rows[sweep.best].setting.values if sweep.best is not None else None,
    }


def _print_group_sweep(group, as_json: bool, bench: str, split: str, prices: dict) -> None:
    """Each member's sweep, then every setting averaged over the members."""
    if as_json:
        average = _sweep_json(group.average, prices)
        del average["sweep"]
        print(json.dumps({"members": {key: _sweep_json(sweep, prices) for key, sweep in group.members.items()}, "average": average}))
        return
    for key, sweep in group.members.items():
        _print_sweep(sweep, False, f"{bench} {key}", prices, summary=False)
    _print_sweep(group.average, False, f"{bench} {split}: average over {len(group.members)}", prices, heading=True)


def _print_sweep(sweep, as_json: bool, title: str, prices: dict | None = None, *, summary: bool = True, heading: bool = False) -> None:
    """`heading`: the title as given (no sweep id); `summary`: the best setting, tokens and experiments below the table."""
    prices = prices or {}
    if as_json:
        print(json.dumps(_sweep_json(sweep, prices)))
        return
    from cirkit.sweep import show_value

    # the protocol's metrics (counts aside) that the rows hold (a group's average: those it averages)
    keys = [k for k, v in sweep.rows[0].experiments[0].metrics.items() if isinstance(v, float) and k in sweep.rows[0].metrics]
    axes = [a.name for a in sweep.axes]
    spread = sweep.repeats > 1
    caption = f"mean ± sd over {sweep.repeats} repeats; " if spread else ""
    ranked = len(sweep.rows) > 1 and sweep.metric
    table = Table(*([""] if ranked else []), *axes, *keys, title=title if heading else f"{title}: sweep {sweep.id}",
                  caption=f"{caption}* best by {sweep.metric}" if ranked else caption.removesuffix("; ") or None)
    for i, row in enumerate(sweep.rows):
        cells = [_fmt(row.metrics[k]) + (f" ± {row.sd[k]:.2f}" if spread and k in row.sd else "") for k in keys]
        best = ranked and i == sweep.best
        table.add_row(*(["*" if best else ""] if ranked else []), *(escape(show_value(row.setting.values[a])) for a in axes),
                      *cells, style="bold" if best else None)
    stdout.print(table)
    if not summary:
        return
    if sweep.best is not None and ranked:
        row = sweep.rows[sweep.best]
        stdout.print(f"best: {escape(row.setting.label)} ({sweep.metric} {_fmt(row.metrics[sweep.metric])})")
    from cirkit.costs import add_totals

    _print_tokens(add_totals([row.tokens for row in sweep.rows]), prices)
    ids = [e.id for row in sweep.rows for e in row.experiments]
    stdout.print(f"experiments: {', '.join(ids[:4])}{', ...' if len(ids) > 4 else ''} (cirkit eval list; cirkit eval compare A B)")


def _print_paraphrases(study, as_json: bool, title: str, prices: dict) -> None:
    summary = study.summary
    if as_json:
        print(json.dumps({
            "sweep": study.id, "paraphrases": study.count,
            "variants": [{"variant": label, "experiment": exp.id, "metrics": exp.metrics, "failed_runs": exp.failed_runs}
                         for label, exp in zip(study.labels, study.experiments)],
            "metrics": summary["metrics"], "rank_changed": summary["rank_changed"],
            "queries_changed": summary["queries_changed"], "queries": summary["queries"],
            "paraphrase_runs": study.paraphrase_runs, "left_out": study.left_out, **_token_fields(study.tokens, prices),
        }))
        return
    table = Table("metric", *study.labels, "mean ± sd", "min", "max", "spread",
                  title=f"{title}: {study.count} paraphrase{'s' if study.count > 1 else ''} of each modification (sweep {study.id})")
    for key, row in summary["metrics"].items():
        table.add_row(escape(key), *(_fmt(v) for v in [row["original"], *row["paraphrases"]]),
                      f"{row['mean']:.2f} ± {row['sd']:.2f}", _fmt(row["min"]), _fmt(row["max"]), _fmt(row["spread"]))
    stdout.print(table)
    changed, total = len(summary["queries_changed"]), summary["queries"]
    stdout.print(f"target rank changed with the wording: {100 * summary['rank_changed']:.1f}% of queries ({changed} of {total})")
    _print_tokens(study.tokens, prices)
    first = next(iter(study.paraphrase_runs.values()), None)
    if first:
        stdout.print(f"paraphrases: one run per query, e.g. cirkit runs show {first} (fix one: cirkit runs edit {first} paraphrase)")
    stdout.print(f"experiments: {', '.join(e.id for e in study.experiments)} (cirkit eval compare A B)")


@eval_app.command("score")
def eval_score(
    bench: Annotated[str, typer.Argument(help="cirr, circo, fashioniq-dress|shirt|toptee, genecis, triplets")],
    annotations: Annotated[Path, typer.Option("--annotations", help="The data directory with the annotation files.")],
    predictions: Annotated[list[Path], typer.Option("--predictions", help="Predictions or submission file(s).")],
    split: Annotated[str, typer.Option("--split")] = "val",
    as_json: AsJson = False,
) -> None:
    """Score an existing predictions or submission file, without any model."""
    from cirkit.benchmarks import score_predictions

    metrics = score_predictions(bench, annotations, predictions if len(predictions) > 1 else predictions[0], split)
    if as_json:
        print(json.dumps(metrics))
        return
    _metrics_table(metrics, f"{bench} {split}: {', '.join(p.name for p in predictions)}")


@eval_app.command("list")
def eval_list(ctx: typer.Context, limit: Annotated[int, typer.Option(min=1)] = 20) -> None:
    """Recent experiments."""
    table = Table("experiment", "created (UTC)", "benchmark", "split", "pipeline", "headline")
    for exp in open_store(ctx).experiments(limit):
        headline = ", ".join(f"{k}={v:.2f}" for k, v in list(exp["metrics"].items())[:3] if isinstance(v, (int, float)))
        setting = json.loads(exp["setting"]) if exp.get("setting") else {}
        pipeline = exp["pipeline_name"] + "".join(f" {k}={v}" for k, v in setting.items())
        if exp.get("sweep_id"):
            pipeline += f" (sweep {exp['sweep_id']}" + (f", repeat {exp['repeat'] + 1})" if exp.get("repeat") else ")")
        table.add_row(exp["id"], exp["created_at"][:19], exp["benchmark"], exp["split"], escape(pipeline), headline)
    stdout.print(table)


@eval_app.command("compare")
def eval_compare(
    ctx: typer.Context,
    a: Annotated[str, typer.Argument(help="An experiment id.")],
    b: Annotated[str, typer.Argument(help="Another experiment id.")],
    limit: Annotated[int, typer.Option(min=1, help="Queries listed per direction.")] = 10,
    as_json: AsJson = False,
) -> None:
    """Metrics side by side, and the queries that got better or worse."""
    from cirkit.experiments import compare

    diff = compare(open_store(ctx), a, b)
    if as_json:
        print(json.dumps(diff))
        return
    table = Table("metric", diff["a"], diff["b"], "change", title="Metrics")
    for row in diff["metrics"]:
        va, vb = row["a"], row["b"]
        change = f"{vb - va:+.2f}" if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else ""
        table.add_row(row["metric"], _fmt(va), _fmt(vb), change)
    stdout.print(table)
    for label, rows in (("better", diff["better"]), ("worse", diff["worse"])):
        stdout.print(f"{len(rows)} queries got {label}" + (":" if rows else ""))
        for row in rows[:limit]:
            stdout.print(f"  {escape(row['query_id'])}: target rank {row['rank_a'] or '-'} -> {row['rank_b'] or '-'} (run {row['run_b']})")


def _fmt(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value) if value is not None else "-"


def _metrics_table(metrics: dict, title: str) -> None:
    table = Table("metric", "value", title=title)
    for key, value in metrics.items():
        table.add_row(escape(str(key)), _fmt(value))
    stdout.print(table)
