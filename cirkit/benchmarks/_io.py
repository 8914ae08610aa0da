"""Reading annotation and prediction files: every problem a user can cause becomes one CirkitError line.

Messages name the file (as a path) and, for a bad record, its index in the file's list
(0-based, ``record 17``) or its line (1-based, ``line 3``, for JSONL).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cirkit.errors import CirkitError


def require_file(path: Path, what: str, layout_hint: str = "") -> Path:
    """`path` if it is a readable file, else a CirkitError saying what was expected where."""
    if path.is_file():
        return path
    hint = f" ({layout_hint})" if layout_hint else ""
    if path.exists():
        raise CirkitError(f"{what}: expected a file at {path}, found a folder{hint}")
    raise CirkitError(f"{what}: expected file {path} is missing{hint}")


def read_json(path: Path) -> Any:
    """Parse a JSON file; a missing, unreadable, empty, truncated or corrupt file is a CirkitError."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CirkitError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise CirkitError(f"{path}: is a folder, not a JSON file") from None
    except OSError as e:
        raise CirkitError(f"{path}: cannot read: {e.strerror or e}") from None
    if not raw.strip():
        raise CirkitError(f"{path}: empty file, expected JSON")
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise CirkitError(f"{path}: not valid JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        truncated = e.pos >= len(raw.rstrip()) - 1 or e.msg.startswith("Unterminated string")
        kind = "truncated" if truncated else "corrupt"
        raise CirkitError(
            f"{path}: not valid JSON ({kind}): {e.msg} (line {e.lineno}, column {e.colno})"
        ) from None


def read_json_list(path: Path) -> list:
    data = read_json(path)
    if not isinstance(data, list):
        raise CirkitError(f"{path}: expected a JSON list of records, got {json_type(data)}")
    return data


def read_json_object(path: Path) -> dict:
    data = read_json(path)
    if not isinstance(data, dict):
        raise CirkitError(f"{path}: expected a JSON object, got {json_type(data)}")
    return data


def json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if value is None:
        return "null"
    return type(value).__name__


class Records:
    """Field access on the records of one file, with errors naming the file and the record."""

    def __init__(self, path: Path, unit: str = "record", base: int = 0):
        self.path = path
        self.unit = unit
        self.base = base

    def where(self, index: int) -> str:
        return f"{self.path}: {self.unit} {index + self.base}"

    def fail(self, index: int, message: str) -> CirkitError:
        return CirkitError(f"{self.where(index)}: {message}")

    def obj(self, index: int, record: Any) -> dict:
        if not isinstance(record, dict):
            raise self.fail(index, f"expected an object, got {json_type(record)}")
        return record

    def get(self, index: int, record: dict, key: str, kind: type | tuple[type, ...], *, optional: bool = False,
            nonempty: bool = False) -> Any:
        if key not in record:
            if optional:
                return None
            raise self.fail(index, f"missing '{key}'")
        value = record[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok:
            names = " or ".join(_kind_name(k) for k in kinds)
            raise self.fail(index, f"'{key}' must be {names}, got {json_type(value)}")
        if nonempty and isinstance(value, (str, list)) and not (value.strip() if isinstance(value, str) else value):
            raise self.fail(index, f"'{key}' is empty")
        return value

    def str_list(self, index: int, record: dict, key: str, *, optional: bool = False, nonempty: bool = False,
                 allow_int: bool = False) -> list[str] | None:
        value = self.get(index, record, key, list, optional=optional, nonempty=nonempty)
        if value is None:
            return None
        out = []
        for j, item in enumerate(value):
            if isinstance(item, str) and item:
                out.append(item)
            elif allow_int and isinstance(item, int) and not isinstance(item, bool):
                out.append(str(item))
            else:
                raise self.fail(index, f"'{key}'[{j}] must be a non-empty string, got {json_type(item)}")
        return out


def _kind_name(k: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "an object",
            bool: "a boolean"}.get(k, k.__name__)


def write_json_atomic(path: Path, data: Any) -> Path:
    """Write JSON to `path` through a temporary file, so a crash never leaves half a file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.write("\n")
        os.replace(tmp, path)
    except OSError as e:
        raise CirkitError(f"{path}: cannot write: {e.strerror or e}") from None
    return path
