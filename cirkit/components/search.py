"""search: the gallery images nearest to a query vector (FAISS inner product = cosine)."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cirkit.components.base import Component, ItemResult


class SearchParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = Field(50, ge=1, le=100_000)


class Search(Component):
    kind = "search"
    description = "Rank the gallery by cosine similarity to a query vector."
    inputs = {"query_vector": "query_vector"}
    outputs = ("results",)
    Params = SearchParams

    def run(self, items: list[dict[str, Any]]) -> list[ItemResult]:
        queries = np.stack([item["query_vector"] for item in items]).astype(np.float32)
        hits = self.index.search(queries, self.params.k)
        return [ItemResult(outputs={"results": ranked}) for ranked in hits]
