"""`cirkit demo`: the whole pipeline offline, in a small procedural world with small trained models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Where the toy gallery, index and runs go.")] = Path("cirkit-demo"),
) -> None:
    """Build a toy gallery, index it, run composed queries and report Recall@1/5: offline, about a minute on a CPU."""
    from cirkit.demo import run_demo

    run_demo(directory, progress=True)
