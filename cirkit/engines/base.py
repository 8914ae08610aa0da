"""The engine interface: batched text generation from chat messages, optionally with an image."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field


class GenerationParams(BaseModel):
    """Decoding parameters shared by every generating step."""

    model_config = ConfigDict(extra="forbid")
    max_new_tokens: int = Field(64, ge=1, le=32768)
    temperature: float = Field(0.0, ge=0.0, le=5.0)  # 0 = greedy (or beam search with num_beams > 1)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    num_beams: int = Field(1, ge=1, le=32)
    seed: int = 0
    batch_size: int = Field(8, ge=1, le=4096)

    def decoding(self) -> dict[str, Any]:
        """The parameters that shape the output, for the trace and the cache key."""
        return self.model_dump(exclude={"batch_size"})


@dataclass
class GenerationRequest:
    messages: list[dict[str, str]]  # [{"role": "system"|"user"|"assistant", "content": str}]
    image: Image.Image | None = None


@dataclass
class Generation:
    text: str
    finish_reason: str  # "stop": the model ended it; "length": cut at max_new_tokens


class Engine(ABC):
    """One loaded generative model."""

    @abstractmethod
    def generate(
        self,
        requests: list[GenerationRequest],
        params: GenerationParams,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[Generation]:
        """One generation per request, in order; `on_batch(n)` after each batch of n requests."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Engine name, model id and revision, for the trace."""
