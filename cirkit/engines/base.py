"""The engine interface: batched text generation from chat messages, optionally with an image."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class GenerationParams(BaseModel):
    """Decoding parameters shared by every generating step."""

    model_config = ConfigDict(extra="forbid")
    max_new_tokens: int = Field(64, ge=1, le=32768)
    temperature: float = Field(0.0, ge=0.0, le=5.0)  # 0 = greedy (or beam search with num_beams > 1)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    num_beams: int = Field(1, ge=1, le=32)
    n: int = Field(1, ge=1, le=256)  # generations per request (samples, or the top beams)
    seed: int = 0
    batch_size: int = Field(8, ge=1, le=4096)
    # The answer ends before the first of these strings (not included). Left out of dumps when empty,
    # so steps that set none keep their cache keys.
    stop: list[str] = Field(default_factory=list, max_length=16, exclude_if=lambda v: not v)

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop_string(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("stop")
    @classmethod
    def _non_empty_stop_strings(cls, value: list[str]) -> list[str]:
        if any(s == "" for s in value):
            raise ValueError("stop strings must not be empty")
        return value

    @model_validator(mode="after")
    def _n_needs_sampling_or_beams(self) -> "GenerationParams":
        if self.n > 1 and self.temperature == 0 and self.num_beams < self.n:
            raise ValueError("n > 1 needs temperature > 0 (samples) or num_beams >= n (top beams)")
        return self

    def decoding(self) -> dict[str, Any]:
        """The parameters that shape the output, for the trace and the cache key."""
        return self.model_dump(exclude={"batch_size"})


@dataclass
class GenerationRequest:
    messages: list[dict[str, str]]  # [{"role": "system"|"user"|"assistant", "content": str}]
    image: Image.Image | None = None
    more_images: list[Image.Image] = field(default_factory=list)  # shown after `image`, for VLMs that take several

    @property
    def images(self) -> list[Image.Image]:
        return ([self.image] if self.image is not None else []) + list(self.more_images)


@dataclass
class Generation:
    text: str
    finish_reason: str  # "stop": the model ended it; "length": cut at max_new_tokens
    # log-probability of each asked-for word as the answer's first token (engines that see only the top
    # alternatives give those, by lower-cased token: a word may be missing); None where the engine gives none
    logprobs: dict[str, float] | None = None
    # tokens the model read and wrote for this generation, so that a call's generations add up to the
    # call's (a prompt read once for n generations counts with the first); None where the engine cannot tell
    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass
class TokenUsage:
    """Tokens read and written by the model calls made inside `metered()`."""

    input: int = 0
    output: int = 0
    calls: int = 0  # requests answered
    unknown: int = 0  # requests whose engine gave no token counts

    def shares(self, parts: int) -> list[dict[str, int] | None]:
        """The usage split into `parts` near-equal integer shares that add up to it (a batch's queries'
        shares, as for time); None each where no call was metered or no engine gave counts."""
        if parts <= 0:
            return []
        if self.calls == 0 or self.unknown == self.calls:
            return [None] * parts
        (a, ra), (b, rb) = divmod(self.input, parts), divmod(self.output, parts)
        return [{"input": a + (i < ra), "output": b + (i < rb)} for i in range(parts)]


_meters: ContextVar[tuple[TokenUsage, ...]] = ContextVar("cirkit_token_meters", default=())


@contextmanager
def metered() -> Iterator[TokenUsage]:
    """Count the tokens of every engine call made in this context (and in contexts nested in it)."""
    usage = TokenUsage()
    token = _meters.set((*_meters.get(), usage))
    try:
        yield usage
    finally:
        _meters.reset(token)


def count_tokens(results: Sequence[Sequence[Generation] | None]) -> None:
    """Add one generate call's results (per request, its generations) to the open meters. Engines
    call this from the thread that called generate."""
    meters = _meters.get()
    if not meters:
        return
    used = TokenUsage()
    for generations in results:
        if not generations:
            continue
        used.calls += 1
        if all(g.input_tokens is None and g.output_tokens is None for g in generations):
            used.unknown += 1
        used.input += sum(g.input_tokens or 0 for g in generations)
        used.output += sum(g.output_tokens or 0 for g in generations)
    for meter in meters:
        meter.input += used.input
        meter.output += used.output
        meter.calls += used.calls
        meter.unknown += used.unknown


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """The text before the earliest of the stop strings, and whether one was found."""
    ends = [at for at in (text.find(s) for s in stop) if at >= 0]
    return (text[: min(ends)], True) if ends else (text, False)


def with_image_parts(messages: list[dict[str, str]], parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI-style messages with the image content parts before the text of the first user message
    (or in a user message of their own when there is none)."""
    out: list[dict[str, Any]] = []
    placed = not parts
    for m in messages:
        if not placed and m["role"] == "user":
            out.append({"role": "user", "content": [*parts, {"type": "text", "text": m["content"]}]})
            placed = True
        else:
            out.append({"role": m["role"], "content": m["content"]})
    if not placed:
        out.append({"role": "user", "content": list(parts)})
    return out


class Engine(ABC):
    """One loaded generative model."""

    @abstractmethod
    def generate(
        self,
        requests: list[GenerationRequest],
        params: GenerationParams,
        on_batch: Callable[[int], None] | None = None,
        logprobs_of: Sequence[str] = (),
    ) -> list[list[Generation]]:
        """`params.n` generations per request, in request order; `on_batch(k)` after each batch of k requests.

        `logprobs_of` (e.g. ("yes", "no")): fill each Generation's `logprobs` with the log-probability
        of each word as the first answer token, where the engine can (the openai and vllm engines
        give the first token's top alternatives instead, by lower-cased token).
        """

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Engine name, model id and revision, for the trace."""
