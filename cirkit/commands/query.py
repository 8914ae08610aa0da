"""`cirkit query`: one query, or a file of queries run as one batch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from cirkit.commands.common import ModelOverrides, NoCache, PipelineRef, PromptSwaps, compact, parse_model_overrides, parse_prompt_swaps, print_results
from cirkit.console import stdout
from cirkit.errors import CirkitError


def query(
    ctx: typer.Context,
    index: Annotated[Path, typer.Option("--index", "-i", help="Gallery index directory (from `cirkit index`).")],
    image: Annotated[Optional[Path], typer.Option("--image", help="The reference image.")] = None,
    text: Annotated[Optional[str], typer.Option("--text", "-t", help="How the target differs from the reference image.")] = None,
    queries: Annotated[
        Optional[Path], typer.Option("--queries", help='JSONL file of queries, one {"image", "text", "id"} per line, run as one batch.')
    ] = None,
    pipeline: PipelineRef = "cirevl",
    prompt: PromptSwaps = None,
    k: Annotated[int, typer.Option("-k", min=1, help="How many results to show.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON: results, run id, intermediates (one line per query with --queries).")] = False,
    no_cache: NoCache = False,
    local: Annotated[bool, typer.Option("--local", help="Run here, even when a `cirkit serve` is running.")] = False,
    model: ModelOverrides = None,
    exclude_reference: Annotated[
        Optional[bool],
        typer.Option("--exclude-reference/--include-reference",
                     help="Leave the reference image out of the results where the gallery holds it (default: when it lies inside the indexed folder)."),
    ] = None,
    server: Annotated[
        Optional[str],
        typer.Option("--server", metavar="URL", help="Use the `cirkit serve` at this address (default: $CIRKIT_SERVER, else http://127.0.0.1:$CIRKIT_PORT when one answers there)."),
    ] = None,
) -> None:
    """Find gallery images that show the reference image changed as the text says.

    When a `cirkit serve` answers (at --server, $CIRKIT_SERVER, or 127.0.0.1:$CIRKIT_PORT), the query runs
    there, with its models already loaded; the result and the stored run are the same.
    """
    if queries is not None and (image is not None or text is not None):
        raise CirkitError("give either --queries FILE or --image and --text, not both")
    if queries is None and (image is None or text is None):
        raise CirkitError("give --image and --text (or --queries FILE)")
    if local and server:
        raise CirkitError("give either --local or --server, not both")
    swaps = parse_prompt_swaps(prompt or [])
    overrides = parse_model_overrides(model)
    url = None
    if not local:
        from cirkit.serve.client import find_server

        url = find_server(server)
    if url is not None:
        runs = _query_server(
            url, ctx.obj["data_dir"], queries=queries, image=image, text=text, index=index, pipeline=pipeline,
            prompts=swaps, models=overrides, k=k, use_cache=not no_cache, progress=not as_json,
            exclude_reference=exclude_reference,
        )
    else:
        from cirkit.api import load_queries, query_many
        from cirkit.pipelines.runner import Query

        batch = load_queries(queries) if queries is not None else [Query(image, text)]
        runs = query_many(
            batch,
            index,
            pipeline=pipeline,
            prompts=swaps,
            k=k,
            data_dir=ctx.obj["data_dir"],
            progress=not as_json,
            raise_on_failure=queries is None,
            use_cache=not no_cache,
            model_overrides=overrides,
            exclude_reference=exclude_reference,
        )
    _print_runs(runs, single=queries is None, as_json=as_json)


def _query_server(url: str, data_dir: Optional[Path], *, queries, image, text, index, pipeline, prompts, models, k, use_cache, progress,
                  exclude_reference) -> list:
    """The same query through a running `cirkit serve`: every path made absolute from here, the run
    store this command would have used; the server's messages name paths as they were typed."""
    from contextlib import nullcontext

    from cirkit.console import stderr
    from cirkit.serve.client import remote_query
    from cirkit.serve.protocol import build_request, default_data_dir

    request, names = build_request(
        data_dir=data_dir if data_dir is not None else default_data_dir(), index=index, pipeline=pipeline,
        prompts=prompts, models=models, k=k, use_cache=use_cache, raise_on_failure=queries is None,
        queries_file=queries, image=image, text=text, exclude_reference=exclude_reference,
    )
    with stderr.status(f"query: on the cirkit server at {url}", spinner="dots") if progress else nullcontext():
        return remote_query(url, request, names)


def _print_json(data: dict) -> None:
    """As rich prints JSON (indent 2, characters as they are), coloured only on a terminal: rich's
    highlighting costs a warm query's client more than all its other work."""
    if stdout.is_terminal:
        stdout.print_json(data=data)
    else:
        print(json.dumps(data, indent=2, ensure_ascii=False))


def _print_runs(runs: list, *, single: bool, as_json: bool) -> None:
    if single:
        run = runs[0]
        if as_json:
            _print_json(compact(run))
            return
        print_results(run["results"])
        for step in run["steps"]:
            outputs = step["outputs"]
            if "caption" in outputs:
                stdout.print(f"[bold]caption[/bold] ({step['name']}): {escape(outputs['caption'])}")
            for i, description in enumerate(outputs.get("descriptions", [])):
                label = f" {i + 1}" if len(outputs["descriptions"]) > 1 else ""
                stdout.print(f"[bold]description{label}[/bold] ({step['name']}): {escape(description)}")
        _note_excluded(runs)
        stdout.print(f"run id: {run['id']}  (inspect with: cirkit runs show {run['id']})")
        return
    failed = [run for run in runs if run["status"] != "ok"]
    if as_json:
        for run in runs:
            print(json.dumps(compact(run), ensure_ascii=False))
    else:
        table = Table("query", "run id", "status", "top result", "score", title=f"{len(runs)} queries")
        for run in runs:
            top = run["results"][0] if run["results"] else None
            table.add_row(
                escape(run["inputs"].get("query_id", "")), run["id"], run["status"],
                escape(top["path"]) if top else escape(run["error"] or ""), f"{top['score']:.4f}" if top else "",
            )
        stdout.print(table)
        _note_excluded(runs)
    if failed:
        raise CirkitError(f"{len(failed)} of {len(runs)} queries failed (see `cirkit runs show RUN_ID`): {failed[0]['error']}")


def _note_excluded(runs: list) -> None:
    """Say when a reference image was left out of its results, and how to keep it."""
    excluded = [run for run in runs if run["inputs"].get("excluded")]
    if len(excluded) == 1 and len(runs) == 1:
        paths = ", ".join(excluded[0]["inputs"]["excluded"])
        stdout.print(f"note: the reference image is in the gallery ({escape(paths)}): left out of the results (--include-reference keeps it)")
    elif excluded:
        stdout.print(f"note: {len(excluded)} of {len(runs)} reference images are in the gallery: left out of their results (--include-reference keeps them)")
