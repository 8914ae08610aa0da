"""Prompt templates: one YAML file per template, built-in by name, imported by `NAME/CONSTANT`, or by path.

A template file declares the variables it uses; its text is rendered with langchain-core
prompt templates into chat messages (an optional system message and one user message).
Imported templates (`cirkit prompts import`, see cirkit.prompts.importer) live in the user's prompt
directory, DATA_DIR/prompts/NAME/CONSTANT.yaml.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from cirkit.errors import CirkitError, one_line

BUILTIN_DIR = Path(__file__).parent
# An import's name and a constant's name: letters, digits, '_' and '-' (no dots, slashes or spaces).
SIMPLE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,99}")
_IMPORTED_REF = re.compile(rf"({SIMPLE_NAME.pattern})/({SIMPLE_NAME.pattern})")

_data_dir: Path | None = None


def use_data_dir(data_dir: str | Path | None) -> None:
    """Read imported templates from DATA_DIR/prompts (None: $CIRKIT_DATA_DIR, else the platform default)."""
    global _data_dir
    _data_dir = Path(data_dir).expanduser() if data_dir else None


def user_prompt_dir(data_dir: str | Path | None = None) -> Path:
    """DATA_DIR/prompts: where `cirkit prompts import` stores templates."""
    if data_dir:
        return Path(data_dir).expanduser() / "prompts"
    if _data_dir is not None:
        return _data_dir / "prompts"
    from cirkit.store import default_data_dir

    return default_data_dir() / "prompts"


class OutputFormat(BaseModel):
    """Where the answer sits in the model's output.

    after       the whole text after this marker (anywhere), minus quotes and trailing chatter
    first_line  the first line whose stripped form starts with this marker: the text after the marker,
                up to the next `until` (or the line's end), stripped; nothing else is cleaned
    """

    model_config = ConfigDict(extra="forbid")
    after: str | None = None
    first_line: str | None = None
    until: str | None = None

    @model_validator(mode="after")
    def _one_rule(self) -> "OutputFormat":
        if self.after is not None and self.first_line is not None:
            raise ValueError("give either 'after' or 'first_line', not both")
        if self.until is not None and self.first_line is None:
            raise ValueError("'until' goes with 'first_line'")
        if self.first_line == "" or self.until == "":
            raise ValueError("'first_line' and 'until' must not be empty")
        return self


class ImportInfo(BaseModel):
    """Where an imported template's text came from."""

    model_config = ConfigDict(extra="forbid")
    file: str
    constant: str
    sha256: str
    layout: str = "text"  # "text": the string as the user message; "cirevl-modifier"; "cirevl-caption"


class PromptFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    variables: list[str] = []
    system: str | None = None
    template: str
    output: OutputFormat = OutputFormat()
    # decoding and fallback the template was written for (informational: copy them into a step's params)
    suggested_params: dict[str, Any] = {}
    imported: ImportInfo | None = None


@dataclass(frozen=True)
class Prompt:
    spec: PromptFile
    source: str  # "builtin:NAME", or the file's path (imported templates: their file in the prompt directory)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def variables(self) -> list[str]:
        return self.spec.variables

    @property
    def text(self) -> str:
        """The template as written in its file (system message first), for hashing and display.

        The output rule is part of it: it decides the step's parsed output, so a changed rule must
        not be answered from the step cache."""
        text = (self.spec.system or "") + "\x00" + self.spec.template
        if self.spec.output.model_dump(exclude_none=True):
            text += "\x00output=" + self.spec.output.model_dump_json(exclude_none=True)
        return text

    def render(self, **values: str) -> list[dict[str, str]]:
        """Chat messages [{role, content}] with the variables filled in."""
        parts = [("system", self.spec.system)] if self.spec.system else []
        parts.append(("human", self.spec.template))
        messages = ChatPromptTemplate.from_messages(parts).format_messages(**values)
        roles = {"system": "system", "human": "user", "ai": "assistant"}
        return [{"role": roles[m.type], "content": m.content} for m in messages]


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def imported_names(data_dir: str | Path | None = None) -> list[str]:
    """`NAME/CONSTANT` of every imported template in the user's prompt directory."""
    root = user_prompt_dir(data_dir)
    if not root.is_dir():
        return []
    return sorted(
        f"{p.parent.name}/{p.stem}"
        for p in root.glob("*/*.yaml")
        if SIMPLE_NAME.fullmatch(p.parent.name) and SIMPLE_NAME.fullmatch(p.stem)
    )


def imported_path(ref: str, data_dir: str | Path | None = None) -> Path | None:
    """The file of imported template `NAME/CONSTANT`, if there is one."""
    m = _IMPORTED_REF.fullmatch(ref)
    if not m:
        return None
    path = user_prompt_dir(data_dir) / m.group(1) / f"{m.group(2)}.yaml"
    return path if path.is_file() else None


def load_prompt(ref: str | Path, base_dir: Path | None = None, data_dir: str | Path | None = None) -> Prompt:
    """A built-in template by name, an imported one by `NAME/CONSTANT`, or a template file by path
    (relative to base_dir if given)."""
    ref_str = str(ref)
    if (BUILTIN_DIR / f"{ref_str}.yaml").is_file() and "/" not in ref_str and "\\" not in ref_str:
        return Prompt(_parse(BUILTIN_DIR / f"{ref_str}.yaml"), f"builtin:{ref_str}")
    imported = imported_path(ref_str, data_dir)
    if imported is not None:
        return Prompt(_parse(imported), str(imported))
    path = Path(ref_str).expanduser()
    looks_like_path = path.suffix in {".yaml", ".yml"} or "/" in ref_str or "\\" in ref_str
    if looks_like_path:
        if not path.is_absolute() and base_dir is not None and not path.exists():
            path = base_dir / path
        if not path.is_file():
            raise CirkitError(f"prompt file not found: {ref_str}")
        return Prompt(_parse(path), str(path))
    raise CirkitError(
        f"unknown prompt '{ref_str}': not a built-in or imported template (see `cirkit prompts list`) "
        "and not a .yaml path"
    )


def _parse(path: Path) -> PromptFile:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CirkitError(f"{path}: cannot read prompt file: {exc}") from None
    except yaml.YAMLError as exc:
        raise CirkitError(f"{path}: not valid YAML: {one_line(exc)}") from None
    if not isinstance(data, dict):
        raise CirkitError(f"{path}: a prompt file must be a mapping with 'name' and 'template'")
    try:
        spec = PromptFile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "(top level)"
        raise CirkitError(f"{path}: field '{where}': {err['msg']}") from None
    used: set[str] = set()
    for text in (spec.system, spec.template):
        if text:
            try:
                used |= set(PromptTemplate.from_template(text).input_variables)
            except Exception as exc:  # langchain raises ValueError/KeyError on bad braces
                raise CirkitError(
                    f"{path}: bad template text ({one_line(exc)}); write literal braces as {{{{ }}}}"
                ) from None
    declared = set(spec.variables)
    if used - declared:
        raise CirkitError(
            f"{path}: template uses undeclared variable(s) {sorted(used - declared)}; "
            f"declared: {sorted(declared)}"
        )
    if declared - used:
        raise CirkitError(f"{path}: declared variable(s) {sorted(declared - used)} never used in the template")
    return spec

