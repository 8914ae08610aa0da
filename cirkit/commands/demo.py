"""`cirkit demo`: the whole pipeline offline, in a small procedural world with small trained models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def demo(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Option("--dir", help="Where the toy gallery, index and runs go.")] = Path("cirkit-demo"),
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Evaluate only the first N toy queries (default: all).")] = None,
    hard: Annotated[bool, typer.Option("--hard", help="The hard toy world: every toy-hard pipeline on its held-out test split, one table.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --hard: print {\"pipelines\": {NAME: {\"R@1\", \"R@5\", ...}}} only.")] = False,
) -> None:
    """Build a toy gallery, index it, run composed queries and report Recall@1/5: offline, about a minute on a CPU.

    With --hard: the hard toy world, where captions leave things out, and a table of every toy-hard
    pipeline (text only, fusion, sampled captions, judge, all together): a few minutes on a CPU.

    Runs go to DIR/runs, or to the run store of --data-dir / $CIRKIT_DATA_DIR when one is given."""
    from cirkit.errors import CirkitError

    if as_json and not hard:
        raise CirkitError("--json goes with --hard (the table of the toy-hard pipelines)")
    if hard:
        from cirkit.demo import run_hard_demo

        result = run_hard_demo(directory, progress=not as_json, data_dir=ctx.obj["data_dir"], eval_limit=limit, quiet=as_json)
        if as_json:
            print(json.dumps({"pipelines": result["pipelines"], "queries": result["queries"], "seconds": round(result["seconds"], 1)}, indent=1))
        return
    from cirkit.demo import run_demo

    run_demo(directory, progress=True, data_dir=ctx.obj["data_dir"], eval_limit=limit)
