"""`cirkit prompts import`: a published method's prompt strings as cirkit templates.

The file is read, never run:
  .py           module-level `NAME = "..."` string constants, read with `ast` (implicitly concatenated,
                parenthesised and `+`-joined literals included; f-strings and other expressions skipped)
  .txt          the whole file, one template named after the file stem
  .json, .yaml  a mapping {name: string}

Each string becomes DATA_DIR/prompts/AS/<name>.yaml, used anywhere a template name is as `AS/<name>`.

A string's braces are literal text, except in a string whose every brace is a `{name}` field: those
fields become the template's variables. A Python file that defines CIReVL's constants (`CIREVL_NAMES`)
is laid out as that method's code sends it: each `*_modifier_prompt*` string becomes one user message,
the string, "\\n", "Image Content: {caption}", "\\n", "Instruction: {modification}", with CIReVL's
answer rule (the first line starting with "Edited Description:", up to the next colon) and decoding
(temperature 0, 700 tokens, stop at a blank line or <|endoftext|>, the modification alone when the answer
has no description); `blip_prompt` becomes a caption template.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import string
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cirkit.errors import CirkitError, one_line
from cirkit.prompts import SIMPLE_NAME, builtin_names, load_prompt, user_prompt_dir

CIREVL_NAMES = frozenset(
    {
        "short_modifier_prompt",
        "short_focus_object_modifier_prompt",
        "simple_modifier_prompt",
        "contextual_modifier_prompt",
        "structural_modifier_prompt",
        "blip_prompt",
        "structural_modifier_prompt_fashion",
    }
)
CIREVL_MODIFIER = re.compile(r".*_modifier_prompt.*")
CIREVL_MARKER = "Edited Description:"
CIREVL_PARAMS = {
    "temperature": 0,
    "max_new_tokens": 700,
    "stop": ["\n\n", "<|endoftext|>"],
    "fallback": "modification",
}
SUFFIXES = (".py", ".txt", ".json", ".yaml", ".yml")


@dataclass
class ImportResult:
    name: str
    directory: Path
    templates: list[tuple[str, str]] = field(default_factory=list)  # (template name, layout)
    notes: list[str] = field(default_factory=list)
    recognised: str | None = None  # "cirevl" for CIReVL's prompts.py


def import_prompts(file: str | Path, name: str, *, force: bool = False, data_dir: str | Path | None = None) -> ImportResult:
    """Store each prompt string of `file` as template `name/<constant>`; see the module doc."""
    if not SIMPLE_NAME.fullmatch(name or ""):
        raise CirkitError(
            f"bad name '{name}' for --as: use letters, digits, '_' and '-' (e.g. cirevl-paper), at most 100 characters"
        )
    path = Path(file).expanduser()
    if not path.is_file():
        raise CirkitError(f"prompt file not found: {file}" if not path.exists() else f"not a file: {file}")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise CirkitError(f"{file}: cannot import a '{suffix or 'suffix-less'}' file: give a .py, .txt, .json or .yaml file")
    try:
        data = path.read_bytes()
        text = data.decode("utf-8-sig")
    except OSError as exc:
        raise CirkitError(f"{file}: cannot read: {exc.strerror or one_line(exc)}") from None
    except UnicodeDecodeError:
        raise CirkitError(f"{file}: not UTF-8 text") from None

    notes: list[str] = []
    if suffix == ".py":
        strings = _python_strings(text, path, notes)
    elif suffix == ".txt":
        strings = {path.stem: text}
    else:
        strings = _mapping_strings(text, path, suffix, notes)
    for key in [k for k, v in strings.items() if not v.strip()]:
        notes.append(f"skipped '{key}': an empty string")
        del strings[key]
    for key in [k for k in strings if not SIMPLE_NAME.fullmatch(k)]:
        notes.append(f"skipped '{key}': not usable as a template name (letters, digits, '_' and '-')")
        del strings[key]
    if not strings:
        raise CirkitError(f"{file}: no prompt strings found" + (f" ({notes[0]})" if notes else ""))

    root = user_prompt_dir(data_dir)
    target = root / name
    if not force:
        if name in builtin_names():
            raise CirkitError(f"'{name}' is the name of a built-in template: choose another --as name, or add --force")
        if target.exists():
            raise CirkitError(f"templates '{name}/...' already exist in {target}: choose another --as name, or add --force to replace them")

    recognised = "cirevl" if suffix == ".py" and CIREVL_NAMES <= set(strings) else None
    result = ImportResult(name=name, directory=target, notes=notes, recognised=recognised)
    sha = hashlib.sha256(data).hexdigest()
    files: dict[str, str] = {}
    for constant, value in strings.items():
        layout = _layout(constant, recognised)
        spec = _template(f"{name}/{constant}", constant, value, layout, path.resolve(), sha)
        files[f"{constant}.yaml"] = _dump(spec)
        result.templates.append((f"{name}/{constant}", layout))
    _write_all(root, target, files)
    for ref, _ in result.templates:  # what was written loads and validates as a template
        load_prompt(ref, data_dir=data_dir or root.parent)
    return result


def _layout(constant: str, recognised: str | None) -> str:
    if recognised == "cirevl":
        if constant == "blip_prompt":
            return "cirevl-caption"
        if CIREVL_MODIFIER.fullmatch(constant):
            return "cirevl-modifier"
    return "text"


def _template(full_name: str, constant: str, value: str, layout: str, source: Path, sha: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": full_name}
    if layout == "cirevl-modifier":
        spec["description"] = (
            f"{constant} from {source}, sent as CIReVL's code sends it: one user message (the string, then "
            "'Image Content: <caption>' and 'Instruction: <modification>' on lines of their own); the answer is "
            f"the first line starting with '{CIREVL_MARKER}', up to the next colon. Decoding it was written for: "
            "temperature 0, max_new_tokens 700, stop ['\\n\\n', '<|endoftext|>'], fallback: modification."
        )
        spec["variables"] = ["caption", "modification"]
        spec["template"] = escape_braces(value) + "\n" + "Image Content: {caption}" + "\n" + "Instruction: {modification}"
        spec["output"] = {"first_line": CIREVL_MARKER, "until": ":"}
        spec["suggested_params"] = dict(CIREVL_PARAMS)
    elif layout == "cirevl-caption":
        spec["description"] = f"{constant} from {source}: CIReVL's captioning prompt (LAVIS BLIP-2: 5 beams, max length 30)."
        spec["variables"] = []
        spec["template"] = escape_braces(value)
        spec["suggested_params"] = {"num_beams": 5, "max_new_tokens": 30}
    else:
        fields = format_fields(value)
        spec["description"] = f"{constant} from {source}."
        spec["variables"] = sorted(set(fields)) if fields is not None else []
        spec["template"] = value if fields is not None else escape_braces(value)
    spec["imported"] = {"file": str(source), "constant": constant, "sha256": sha, "layout": layout}
    return spec


def escape_braces(text: str) -> str:
    """The text as a template that renders to itself."""
    return text.replace("{", "{{").replace("}", "}}")


def format_fields(text: str) -> list[str] | None:
    """The `{name}` fields of a string whose every brace is a simple named field or an escaped brace;
    None for any other string (its braces are then literal text)."""
    names = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError:
        return None
    for _, field_name, spec, conversion in parsed:
        if field_name is None:
            continue
        if not field_name.isidentifier() or spec or conversion:
            return None
        names.append(field_name)
    return names or None


def _python_strings(text: str, path: Path, notes: list[str]) -> dict[str, str]:
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as exc:
        raise CirkitError(f"{path}: not valid Python (line {exc.lineno}: {exc.msg})") from None
    strings: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        if not names:
            continue
        literal = _string_literal(value)
        for name in names:
            if isinstance(literal, str):
                strings[name] = literal
            else:
                strings.pop(name, None)  # reassigned to something else: the last assignment wins
                if literal is not None:
                    notes.append(f"skipped {name} (line {node.lineno}): {literal.reason}")
    return strings


@dataclass
class _Skip:
    reason: str


def _string_literal(node: ast.AST) -> str | _Skip | None:
    """The string a literal expression spells, a _Skip saying why not, or None for a non-string constant."""
    if isinstance(node, ast.Constant):
        return node.value if isinstance(node.value, str) else None
    if isinstance(node, ast.JoinedStr):
        return _Skip("an f-string (its value is only known when the code runs)")
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _string_literal(node.left), _string_literal(node.right)
        if isinstance(left, str) and isinstance(right, str):
            return left + right
        return left if isinstance(left, _Skip) else right if isinstance(right, _Skip) else _Skip("not a string literal")
    return _Skip("not a string literal")


def _mapping_strings(text: str, path: Path, suffix: str, notes: list[str]) -> dict[str, str]:
    try:
        data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise CirkitError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except yaml.YAMLError as exc:
        raise CirkitError(f"{path}: not valid YAML: {one_line(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CirkitError(f"{path}: expected a mapping of name: prompt string, got a {type(data).__name__}")
    strings = {}
    for key, value in data.items():
        if isinstance(value, str):
            strings[str(key)] = value
        else:
            notes.append(f"skipped '{key}': not a string")
    return strings


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str):
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def _dump(spec: dict[str, Any]) -> str:
    text = yaml.dump(spec, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1 << 16)
    if yaml.safe_load(text) != spec:  # a block scalar that would not read back the same: quote instead
        text = yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=1 << 16)
    return text


def _write_all(root: Path, target: Path, files: dict[str, str]) -> None:
    """Write the import's files into a fresh folder, then swap it in for `target`."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
        for file_name, content in files.items():
            (staging / file_name).write_text(content, encoding="utf-8")
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=root))
            os.replace(target, old / target.name)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except OSError as exc:
        raise CirkitError(f"cannot write templates to {target}: {exc.strerror or one_line(exc)}") from None
