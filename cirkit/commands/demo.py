"""`cirkit demo`: the whole pipeline offline, in a small procedural world with small trained models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def demo(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Option("--dir", help="Where the toy gallery, index and runs go.")] = Path("cirkit-demo"),
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Evaluate only the first N toy queries (default: all 250).")] = None,
) -> None:
    """Build a toy gallery, index it, run composed queries and report Recall@1/5: offline, about a minute on a CPU.

    Runs go to DIR/runs, or to the run store of --data-dir / $CIRKIT_DATA_DIR when one is given."""
    from cirkit.demo import run_demo

    run_demo(directory, progress=True, data_dir=ctx.obj["data_dir"], eval_limit=limit)
