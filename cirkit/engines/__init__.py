"""Engines reach the models a pipeline names; `ModelPool` loads each model once and shares it."""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from cirkit.engines.base import Engine, Generation, GenerationParams, GenerationRequest


def _open_clip(spec) -> Any:
    from cirkit.engines.open_clip_engine import ClipModel

    return ClipModel(spec.name, spec.pretrained, device=spec.device, dtype=spec.dtype, preprocess=spec.preprocess)


def _transformers(spec) -> Any:
    from cirkit.engines.transformers_engine import TransformersEngine

    return TransformersEngine(spec.id, vision=spec.type == "vlm", revision=spec.revision, dtype=spec.dtype, device=spec.device)


def _vllm(spec) -> Any:
    from cirkit.engines.vllm_engine import VllmEngine

    return VllmEngine(spec)


def _openai(spec) -> Any:
    from cirkit.engines.openai_engine import OpenAIEngine

    return OpenAIEngine(spec)


def _ray(spec) -> Any:
    from cirkit.engines.ray_engine import RayEngine

    return RayEngine(spec)


def _diffusers(spec) -> Any:
    from cirkit.engines.diffusers_engine import DiffusersEditor

    return DiffusersEditor(spec)


def _langchain(spec) -> Any:
    from cirkit.engines.langchain_engine import LangChainEngine

    return LangChainEngine(spec)


# The one registry of engines: a model entry's `engine` names one; each is imported only when used.
ENGINES: dict[str, Callable[[Any], Any]] = {
    "transformers": _transformers,
    "vllm": _vllm,
    "openai": _openai,
    "langchain": _langchain,
    "ray": _ray,
    "open_clip": _open_clip,
    "diffusers": _diffusers,
}
CLIP_ENGINES = ("open_clip",)


def load_model(spec) -> Any:
    """A loaded model for a pipeline's model entry: a generation Engine, or a CLIP model."""
    return ENGINES[spec.engine](spec)


class ModelPool:
    """Loaded models by their spec, so steps (and queries) that share a model load it once."""

    def __init__(self) -> None:
        self._models: dict[str, Any] = {}
        self.load_seconds: dict[str, float] = {}

    def get(self, spec) -> Any:
        key = json.dumps(spec.model_dump(), sort_keys=True)
        if key not in self._models:
            start = time.perf_counter()
            self._models[key] = load_model(spec)
            self.load_seconds[key] = time.perf_counter() - start
        return self._models[key]


__all__ = ["CLIP_ENGINES", "ENGINES", "Engine", "Generation", "GenerationParams", "GenerationRequest", "ModelPool", "load_model"]
