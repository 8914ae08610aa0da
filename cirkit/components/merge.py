"""merge: two ranked lists (e.g. text-to-image and image-to-image search) fused into one.

  rrf     reciprocal-rank fusion: each image scores sum over the lists of 1 / (rrf_k + rank)
  score   weighted sum of the scores: weight * score in list a + (1 - weight) * score in list b,
          an image missing from a list scoring that list's lowest score there
  verifier  WISER's fusion of two judged lists: the sum of the judge's scores (P(yes)) in list a and
          in list b, 0 where an image is missing or unjudged; ties go to the higher of the two, then
          to list a's, then to the path; only images in either list are ranked
The top `k` of the fused list are kept; each hit keeps its rank and score in both lists.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cirkit.components.base import Component, ItemResult
from cirkit.components.values import Port


class MergeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["rrf", "score", "verifier"] = "rrf"
    rrf_k: float = Field(60.0, ge=0)
    weight: float = Field(0.5, ge=0.0, le=1.0)  # score: the share of list a
    k: int = Field(50, ge=1, le=100_000)


class Merge(Component):
    kind = "merge"
    description = "Fuse two ranked lists (text-to-image and image-to-image search) by reciprocal rank or by weighted score."
    inputs = {"a": Port("results"), "b": Port("results")}
    outputs = {"results": "results"}
    Params = MergeParams

    @classmethod
    def for_request(cls, params: MergeParams, *, k: int | None) -> MergeParams:
        return params.model_copy(update={"k": k}) if k is not None and k > params.k else params

    def run(self, items: list[dict[str, Any]]) -> list[ItemResult]:
        return [ItemResult(outputs={"results": merge(item["a"], item["b"], self.params)}) for item in items]


def merge(a: list[dict[str, Any]], b: list[dict[str, Any]], params: MergeParams) -> list[dict[str, Any]]:
    lists = {"a": {hit["path"]: hit for hit in a}, "b": {hit["path"]: hit for hit in b}}
    paths = list(dict.fromkeys([hit["path"] for hit in a] + [hit["path"] for hit in b]))
    if params.method == "verifier":
        judged = {name: {p: hits[p].get("verifier") or 0.0 if p in hits else 0.0 for p in paths} for name, hits in lists.items()}
        scores = {p: judged["a"][p] + judged["b"][p] for p in paths}
        paths.sort(key=lambda p: (-scores[p], -max(judged["a"][p], judged["b"][p]), -judged["a"][p], p))
    elif params.method == "rrf":
        scores = {p: sum(1.0 / (params.rrf_k + hits[p]["rank"]) for hits in lists.values() if p in hits) for p in paths}
    else:
        floor = {name: min((h["score"] for h in hits.values()), default=0.0) for name, hits in lists.items()}
        part = {name: {p: hits[p]["score"] if p in hits else floor[name] for p in paths} for name, hits in lists.items()}
        scores = {p: params.weight * part["a"][p] + (1 - params.weight) * part["b"][p] for p in paths}
    order = sorted(paths, key=lambda p: -scores[p])[: params.k]  # stable: the verifier order stays
    out = []
    for r, p in enumerate(order):
        hit = dict(lists["a"].get(p) or lists["b"][p])
        hit.pop("scores", None)
        hit.update(rank=r + 1, score=scores[p], paths={name: {"rank": hits[p]["rank"], "score": hits[p]["score"]} for name, hits in lists.items() if p in hits})
        out.append(hit)
    return out
