"""The `cirkit` command line: each command parses its flags, calls one library function, prints with rich."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from cirkit.console import stderr, stdout
from cirkit.errors import CirkitError, one_line

app = typer.Typer(
    help="Training-free composed image retrieval: caption, rewrite, embed, search; every intermediate kept.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
pipelines_app = typer.Typer(help="List, show and validate pipeline files.", no_args_is_help=True)
prompts_app = typer.Typer(help="List and show prompt templates.", no_args_is_help=True)
runs_app = typer.Typer(help="Inspect stored runs: every prompt, raw answer and result.", no_args_is_help=True)
app.add_typer(pipelines_app, name="pipelines")
app.add_typer(prompts_app, name="prompts")
app.add_typer(runs_app, name="runs")

DataDir = Annotated[
    Optional[Path],
    typer.Option("--data-dir", envvar="CIRKIT_DATA_DIR", help="Where the run store lives (default: the user data dir)."),
]


@app.callback()
def _root(ctx: typer.Context, data_dir: DataDir = None) -> None:
    ctx.obj = {"data_dir": data_dir}


def _store(ctx: typer.Context):
    from cirkit.store import RunStore

    return RunStore(ctx.obj["data_dir"])


# ---------------------------------------------------------------- index


@app.command()
def index(
    images_dir: Annotated[Path, typer.Argument(help="Folder of gallery images (searched recursively).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Index directory to create or update.")],
    pipeline: Annotated[Optional[str], typer.Option(help="Use this pipeline's CLIP model (default: cirevl).")] = None,
    clip: Annotated[Optional[str], typer.Option(help="open_clip model name, or a model config JSON path.")] = None,
    pretrained: Annotated[Optional[str], typer.Option(help="open_clip pretrained tag, or a checkpoint path.")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Image decoding processes (default: up to 4).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    max_pixels: Annotated[Optional[int], typer.Option(min=1, help="Skip images with more pixels than this.")] = None,
) -> None:
    """Embed a folder of images with CLIP into a FAISS index (resumable; updates add and drop images)."""
    from cirkit.api import index_folder
    from cirkit.images import DEFAULT_MAX_PIXELS

    if pretrained and not clip:
        raise CirkitError("--pretrained goes with --clip")
    report = index_folder(
        images_dir,
        out,
        pipeline=pipeline,
        clip=clip,
        pretrained=pretrained,
        device=device,
        batch_size=batch_size,
        workers=workers,
        max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
        progress=True,
    )
    stdout.print(
        f"indexed {report.count} images into {report.directory} "
        f"({report.embedded} embedded, {report.reused} reused, {report.removed} removed, {len(report.skipped)} skipped)"
    )
    if report.skipped:
        table = Table("skipped file", "reason", title="Skipped images (also listed in manifest.json)")
        for item in report.skipped:
            table.add_row(escape(item["path"]), escape(item["reason"]))
        stderr.print(table)


# ---------------------------------------------------------------- query


@app.command()
def query(
    ctx: typer.Context,
    index: Annotated[Path, typer.Option("--index", "-i", help="Gallery index directory (from `cirkit index`).")],
    image: Annotated[Optional[Path], typer.Option("--image", help="The reference image.")] = None,
    text: Annotated[Optional[str], typer.Option("--text", "-t", help="How the target differs from the reference image.")] = None,
    queries: Annotated[
        Optional[Path], typer.Option("--queries", help='JSONL file of queries, one {"image", "text", "id"} per line, run as one batch.')
    ] = None,
    pipeline: Annotated[str, typer.Option("--pipeline", "-p", help="Built-in pipeline name or pipeline file.")] = "cirevl",
    prompt: Annotated[
        Optional[list[str]], typer.Option("--prompt", help="Swap a step's template: STEP=NAME_OR_FILE (repeat a step for an ensemble).")
    ] = None,
    k: Annotated[int, typer.Option("-k", min=1, help="How many results to show.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON: results, run id, intermediates (one line per query with --queries).")] = False,
) -> None:
    """Find gallery images that show the reference image changed as the text says."""
    from cirkit.api import load_queries, query_many
    from cirkit.pipelines.runner import Query

    if queries is not None and (image is not None or text is not None):
        raise CirkitError("give either --queries FILE or --image and --text, not both")
    if queries is None and (image is None or text is None):
        raise CirkitError("give --image and --text (or --queries FILE)")
    batch = load_queries(queries) if queries is not None else [Query(image, text)]
    runs = query_many(
        batch,
        index,
        pipeline=pipeline,
        prompts=_parse_prompt_swaps(prompt or []),
        k=k,
        data_dir=ctx.obj["data_dir"],
        progress=not as_json,
        raise_on_failure=queries is None,
    )
    if queries is None:
        run = runs[0]
        if as_json:
            stdout.print_json(data=_compact(run))
            return
        _print_results(run["results"])
        for step in run["steps"]:
            outputs = step["outputs"]
            if "caption" in outputs:
                stdout.print(f"[bold]caption[/bold] ({step['name']}): {escape(outputs['caption'])}")
            for i, description in enumerate(outputs.get("descriptions", [])):
                label = f" {i + 1}" if len(outputs["descriptions"]) > 1 else ""
                stdout.print(f"[bold]description{label}[/bold] ({step['name']}): {escape(description)}")
        stdout.print(f"run id: {run['id']}  (inspect with: cirkit runs show {run['id']})")
        return
    failed = [run for run in runs if run["status"] != "ok"]
    if as_json:
        for run in runs:
            print(json.dumps(_compact(run), ensure_ascii=False))
    else:
        table = Table("query", "run id", "status", "top result", "score", title=f"{len(runs)} queries")
        for run in runs:
            top = run["results"][0] if run["results"] else None
            table.add_row(
                escape(run["inputs"].get("query_id", "")), run["id"], run["status"],
                escape(top["path"]) if top else escape(run["error"] or ""), f"{top['score']:.4f}" if top else "",
            )
        stdout.print(table)
    if failed:
        raise CirkitError(f"{len(failed)} of {len(runs)} queries failed (see `cirkit runs show RUN_ID`): {failed[0]['error']}")


def _parse_prompt_swaps(items: list[str]) -> dict[str, list[str]]:
    """STEP=TEMPLATE flags; naming a step twice gives it an ensemble of templates."""
    swaps: dict[str, list[str]] = {}
    for item in items:
        step, sep, template = item.partition("=")
        if not sep or not step.strip() or not template.strip():
            raise CirkitError(f"--prompt expects STEP=TEMPLATE, got '{item}'")
        swaps.setdefault(step.strip(), []).append(template.strip())
    return swaps


def _print_results(results: list[dict[str, Any]]) -> None:
    table = Table("rank", "score", "image", title="Results")
    for r in results:
        table.add_row(str(r["rank"]), f"{r['score']:.4f}", escape(r["file"]))
    stdout.print(table)


# ---------------------------------------------------------------- pipelines


@pipelines_app.command("list")
def pipelines_list() -> None:
    """The built-in pipelines."""
    from cirkit.pipelines import builtin_names, load_pipeline

    table = Table("name", "description")
    for name in builtin_names():
        table.add_row(name, escape(load_pipeline(name).spec.description))
    stdout.print(table)


@pipelines_app.command("show")
def pipelines_show(name: Annotated[str, typer.Argument(help="Built-in pipeline name or file.")]) -> None:
    """Print a pipeline file (validated)."""
    from cirkit.pipelines import load_pipeline

    pipeline = load_pipeline(name)
    stdout.print(f"# {pipeline.source}")
    stdout.print(escape(pipeline.text), end="" if pipeline.text.endswith("\n") else "\n")


@pipelines_app.command("validate")
def pipelines_validate(file: Annotated[str, typer.Argument(help="Pipeline file (or built-in name).")]) -> None:
    """Check a pipeline file without loading any model."""
    from cirkit.pipelines import load_pipeline

    pipeline = load_pipeline(file)
    steps = " -> ".join(f"{s.name} ({s.kind})" for s in pipeline.steps)
    stdout.print(f"ok: {pipeline.source}: pipeline '{pipeline.name}': {steps}")


# ---------------------------------------------------------------- prompts


@prompts_app.command("list")
def prompts_list() -> None:
    """The built-in prompt templates."""
    from cirkit.prompts import builtin_names, load_prompt

    table = Table("name", "variables", "description")
    for name in builtin_names():
        p = load_prompt(name)
        table.add_row(name, ", ".join(p.variables), escape(p.spec.description))
    stdout.print(table)


@prompts_app.command("show")
def prompts_show(name: Annotated[str, typer.Argument(help="Built-in template name or file.")]) -> None:
    """Print a prompt template."""
    from cirkit.prompts import load_prompt

    p = load_prompt(name)
    stdout.print(f"# {p.source}  variables: {', '.join(p.variables) or 'none'}")
    if p.spec.output.after:
        stdout.print(f"# answer read after: {p.spec.output.after!r}")
    if p.spec.system:
        stdout.print(Panel(escape(p.spec.system), title="system"))
    stdout.print(Panel(escape(p.spec.template), title="user"))


# ---------------------------------------------------------------- runs


@runs_app.command("list")
def runs_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1)] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The most recent runs."""
    store = _store(ctx)
    rows = store.list(limit)
    if as_json:
        stdout.print_json(data=rows)
        return
    table = Table("run id", "created (UTC)", "status", "pipeline", "image", "modification")
    for r in rows:
        table.add_row(
            r["id"], r["created_at"][:19], r["status"], r["pipeline"], escape(Path(r["image"] or "").name), escape(r["modification"] or "")
        )
    stdout.print(table)


@runs_app.command("show")
def runs_show(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="Run id (a unique prefix is enough).")],
    as_json: Annotated[bool, typer.Option("--json", help="Everything, as JSON (vectors included).")] = False,
    k: Annotated[int, typer.Option("-k", min=1, help="How many results to show.")] = 10,
) -> None:
    """Every intermediate of a run: rendered prompts, raw answers, parsed outputs, models, timings."""
    run = _store(ctx).get(run_id)
    if as_json:
        stdout.print_json(data=run.to_dict(with_pipeline_text=True))
        return
    stdout.print(
        Panel(
            f"status: {run.status}   pipeline: {run.pipeline_name} ({run.pipeline_source})\n"
            f"created: {run.created_at}   index: {run.index_dir}\n"
            f"image: {escape(run.inputs['image'])}\nmodification: {escape(run.inputs['modification'])}"
            + (f"\n[red]error: {escape(run.error)}[/red]" if run.error else ""),
            title=f"run {run.id}",
        )
    )
    for step in run.steps:
        lines = []
        if step.model:
            lines.append("model: " + ", ".join(f"{k}={v}" for k, v in step.model.items() if v is not None))
        lines.append("params: " + ", ".join(f"{k}={v}" for k, v in step.params.items()))
        for template in step.templates:
            lines.append(f"template: {template['name']} ({template['source']})")
        for i, prompt in enumerate(step.prompts):
            lines.append(f"[bold]sent[/bold]{f' #{i + 1}' if len(step.prompts) > 1 else ''}:\n{escape(_render_prompt(prompt))}")
        for i, raw in enumerate(step.raw):
            lines.append(f"[bold]raw answer[/bold]{f' #{i + 1}' if len(step.raw) > 1 else ''}:\n{escape(str(raw))}")
        for key, value in step.outputs.items():
            if key == "sources":
                continue
            if key == "descriptions" and len(value) > 1:
                sources = step.outputs.get("sources") or [{}] * len(value)
                for i, (text, source) in enumerate(zip(value, sources)):
                    origin = f" ({source['template']}, sample {source['sample']})" if source else ""
                    lines.append(f"[bold]description {i + 1}[/bold]{escape(origin)}: {escape(text)}")
                continue
            if key == "descriptions":
                continue
            lines.append(f"[bold]{key}[/bold]: {escape(_summarize(value))}")
        for note in step.notes:
            lines.append(f"[yellow]note: {escape(note)}[/yellow]")
        if step.error:
            lines.append(f"[red]error: {escape(step.error)}[/red]")
        title = f"{step.position + 1}. {step.name} ({step.kind}) {step.status} {step.seconds:.2f}s"
        stdout.print(Panel("\n".join(lines), title=title, title_align="left"))
    if run.results:
        _print_results(run.results[:k])


def _render_prompt(prompt: Any) -> str:
    if isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m for m in prompt):
        return "\n".join(f"[{m['role']}] {m['content']}" for m in prompt)
    return str(prompt)


def _summarize(value: Any) -> str:
    if _is_vectors(value):
        return f"{len(value)} vector(s) of {len(value[0])} floats"
    if isinstance(value, list) and value and isinstance(value[0], dict) and "rank" in value[0]:
        top = value[0]
        return f"{len(value)} ranked images (top: {top['path']} {top['score']:.4f})"
    return str(value)


def _is_vectors(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], list) and bool(value[0]) and isinstance(value[0][0], float)


def _compact(run: dict[str, Any]) -> dict[str, Any]:
    """The run for --json output: vectors replaced by a summary (`runs show --json` has them all)."""
    for step in run["steps"]:
        step["outputs"] = {key: (_summarize(v) if _is_vectors(v) else v) for key, v in step["outputs"].items()}
    return run


# ---------------------------------------------------------------- entry point


def main() -> None:
    """Console entry point: user errors as one line on stderr and a non-zero exit, never a traceback."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    _quiet_libraries()
    try:
        code = app(standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C into an exit code when not standalone
            raise KeyboardInterrupt
    except CirkitError as exc:
        stderr.print(f"[red]error:[/red] {escape(one_line(exc))}")
        sys.exit(1)
    except KeyboardInterrupt:
        stderr.print("interrupted: re-run the same command to continue")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        stderr.print("aborted")
        sys.exit(1)
    except Exception as exc:
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # usage errors from typer's click
            exc.show()
            sys.exit(exc.exit_code)
        if os.environ.get("CIRKIT_DEBUG"):
            raise
        stderr.print(f"[red]internal error:[/red] {type(exc).__name__}: {escape(one_line(exc))} (set CIRKIT_DEBUG=1 for a traceback)")
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


def _quiet_libraries() -> None:
    """Libraries log warnings and retries; cirkit reports what matters as one line itself."""
    import logging
    import warnings

    if os.environ.get("CIRKIT_DEBUG"):
        return
    logging.disable(logging.ERROR)
    warnings.filterwarnings("ignore")
