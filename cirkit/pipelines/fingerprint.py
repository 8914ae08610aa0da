"""Step fingerprints and cache keys: what makes two runs of a step the same work.

A step's cache key is the hash of its kind, parameters (batch size aside), model (id and revision,
or the files of a local model) and prompt templates, then of each input value it runs on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def step_hash(model_spec, step, params):
    """The part of a step's cache keys that is the same for every query: what it is, which model,
    how (the model's fingerprint stats its files: done once per step, not once per query)."""
    h = hashlib.sha256()
    parts = [
        step.kind,
        json.dumps(params.model_dump(exclude={"batch_size"}), sort_keys=True),
        model_fingerprint(model_spec) if model_spec else "",
        *[p.text for p in step.prompts],
    ]
    for part in parts:
        h.update(part.encode() + b"\x00")
    return h


def cache_key(step_hash, inputs: dict[str, Any]) -> str:
    """Content address of a step's work on one query: the step's hash, then what it ran on."""
    h = step_hash.copy()
    for name in sorted(inputs):
        h.update(name.encode() + b"=" + _value_digest(inputs[name]) + b"\x00")
    return h.hexdigest()


def _value_digest(value: Any) -> bytes:
    if isinstance(value, Image.Image):
        return hashlib.sha256(f"{value.mode}{value.size}".encode() + value.tobytes()).digest()
    if isinstance(value, np.ndarray):
        return hashlib.sha256(str(value.dtype).encode() + str(value.shape).encode() + value.tobytes()).digest()
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=_json_default).encode()).digest()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value).__name__)


def model_fingerprint(spec) -> str:
    """A model entry as it produces outputs (device aside); local files by name, size and mtime."""
    fields = spec.model_dump(exclude={"device", "max_concurrency", "timeout", "max_retries"})
    for key in ("id", "name", "pretrained"):
        value = fields.get(key)
        if value and Path(value).exists():
            path = Path(value)
            files = sorted(path.rglob("*")) if path.is_dir() else [path]
            fields[key] = [value] + [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    return json.dumps(fields, sort_keys=True)
