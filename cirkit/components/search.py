"""search: the gallery images nearest to the query (FAISS inner product = cosine).

An ensemble of query vectors is fused here, as the pipeline file says:
  mean      mean of the normalized vectors, renormalized (the default)
  weighted  weighted mean; `weights` holds one weight per vector, or one per template
            (then each weight covers that template's consecutive samples)
  rrf       reciprocal-rank fusion of the per-vector result lists: sum of 1 / (rrf_k + rank)

A query that comes with candidate images (a benchmark's per-query set) gets them ranked by the same
final scores: only them (`only`, GeneCIS), or the top k followed by the candidates not among them
(CIRR's subsets), so that a later rerank and the evaluation see the pipeline's own ranking.

Two optional re-scorings of the top `rescore_depth` candidates, from the index's stored vectors:
  gallery_captions: w   s = (1 - w) * cos(q, image) + w * mean_k cos(q_k, caption k of the image),
                        with the captions computed at index time (`cirkit index ... --captions
                        PIPELINE`, one or several per image); q_k is the query, or with
                        `caption_queries` wired (a fuse step's, one per caption: WeiMoCIR) the k-th
  increment (SEIZE)     with r the reference captions' vectors (input `reference_vectors`, fused as
                        the query is) and d = s(q) - s(r):
                        score = s(q) + positive * max(d, 0) - negative * max(-d, 0)

With several query vectors, `mean` is the mean of the vectors as given, renormalized: the mean of
normalized vectors, or of CLIP's raw features when the embed step gives them (SEIZE, LDRE on CIRR).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cirkit.components.base import Component, ItemResult
from cirkit.components.values import Port


class IncrementParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    positive: float = Field(1.0, ge=0.0, le=10.0)
    negative: float = Field(1.0, ge=0.0, le=10.0)


class SearchParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = Field(50, ge=1, le=100_000)
    fusion: Literal["mean", "weighted", "rrf"] = "mean"
    weights: list[float] | None = None
    rrf_k: float = Field(60.0, ge=0)
    # rrf: how deep each per-vector list is searched before fusing
    rrf_depth: int = Field(1000, ge=1, le=100_000)
    gallery_captions: float = Field(0.0, ge=0.0, le=1.0)
    increment: IncrementParams | None = None
    # how many top candidates the re-scorings above score exactly
    rescore_depth: int = Field(1000, ge=1, le=1_000_000)

    @property
    def rescores(self) -> bool:
        return self.gallery_captions > 0 or self.increment is not None

    @model_validator(mode="after")
    def _weights(self) -> "SearchParams":
        if self.fusion == "rrf" and self.rescores:
            raise ValueError("fusion 'rrf' ranks, it has no scores to re-score: use 'mean' or 'weighted' with gallery_captions or increment")
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
    inputs = {
        "query_vectors": Port("vectors", "query_vectors"),
        "reference_vectors": Port("vectors", optional=True),
        "caption_queries": Port("vectors", optional=True),
        "candidates": Port("candidates", "candidates", optional=True),
    }
    outputs = {"results": "results"}
    Params = SearchParams
    cacheable = False  # cheap, and it depends on the gallery index

    @classmethod
    def for_request(cls, params: SearchParams, *, k: int | None) -> SearchParams:
        return params.model_copy(update={"k": k}) if k is not None and k > params.k else params

    @classmethod
    def check(cls, params: SearchParams, wiring: dict[str, str | None]) -> None:
        if wiring.get("caption_queries") is not None and params.gallery_captions == 0:
            raise ValueError("input 'caption_queries' is scored against gallery captions: set params.gallery_captions (0 < w <= 1)")
        if params.increment is not None and wiring.get("reference_vectors") is None:
            raise ValueError(
                "field 'params.increment' scores against the reference caption: wire its vectors, "
                "e.g. inputs: {reference_vectors: embed_caption.query_vectors}"
            )

    def run(self, items: list[dict[str, Any]]) -> list[ItemResult]:
        results = self._search(items)
        for item, result in zip(items, results):
            if item.get("candidates") and result.error is None:
                self._with_candidates(item, result)
        return results

    def _search(self, items: list[dict[str, Any]]) -> list[ItemResult]:
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
        if fused and not self.params.rescores:
            for i, ranked in zip(fused_at, self.index.search(np.stack(fused), self.params.k)):
                results[i] = ItemResult(outputs={"results": ranked})
        elif fused:
            candidates = self.index.search(np.stack(fused), max(self.params.k, self.params.rescore_depth))
            for i, query, ranked in zip(fused_at, fused, candidates):
                results[i] = self._rescore(query, items[i].get("reference_vectors"), ranked, caption_queries=items[i].get("caption_queries"))
        return results  # type: ignore[return-value]

    def _with_candidates(self, item: dict[str, Any], result: ItemResult) -> None:
        """The query's own candidates ranked by the final scores: only them, or appended after the top k."""
        wanted = [p for p in dict.fromkeys(item["candidates"]["paths"]) if p in self.index.row_of]
        only = item["candidates"].get("only", False)
        have = {hit["path"] for hit in result.outputs["results"]}
        todo = wanted if only else [p for p in wanted if p not in have]
        hits = [{"path": p, "file": str(self.index.root / p), "rank": 0, "score": 0.0} for p in todo]
        if hits:
            vectors = np.atleast_2d(np.asarray(item["query_vectors"], dtype=np.float32))
            if self.params.fusion == "rrf" and len(vectors) > 1:
                rows = np.array([self.index.row_of[p] for p in todo], dtype=np.int64)
                sims = np.asarray(self.index.vectors[rows], dtype=np.float32) @ vectors.T
                lists = [[{**hits[j], "rank": r + 1} for r, j in enumerate(np.argsort(-sims[:, v], kind="stable"))] for v in range(len(vectors))]
                hits = rrf(lists, len(hits), self.params.rrf_k)
            else:
                query = fuse_vectors(vectors, self.params.weights if self.params.fusion == "weighted" else None)
                hits = self._rescore(query, item.get("reference_vectors"), hits, keep=len(hits), caption_queries=item.get("caption_queries")).outputs["results"]
        ranked = [] if only else result.outputs["results"]
        result.outputs["results"] = ranked + [{**hit, "rank": len(ranked) + r + 1} for r, hit in enumerate(hits)]
        missing = len(item["candidates"]["paths"]) - len(wanted)
        result.notes.append(
            f"ranked the query's {len(wanted)} candidates" + (" only" if only else f" ({len(hits)} after the top {len(ranked)})")
            + (f"; {missing} are not in the index" if missing else "")
        )

    def _rescore(
        self, query: np.ndarray, reference: Any, ranked: list[dict[str, Any]], keep: int | None = None, caption_queries: Any = None,
    ) -> ItemResult:
        """The candidates scored again: image and gallery-caption similarity, and the editing increment."""
        from cirkit.gallery.captions import GalleryCaptions

        rows = np.array([self.index.row_of[hit["path"]] for hit in ranked], dtype=np.int64)
        images = np.asarray(self.index.vectors[rows], dtype=np.float32)
        w = self.params.gallery_captions
        captions = GalleryCaptions.of(self.index).vectors[rows] if w > 0 else None  # (candidates, K, dim)
        per_caption = None
        if captions is not None and caption_queries is not None:
            per_caption = np.atleast_2d(np.asarray(caption_queries, dtype=np.float32))
            if len(per_caption) not in (1, captions.shape[1]):
                return ItemResult(error=f"{len(per_caption)} caption queries do not fit the {captions.shape[1]} gallery captions per image")

        def caption_score(vectors: np.ndarray) -> np.ndarray:
            if len(vectors) == 1:
                return (captions @ vectors[0]).mean(axis=1)
            return np.einsum("ckd,kd->ck", captions, vectors).mean(axis=1)

        def score(vector: np.ndarray, caption_vectors: np.ndarray | None = None) -> np.ndarray:
            s = images @ vector
            if captions is None:
                return s
            return (1 - w) * s + w * caption_score(caption_vectors if caption_vectors is not None else vector[None])

        scores = score(query, per_caption)
        parts: dict[str, np.ndarray] = {"image": images @ query}
        if captions is not None:
            parts["caption"] = caption_score(per_caption if per_caption is not None else query[None])
        notes = [f"re-scored the top {len(ranked)} candidates" + (
            f", gallery-caption weight {w} over {captions.shape[1]} caption(s) per image" if captions is not None else "")]
        if self.params.increment is not None:
            delta = scores - score(fuse_vectors(np.atleast_2d(np.asarray(reference, dtype=np.float32))))
            inc = self.params.increment
            parts["increment"] = delta
            scores = scores + inc.positive * np.maximum(delta, 0) - inc.negative * np.maximum(-delta, 0)
            notes.append(f"editing increment: positive {inc.positive}, negative {inc.negative}")
        order = np.argsort(-scores, kind="stable")[: keep or self.params.k]
        hits = [
            {**ranked[j], "rank": r + 1, "score": float(scores[j]), "scores": {name: float(v[j]) for name, v in parts.items()}}
            for r, j in enumerate(order)
        ]
        return ItemResult(outputs={"results": hits}, notes=notes)


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
