"""The contracts the layers share: typed wiring, the component catalogue, and imports that only look down."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from cirkit.components import COMPONENTS
from cirkit.components.describe import markdown_table
from cirkit.components.values import VALUE_TYPES

PACKAGE = Path(__file__).resolve().parents[1] / "cirkit"
README = Path(__file__).resolve().parents[1] / "README.md"

HEAD = "name: t\nmodels:\n  clip: {type: clip, name: ViT-B-32, pretrained: openai}\nsteps:\n"


def _write(tmp_path: Path, steps: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(HEAD + steps)
    return path


@pytest.mark.parametrize(
    "steps, where, message",
    [
        ("  - {name: search, kind: search, inputs: {query_vectors: image}}\n",
         "step 'search': field 'inputs.query_vectors'", "'image' is of type image, the input takes vectors"),
        ("  - {name: embed_image, kind: embed_image, model: clip}\n"
         "  - {name: search, kind: search, inputs: {query_vectors: image_vectors}}\n"
         "  - {name: embed, kind: embed, model: clip, inputs: {texts: results}}\n",
         "step 'embed': field 'inputs.texts'", "'results' is of type results, the input takes texts"),
        ("  - {name: embed, kind: embed, model: clip, inputs: {texts: modification}}\n"
         "  - {name: search, kind: search, inputs: {query_vectors: embed.query_vectors, reference_vectors: modification}}\n",
         "step 'search': field 'inputs.reference_vectors'", "'modification' is of type text"),
    ],
)
def test_wires_are_checked_by_type(cli, tmp_path, steps, where, message):
    path = _write(tmp_path, steps)
    res = cli("pipelines", "validate", path)
    assert res.exit_code == 1
    line = res.stderr.strip()
    assert "\n" not in line and str(path) in line and where in line and message in line


def test_a_text_may_feed_an_input_that_takes_texts(cli, tmp_path):
    path = _write(tmp_path, "  - {name: embed, kind: embed, model: clip, inputs: {texts: modification}}\n"
                            "  - {name: search, kind: search}\n")
    res = cli("pipelines", "validate", path)
    assert res.exit_code == 0, res.stderr
    assert "texts: text <- query.modification" in res.stdout
    assert "query_vectors: vectors <- embed.query_vectors" in res.stdout


def test_validate_prints_the_resolved_wiring(cli):
    res = cli("pipelines", "validate", "cirevl-pdv")
    assert res.exit_code == 0, res.stderr
    for line in ("texts: texts <- rewrite.descriptions", "caption_vectors: vectors <- embed_caption.query_vectors",
                 "query_vectors: vectors <- pdv.query_vectors", "out  results: results"):
        assert line in res.stdout


def test_components_list_json_is_the_code(cli):
    res = cli("components", "list", "--json")
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["value_types"] == VALUE_TYPES
    kinds = {c["kind"]: c for c in data["components"]}
    assert set(kinds) == set(COMPONENTS)
    for kind, component in COMPONENTS.items():
        assert {i["name"]: i["type"] for i in kinds[kind]["inputs"]} == {n: p.type for n, p in component.inputs.items()}
        assert {o["name"]: o["type"] for o in kinds[kind]["outputs"]} == component.outputs
        assert [p["name"] for p in kinds[kind]["params"]] == list(component.Params.model_fields)
    k = next(p for p in kinds["search"]["params"] if p["name"] == "k")
    assert (k["default"], k["ge"], k["le"]) == (50, 1, 100_000)
    assert kinds["pdv"]["inputs"][1] == {"name": "caption_vectors", "type": "vectors", "default": None, "optional": False}
    table = cli("components", "list")
    assert table.exit_code == 0 and "rerank" in table.stdout and "value types: image, text" in table.stdout


def test_readme_step_table_is_the_catalogue():
    assert markdown_table() in README.read_text(encoding="utf-8"), "the README's step table is stale: python scripts/readme_step_table.py"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Every cirkit module this one imports, anywhere in it (function bodies too), with the packages
    whose __init__ an import runs (except the importer's own packages, already being imported)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            for i in range(2, len(parts) + 1):
                module = ".".join(parts[:i])
                if module in mods and module != name and not name.startswith(module + "."):
                    found.add(module)
    return found


def test_no_import_cycles():
    mods = _modules()
    graph = {name: _imports(name, path, mods) for name, path in mods.items()}
    cycles = []

    def visit(node, trail, done):
        if node in trail:
            cycles.append(trail[trail.index(node):] + [node])
            return
        if node in done:
            return
        for dep in sorted(graph[node]):
            visit(dep, trail + [node], done)
        done.add(node)

    done: set[str] = set()
    for name in sorted(graph):
        visit(name, [], done)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_layers_only_look_down():
    mods = _modules()
    above = {
        "cirkit.components": ("cirkit.pipelines", "cirkit.store", "cirkit.serve", "cirkit.commands", "cirkit.api", "cirkit.cli"),
        "cirkit.engines": ("cirkit.components", "cirkit.pipelines", "cirkit.store", "cirkit.serve", "cirkit.commands", "cirkit.api"),
        "cirkit.gallery": ("cirkit.components", "cirkit.pipelines", "cirkit.serve", "cirkit.commands", "cirkit.api"),
        "cirkit.pipelines": ("cirkit.serve", "cirkit.commands", "cirkit.api", "cirkit.cli"),
    }
    wrong = []
    for name, path in mods.items():
        for layer, forbidden in above.items():
            if name == layer or name.startswith(layer + "."):
                wrong += [f"{name} imports {dep}" for dep in _imports(name, path, mods) if dep.startswith(forbidden)]
    assert not wrong, "; ".join(sorted(wrong))
