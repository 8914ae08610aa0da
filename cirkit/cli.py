"""The `cirkit` command line: each command parses its flags, calls one library function, prints with rich.

The commands live in cirkit/commands/, one module per command group.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.markup import escape

from cirkit.commands.catalog import pipelines_app, prompts_app
from cirkit.commands.common import DataDir
from cirkit.commands.components import components_app
from cirkit.commands.demo import demo
from cirkit.commands.eval import SUBCOMMANDS as EVAL_SUBCOMMANDS
from cirkit.commands.eval import eval_app
from cirkit.commands.index import index
from cirkit.commands.query import query
from cirkit.commands.report import report
from cirkit.commands.runs import runs_app
from cirkit.commands.serve import serve
from cirkit.console import stderr
from cirkit.errors import CirkitError, one_line

app = typer.Typer(
    help="Training-free composed image retrieval: caption, rewrite, embed, search; every intermediate kept.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.command()(demo)
app.command()(index)
app.command()(query)
app.command()(report)
app.command()(serve)
app.add_typer(components_app, name="components")
app.add_typer(pipelines_app, name="pipelines")
app.add_typer(prompts_app, name="prompts")
app.add_typer(runs_app, name="runs")
app.add_typer(eval_app, name="eval")


@app.callback()
def _root(ctx: typer.Context, data_dir: DataDir = None) -> None:
    ctx.obj = {"data_dir": data_dir}
    if data_dir is not None:  # the run store and imported prompt templates both live there
        os.environ["CIRKIT_DATA_DIR"] = str(Path(data_dir).expanduser().resolve())


def _eval_shorthand(args: list[str]) -> list[str]:
    """`cirkit eval BENCH ...` means `cirkit eval run BENCH ...`."""
    i = 0
    while i < len(args) and args[i].startswith("-"):  # global options before the command
        i += 2 if args[i] == "--data-dir" else 1
    if i + 1 < len(args) and args[i] == "eval" and args[i + 1] not in EVAL_SUBCOMMANDS:
        return [*args[: i + 1], "run", *args[i + 1 :]]
    return args


def main() -> None:
    """Console entry point: user errors as one line on stderr and a non-zero exit, never a traceback."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    _quiet_libraries()
    args = _eval_shorthand(sys.argv[1:])
    data_dir = os.environ.get("CIRKIT_DATA_DIR")
    try:
        _run(args)
    finally:  # --data-dir sets it for this command only (the same process may run another)
        if data_dir is None:
            os.environ.pop("CIRKIT_DATA_DIR", None)
        else:
            os.environ["CIRKIT_DATA_DIR"] = data_dir


def _run(args: list[str]) -> None:
    try:
        code = app(args, standalone_mode=False)
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
