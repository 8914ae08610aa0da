"""Each component's contract as data, read from the code itself: inputs, outputs, params.

`cirkit components list` prints it, and the README's step table is `markdown_table()` (a test
keeps the two equal).
"""

from __future__ import annotations

from typing import Any

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from cirkit.components import COMPONENTS
from cirkit.components.base import Component


def describe(component: type[Component]) -> dict[str, Any]:
    return {
        "kind": component.kind,
        "description": component.description,
        "model_types": list(component.model_types),
        "prompt_variables": None if component.prompt_variables is None else list(component.prompt_variables),
        "inputs": [
            {"name": name, "type": port.type, "default": port.default, "optional": port.optional}
            for name, port in component.inputs.items()
        ],
        "outputs": [{"name": name, "type": value_type} for name, value_type in component.outputs.items()],
        "params": describe_params(component.Params),
    }


def describe_all() -> list[dict[str, Any]]:
    return [describe(c) for c in COMPONENTS.values()]


def describe_params(params: type[BaseModel]) -> list[dict[str, Any]]:
    out = []
    for name, field in params.model_fields.items():
        default = field.default if field.default is not PydanticUndefined else None
        if isinstance(default, BaseModel):
            default = default.model_dump()
        entry: dict[str, Any] = {"name": name, "type": _type_name(field.annotation), "default": default}
        for bound in field.metadata:
            for cls, key in ((Ge, "ge"), (Gt, "gt"), (Le, "le"), (Lt, "lt")):
                if isinstance(bound, cls):
                    entry[key] = getattr(bound, key)
        out.append(entry)
    return out


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if not getattr(annotation, "__args__", None) else None
    text = text or str(annotation).replace("typing.", "").replace("cirkit.components.search.", "")
    return text.replace("NoneType", "None").replace("Literal", "one of ")


def param_cell(p: dict[str, Any]) -> str:
    low, high = p.get("ge", p.get("gt")), p.get("le", p.get("lt"))
    text = p["name"] if p["default"] is None else f"{p['name']}={p['default']}"
    if low is not None and high is not None:
        text += f" ({low}-{high})"
    elif p["type"].startswith("one of "):
        text += " (" + p["type"].removeprefix("one of ").strip("[]").replace("'", "").replace(", ", " / ") + ")"
    return text


def markdown_table() -> str:
    lines = ["| kind | inputs: type (default wiring) | outputs: type | params (default, range) |", "|---|---|---|---|"]
    for c in describe_all():
        inputs = ", ".join(
            f"{i['name']}: {i['type']} ({i['default'] or ('optional' if i['optional'] else 'wire it')})" for i in c["inputs"]
        )
        outputs = ", ".join(f"{o['name']}: {o['type']}" for o in c["outputs"])
        params = "; ".join(param_cell(p) for p in c["params"])
        lines.append(f"| {c['kind']} | {inputs} | {outputs} | {params} |")
    return "\n".join(lines) + "\n"
