"""embed: CLIP text vectors (L2-normalized) of a text, e.g. the rewritten description."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cirkit.components.base import Component, ItemResult


class EmbedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch_size: int = Field(256, ge=1, le=65536)


class Embed(Component):
    kind = "embed"
    description = "Embed a text with CLIP (L2-normalized)."
    inputs = {"text": "description"}
    outputs = ("query_vector",)
    model_types = ("clip",)
    Params = EmbedParams

    def run(self, items: list[dict[str, Any]]) -> list[ItemResult]:
        texts = [item["text"] for item in items]
        vectors, truncated = self.model.encode_texts(texts, batch_size=self.params.batch_size)
        results = []
        for text, vector, cut in zip(texts, vectors, truncated):
            result = ItemResult(outputs={"query_vector": vector}, prompts=[text])
            if cut:
                result.notes.append("text longer than CLIP's context length: truncated")
            results.append(result)
        return results
