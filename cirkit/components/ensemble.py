"""ensemble: one query vector from the vectors of several edited captions (LDRE's caption ensemble).

  mean      normalize(mean_i e_i), the vectors as given (LDRE on CIRR averages CLIP's raw features)
  adaptive  one weight per caption index i, from the batch of queries the step is given:
              v_i = sum over the queries of the top `top_k` values over the gallery of
                    max(0, cos(b_i, g) - cos(e_i, g))
              w = softmax(v / max(v) / temperature)
              q = normalize(sum_i w_i * normalize(e_i))
            with e_i the i-th edited caption's vector and b_i the i-th caption's vector (input
            `caption_vectors`), both normalized for the cosines; LDRE on CIRCO.

The adaptive weights depend on every query of the batch (the authors compute them over the whole
test split at once): the step is never taken from the cache, and `cirkit eval --batch-size` decides
how many queries share one set of weights.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cirkit.components.base import Component, ItemResult
from cirkit.components.values import Port


class EnsembleParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["mean", "adaptive"] = "mean"
    top_k: int = Field(5, ge=1, le=10_000)  # adaptive: the largest drops per query that count
    temperature: float = Field(0.04, gt=0.0, le=100.0)  # adaptive: softmax temperature


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)


def adaptive_weights(edited: np.ndarray, captions: np.ndarray, gallery: np.ndarray, top_k: int, temperature: float) -> np.ndarray:
    """The weights per caption index; edited and captions are (queries, captions, dim), gallery (images, dim)."""
    k = min(top_k, len(gallery))
    v = np.zeros(edited.shape[1], dtype=np.float64)
    for i in range(edited.shape[1]):
        drop = np.maximum(_unit(captions[:, i]) @ gallery.T - _unit(edited[:, i]) @ gallery.T, 0.0)
        v[i] = np.sort(drop, axis=1)[:, -k:].sum()
    if v.max() <= 0:
        return np.full(len(v), 1.0 / len(v))
    z = v / v.max() / temperature
    z = np.exp(z - z.max())
    return z / z.sum()


class Ensemble(Component):
    kind = "ensemble"
    description = "One query from several edited captions: their mean, or LDRE's adaptive weights per caption index."
    inputs = {"edited_vectors": Port("vectors", "query_vectors"), "caption_vectors": Port("vectors", optional=True)}
    outputs = {"query_vectors": "vectors"}
    Params = EnsembleParams
    cacheable = False  # adaptive weights depend on the whole batch

    @classmethod
    def check(cls, params: EnsembleParams, wiring: dict[str, str | None]) -> None:
        if params.mode == "adaptive" and wiring.get("caption_vectors") is None:
            raise ValueError(
                "mode 'adaptive' compares each edited caption with its caption: wire their vectors, "
                "e.g. inputs: {caption_vectors: embed_captions.query_vectors}"
            )

    def run(self, items: list[dict[str, Any]]) -> list[ItemResult]:
        edited = [np.atleast_2d(np.asarray(item["edited_vectors"], dtype=np.float32)) for item in items]
        if self.params.mode == "mean":
            return [ItemResult(outputs={"query_vectors": _unit(e.mean(axis=0))[None]}, notes=[f"mean of {len(e)} vectors"]) for e in edited]
        captions = [np.atleast_2d(np.asarray(item["caption_vectors"], dtype=np.float32)) for item in items]
        shapes = {e.shape for e in edited} | {c.shape for c in captions}
        if len(shapes) != 1:
            error = "adaptive weights need the same number of captions and edited captions in every query of the batch"
            return [ItemResult(error=f"{error} (got {', '.join(sorted(str(s[0]) for s in shapes))})") for _ in items]
        gallery = np.asarray(self.index.vectors, dtype=np.float32)
        weights = adaptive_weights(np.stack(edited), np.stack(captions), gallery, self.params.top_k, self.params.temperature)
        shown = ", ".join(f"{w:.3f}" for w in weights)
        note = f"adaptive weights per caption index over a batch of {len(items)} queries: {shown}"
        return [
            ItemResult(outputs={"query_vectors": _unit((weights[:, None] * _unit(e)).sum(axis=0))[None]}, notes=[note])
            for e in edited
        ]
