"""`cirkit pipelines` and `cirkit prompts`: the built-in pipelines and templates, and file validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from cirkit.console import stdout

pipelines_app = typer.Typer(help="List, show and validate pipeline files.", no_args_is_help=True)
prompts_app = typer.Typer(help="List, show and import prompt templates.", no_args_is_help=True)


@pipelines_app.command("list")
def pipelines_list() -> None:
    """The built-in pipelines."""
    from cirkit.pipelines import builtin_names, load_pipeline

    from cirkit.errors import CirkitError, one_line

    table = Table("name", "description")
    for name in builtin_names():
        try:
            table.add_row(name, escape(load_pipeline(name).spec.description))
        except CirkitError as exc:  # e.g. it needs templates the user imports first
            table.add_row(name, escape(f"(not usable yet: {one_line(exc).split(': ', 3)[-1]})"))
    stdout.print(table)


@pipelines_app.command("show")
def pipelines_show(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Built-in pipeline name or file.")]) -> None:
    """Print a pipeline file (validated)."""
    from cirkit.pipelines import load_pipeline

    _use_data_dir(ctx)
    pipeline = load_pipeline(name)
    stdout.print(f"# {pipeline.source}")
    stdout.print(escape(pipeline.text), end="" if pipeline.text.endswith("\n") else "\n")


@pipelines_app.command("validate")
def pipelines_validate(ctx: typer.Context, file: Annotated[str, typer.Argument(help="Pipeline file (or built-in name).")]) -> None:
    """Check a pipeline file without loading any model."""
    from cirkit.pipelines import load_pipeline

    _use_data_dir(ctx)
    pipeline = load_pipeline(file)
    steps = " -> ".join(f"{s.name} ({s.kind})" for s in pipeline.steps)
    stdout.print(f"ok: {pipeline.source}: pipeline '{pipeline.name}': {steps}")
    for step in pipeline.wiring():
        model = f" [{step['model']}: {step['model_id']}]" if step["model"] else ""
        source = f" given by {step['given']}" if step["given"] else ""
        stdout.print(escape(f"  {step['step']} ({step['kind']}){model}{source}"))
        for name, wire in step["inputs"].items():
            stdout.print(escape(f"    in   {name}: {wire['type']} <- {wire['from']}"))
        for name, value_type in step["outputs"].items():
            stdout.print(escape(f"    out  {name}: {value_type}"))


def _use_data_dir(ctx: typer.Context):
    from cirkit.prompts import use_data_dir

    data_dir = (ctx.obj or {}).get("data_dir")
    use_data_dir(data_dir)
    return data_dir


@prompts_app.command("list")
def prompts_list(ctx: typer.Context) -> None:
    """The built-in prompt templates, and those imported with `cirkit prompts import`."""
    from cirkit.errors import CirkitError
    from cirkit.prompts import builtin_names, imported_names, load_prompt

    data_dir = _use_data_dir(ctx)
    table = Table("name", "variables", "description")
    for name in builtin_names():
        p = load_prompt(name)
        table.add_row(name, ", ".join(p.variables), escape(p.spec.description))
    for name in imported_names(data_dir):
        try:
            p = load_prompt(name, data_dir=data_dir)
        except CirkitError as exc:
            table.add_row(name, "", escape(f"(imported; unreadable: {exc})"))
            continue
        origin = p.spec.imported
        what = f"imported from {origin.file} ({origin.constant})" if origin else f"imported ({p.source})"
        table.add_row(name, ", ".join(p.variables), escape(what))
    stdout.print(table)


@prompts_app.command("show")
def prompts_show(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="Built-in or imported template name, or file.")]
) -> None:
    """Print a prompt template."""
    from cirkit.prompts import load_prompt

    data_dir = _use_data_dir(ctx)
    p = load_prompt(name, data_dir=data_dir)
    stdout.print(f"# {escape(p.source)}  variables: {', '.join(p.variables) or 'none'}")
    out = p.spec.output
    if out.after:
        stdout.print(escape(f"# answer read after: {out.after!r}"))
    if out.first_line:
        until = f", up to the next {out.until!r}" if out.until else ""
        stdout.print(escape(f"# answer: the first line starting with {out.first_line!r}, the text after it{until}"))
    if p.spec.imported:
        stdout.print(escape(f"# imported from {p.spec.imported.file} ({p.spec.imported.constant}, sha256 {p.spec.imported.sha256[:12]})"))
    if p.spec.suggested_params:
        stdout.print(escape(f"# written for params: {json.dumps(p.spec.suggested_params)}"))
    if p.spec.system:
        stdout.print(Panel(escape(p.spec.system), title="system"))
    stdout.print(Panel(escape(p.spec.template), title="user"))


@prompts_app.command("import")
def prompts_import(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="A method's prompt file: .py (string constants, read without running it), .txt, .json or .yaml.")],
    name: Annotated[str, typer.Option("--as", help="Name of the import: its templates are NAME/<constant>.")],
    force: Annotated[bool, typer.Option("--force", help="Replace an earlier import of the same name.")] = False,
) -> None:
    """Store each prompt string of FILE as template NAME/<constant> in the user's prompt directory."""
    from cirkit.prompts.importer import import_prompts

    result = import_prompts(file, name, force=force, data_dir=_use_data_dir(ctx))
    if result.recognised == "cirevl":
        stdout.print("recognised CIReVL's prompts: modifier templates use its message layout and answer rule")
    table = Table("template", "layout", title=f"imported into {escape(str(result.directory))}")
    for template, layout in result.templates:
        table.add_row(escape(template), layout)
    stdout.print(table)
    for note in result.notes:
        stdout.print(escape(f"note: {note}"))
