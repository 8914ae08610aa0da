"""`cirkit report`: runs as a self-contained HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cirkit.commands.common import open_store
from cirkit.console import stdout


def report(
    ctx: typer.Context,
    run_ids: Annotated[list[str], typer.Argument(help="Run ids (unique prefixes are enough).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write.")] = Path("report.html"),
    k: Annotated[int, typer.Option("-k", min=1, help="Result images per run.")] = 10,
) -> None:
    """Write runs as an HTML page: reference, modification, every intermediate, top-k images, target marked."""
    from cirkit.report import write_report

    store = open_store(ctx)
    runs = [store.get(run_id) for run_id in run_ids]
    path = write_report(runs, out, k=k)
    stdout.print(f"wrote {path} ({len(runs)} run{'s' if len(runs) != 1 else ''})")
