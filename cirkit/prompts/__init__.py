"""Prompt templates: one YAML file per template, built-in by name or user files by path.

A template file declares the variables it uses; its text is rendered with langchain-core
prompt templates into chat messages (an optional system message and one user message).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate
from pydantic import BaseModel, ConfigDict, ValidationError

from cirkit.errors import CirkitError, one_line

BUILTIN_DIR = Path(__file__).parent


class OutputFormat(BaseModel):
    """Where the answer sits in the model's output: the whole text after `after`, when given."""

    model_config = ConfigDict(extra="forbid")
    after: str | None = None


class PromptFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    variables: list[str] = []
    system: str | None = None
    template: str
    output: OutputFormat = OutputFormat()


@dataclass(frozen=True)
class Prompt:
    spec: PromptFile
    source: str  # "builtin:NAME" or the file's path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def variables(self) -> list[str]:
        return self.spec.variables

    @property
    def text(self) -> str:
        """The template as written in its file (system message first), for hashing and display."""
        return (self.spec.system or "") + "\x00" + self.spec.template

    def render(self, **values: str) -> list[dict[str, str]]:
        """Chat messages [{role, content}] with the variables filled in."""
        parts = [("system", self.spec.system)] if self.spec.system else []
        parts.append(("human", self.spec.template))
        messages = ChatPromptTemplate.from_messages(parts).format_messages(**values)
        roles = {"system": "system", "human": "user", "ai": "assistant"}
        return [{"role": roles[m.type], "content": m.content} for m in messages]


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def load_prompt(ref: str | Path, base_dir: Path | None = None) -> Prompt:
    """A built-in template by name, or a template file by path (relative to base_dir if given)."""
    ref_str = str(ref)
    path = Path(ref_str).expanduser()
    looks_like_path = path.suffix in {".yaml", ".yml"} or "/" in ref_str or "\\" in ref_str
    if looks_like_path:
        if not path.is_absolute() and base_dir is not None and not path.exists():
            path = base_dir / path
        if not path.is_file():
            raise CirkitError(f"prompt file not found: {ref_str}")
        return Prompt(_parse(path), str(path))
    builtin = BUILTIN_DIR / f"{ref_str}.yaml"
    if not builtin.is_file():
        raise CirkitError(
            f"unknown prompt '{ref_str}': not a built-in template (see `cirkit prompts list`) "
            "and not a .yaml path"
        )
    return Prompt(_parse(builtin), f"builtin:{ref_str}")


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

