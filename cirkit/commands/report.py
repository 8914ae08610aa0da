"""`cirkit report`: runs, an experiment or two experiments compared, as a self-contained HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cirkit.commands.common import open_store
from cirkit.console import stdout
from cirkit.errors import CirkitError


def report(
    ctx: typer.Context,
    run_ids: Annotated[Optional[list[str]], typer.Argument(help="Run ids (unique prefixes are enough).")] = None,
    experiment: Annotated[
        Optional[str], typer.Option("--experiment", "-e", metavar="ID", help="An experiment's failures (target not in the top k), or all its queries with --all.")
    ] = None,
    compare: Annotated[
        Optional[tuple[str, str]], typer.Option("--compare", metavar="A B", help="Two experiments: the queries that got better or worse, side by side.")
    ] = None,
    all_queries: Annotated[bool, typer.Option("--all", help="With --experiment: every query, not only the failures.")] = False,
    limit: Annotated[
        Optional[int], typer.Option("--limit", min=1, help="With --experiment: at most this many queries (default: all, paged); with --compare: of each kind (default 100).")
    ] = None,
    page_size: Annotated[
        Optional[int],
        typer.Option("--page-size", min=1, help="With --experiment: queries per page (default 100); more make OUT-2.html, OUT-3.html, ... linked from each page."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write.")] = Path("report.html"),
    k: Annotated[int, typer.Option("-k", min=1, help="Result images per run (and, for --experiment, a failure: target not in the top k).")] = 10,
) -> None:
    """Write an HTML page: reference, modification, every intermediate, top-k images, target marked."""
    from cirkit.report import check_out, experiment_page_count, page_paths, render_comparison, render_experiment_pages, write_html, write_report

    given = [name for name, value in (("run ids", run_ids), ("--experiment", experiment), ("--compare", compare)) if value]
    if len(given) != 1:
        raise CirkitError("give run ids, --experiment ID or --compare A B" + (f", not {' and '.join(given)}" if given else ""))
    if all_queries and not experiment:
        raise CirkitError("--all goes with --experiment")
    if page_size is not None and not experiment:
        raise CirkitError("--page-size goes with --experiment")
    page_size = page_size or 100
    check_out(out)
    store = open_store(ctx)
    if experiment:
        count = experiment_page_count(store, experiment, all_queries=all_queries, limit=limit, page_size=page_size, k=k)
        paths = page_paths(out, count)
        pages = render_experiment_pages(store, experiment, [p.name for p in paths], all_queries=all_queries, limit=limit,
                                        page_size=page_size, k=k)
        for page, path in zip(pages, paths):
            write_html(page, path)
        pages = f"{paths[0]} ... {paths[-1].name} ({len(paths)} pages, " if len(paths) > 1 else f"{paths[0]} ("
        stdout.print(f"wrote {pages}experiment {store.experiment(experiment)['id']})")
    elif compare:
        path = write_html(render_comparison(store, *compare, limit=limit or 100, k=k), out)
        stdout.print(f"wrote {path} ({compare[0]} vs {compare[1]})")
    else:
        runs = [store.get(run_id) for run_id in run_ids]
        path = write_report(runs, out, k=k)
        stdout.print(f"wrote {path} ({len(runs)} run{'s' if len(runs) != 1 else ''})")
