"""search: the gallery images nearest to the query (FAISS inner product = cosine).

An ensemble of query vectors is fused here, as the pipeline file says:
  mean      mean of the normalized vectors, renormalized (the default)
  weighted  weighted mean; `weights` holds one weight per vector, or one per template
            (then each weight covers that template's consecutive samples)
  rrf       reciprocal-rank fusion of the per-vector result lists: sum of 1 / (rrf_k + rank)
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cirkit.components.base import Component, ItemResult


class SearchParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = Field(50, ge=1, le=100_000)
    fusion: Literal["mean", "weighted", "rrf"] = "mean"
    weights: list[float] | None = None
    rrf_k: float = Field(60.0, ge=0)
    # rrf: how deep each per-vector list is searched before fusing
    rrf_depth: int = Field(1000, ge=1, le=100_000)

    @model_validator(mode="after")
    def _weights(self) -> "SearchParams":
        if self.fusion == "weighted":
            if not self.weights:
                raise ValueError("fusion 'weighted' needs 'weights'")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError("weights must be >= 0 and not all 0")
        elif self.weights is not None:
            raise ValueError(f"'weights' go with fusion 'weighted', not '{self.fusion}'")
        return self


class Search(Component):
    kind = "search"
    description = "Rank the gallery by cosine similarity; fuse an ensemble of query vectors."
    inputs = {"query_vectors": "query_vectors"}
    outputs = ("results",)
    Params = SearchParams
    cacheable = False  # cheap, and it depends on the gallery index

    def run(self, items: list[dict[str, Any]]) -> list[ItemResult]:
        results: list[ItemResult | None] = [None] * len(items)
        fused, fused_at = [], []
        for i, item in enumerate(items):
            vectors = np.atleast_2d(np.asarray(item["query_vectors"], dtype=np.float32))
            if self.params.fusion == "rrf" and len(vectors) > 1:
                ranked = self.index.search(vectors, max(self.params.k, self.params.rrf_depth))
                results[i] = ItemResult(outputs={"results": rrf(ranked, self.params.k, self.params.rrf_k)})
                continue
            try:
                fused.append(fuse_vectors(vectors, self.params.weights if self.params.fusion == "weighted" else None))
                fused_at.append(i)
            except ValueError as exc:
                results[i] = ItemResult(error=str(exc))
        if fused:
            for i, ranked in zip(fused_at, self.index.search(np.stack(fused), self.params.k)):
                results[i] = ItemResult(outputs={"results": ranked})
        return results  # type: ignore[return-value]


def fuse_vectors(vectors: np.ndarray, weights: list[float] | None = None) -> np.ndarray:
    """The (weighted) mean of normalized vectors, renormalized."""
    if weights is None:
        w = np.ones(len(vectors), dtype=np.float32)
    elif len(vectors) % len(weights) == 0:
        w = np.repeat(np.asarray(weights, dtype=np.float32), len(vectors) // len(weights))
    else:
        raise ValueError(f"{len(weights)} weights do not fit {len(vectors)} query vectors")
    mean = (w[:, None] * vectors).sum(axis=0) / w.sum()
    return mean / max(float(np.linalg.norm(mean)), 1e-12)


def rrf(ranked_lists: list[list[dict[str, Any]]], k: int, rrf_k: float) -> list[dict[str, Any]]:
    """Reciprocal-rank fusion: each image scores sum(1 / (rrf_k + rank)) over the lists; ties by first seen."""
    scores: dict[str, float] = {}
    first: dict[str, dict[str, Any]] = {}
    for ranked in ranked_lists:
        for hit in ranked:
            scores[hit["path"]] = scores.get(hit["path"], 0.0) + 1.0 / (rrf_k + hit["rank"])
            first.setdefault(hit["path"], hit)
    order = sorted(scores, key=lambda path: -scores[path])[:k]
    return [{**first[path], "rank": r + 1, "score": scores[path]} for r, path in enumerate(order)]
