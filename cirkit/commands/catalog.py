"""`cirkit pipelines` and `cirkit prompts`: the built-in pipelines and templates, and file validation."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from cirkit.console import stdout

pipelines_app = typer.Typer(help="List, show and validate pipeline files.", no_args_is_help=True)
prompts_app = typer.Typer(help="List and show prompt templates.", no_args_is_help=True)


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
