"""Engines reach the models a pipeline names; `ModelPool` loads each model once and shares it."""

from __future__ import annotations

import json
import time
from typing import Any

from cirkit.engines.base import Engine, Generation, GenerationParams, GenerationRequest


def load_model(spec) -> Any:
    """A loaded model for a pipeline's model entry: a generation Engine, or a ClipModel."""
    if spec.type == "clip":
        from cirkit.engines.open_clip_engine import ClipModel

        return ClipModel(spec.name, spec.pretrained, device=spec.device, dtype=spec.dtype)
    if spec.engine == "vllm":
        from cirkit.engines.vllm_engine import VllmEngine

        return VllmEngine(spec)
    if spec.engine == "openai":
        from cirkit.engines.openai_engine import OpenAIEngine

        return OpenAIEngine(spec)
    if spec.engine == "langchain":
        from cirkit.engines.langchain_engine import LangChainEngine

        return LangChainEngine(spec)
    from cirkit.engines.transformers_engine import TransformersEngine

    return TransformersEngine(
        spec.id, vision=spec.type == "vlm", revision=spec.revision, dtype=spec.dtype, device=spec.device
    )


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


__all__ = ["Engine", "Generation", "GenerationParams", "GenerationRequest", "ModelPool", "load_model"]
