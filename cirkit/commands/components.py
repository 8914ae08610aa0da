"""`cirkit components`: the step kinds a pipeline file can use, with their typed inputs, outputs and params."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cirkit.console import stdout

components_app = typer.Typer(help="The step kinds a pipeline can use.", no_args_is_help=True)


@components_app.command("list")
def components_list(as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False) -> None:
    """Each step kind with its inputs and outputs (with value types) and its params (defaults, ranges)."""
    from cirkit.components.describe import describe_all, param_cell
    from cirkit.components.values import VALUE_TYPES

    kinds = describe_all()
    if as_json:
        print(json.dumps({"value_types": VALUE_TYPES, "components": kinds}, indent=1))
        return
    table = Table("kind", "inputs", "outputs", "params", show_lines=True)
    for c in kinds:
        inputs = "\n".join(
            f"{i['name']}: {i['type']}" + (f" <- {i['default']}" if i["default"] else " (optional)" if i["optional"] else " (wire it)")
            for i in c["inputs"]
        )
        outputs = "\n".join(f"{o['name']}: {o['type']}" for o in c["outputs"])
        params = "\n".join(param_cell(p) for p in c["params"])
        model = f"\nmodel: {' or '.join(c['model_types'])}" if c["model_types"] else ""
        table.add_row(escape(c["kind"] + model), escape(inputs), escape(outputs), escape(params))
    stdout.print(table)
    stdout.print("value types: " + ", ".join(VALUE_TYPES))
