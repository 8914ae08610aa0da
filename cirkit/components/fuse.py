"""fuse and pdv: one query vector from the text and the reference image (training-free fusion).

fuse (WeiMoCIR):  q = normalize(alpha * t + (1 - alpha) * i)
    With `normalize_parts: false` t and i are taken as given (WeiMoCIR adds CLIP's raw features,
    from embed steps with `normalize: false`). With the reference image's captions wired in
    (`caption_vectors`, one row per caption), the step also gives one query per caption,
    q_k = normalize(alpha * t + (1 - alpha) * c_k), which a search scores against the k-th gallery
    caption of each candidate (WeiMoCIR's caption similarity).
pdv (Prompt Directional Vectors):
    d = t - c                                  the direction the modification moves the caption
    text  = normalize(c + alpha_text * d)      with text_from: caption (the paper); the default,
                                               text_from: rewrite, starts from t instead
    image = normalize(i + alpha_image * d)
    q = normalize(beta * text + (1 - beta) * image)

t is the text vector (the mean of an ensemble's vectors, renormalized), i the reference image
vector, c the reference caption's text vector (the mean of several captions, renormalized).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cirkit.components.base import Component, ItemResult
from cirkit.components.values import Port


def normalize(vector: np.ndarray) -> np.ndarray:
    return (vector / max(float(np.linalg.norm(vector)), 1e-12)).astype(np.float32)


def mean_vector(vectors: Any) -> np.ndarray:
    """One normalized vector from one or several (an ensemble's) normalized vectors."""
    return normalize(np.atleast_2d(np.asarray(vectors, dtype=np.float32)).mean(axis=0))


def weighted_fusion(text: np.ndarray, image: np.ndarray, alpha: float) -> np.ndarray:
    return normalize(alpha * text + (1.0 - alpha) * image)


def pdv_fusion(
    text: np.ndarray, caption: np.ndarray, image: np.ndarray, *, alpha_text: float, alpha_image: float, beta: float,
    text_from: str = "rewrite",
) -> np.ndarray:
    direction = text - caption
    composed_text = normalize((text if text_from == "rewrite" else caption) + alpha_text * direction)
    composed_image = normalize(image + alpha_image * direction)
    return weighted_fusion(composed_text, composed_image, beta)


def plain_mean(vectors: Any) -> np.ndarray:
    """One vector from one or several, averaged as given (raw CLIP features stay raw)."""
    return np.atleast_2d(np.asarray(vectors, dtype=np.float32)).mean(axis=0)


class FuseParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(0.6, ge=0.0, le=1.0)  # the text's share; 1 = text only, 0 = image only
    # False: add the vectors as they come (WeiMoCIR's raw features); left out of dumps when True
    normalize_parts: bool = Field(True, exclude_if=lambda v: v is True)


class Fuse(Component):
    kind = "fuse"
    description = "Weighted fusion of the text and reference image vectors (WeiMoCIR); one query per reference caption too."
    inputs = {
        "text_vectors": Port("vectors", "query_vectors"),
        "image_vectors": Port("vectors", "image_vectors"),
        "caption_vectors": Port("vectors", optional=True),
    }
    outputs = {"query_vectors": "vectors", "caption_queries": "vectors"}
    Params = FuseParams

    def run(self, items: list[dict[str, Any]]) -> list[ItemResult]:
        results = []
        part = mean_vector if self.params.normalize_parts else plain_mean
        a = self.params.alpha
        for item in items:
            text, image = part(item["text_vectors"]), part(item["image_vectors"])
            fused = weighted_fusion(text, image, a)
            notes = [_cosines(fused, text=normalize(text), image=normalize(image))]
            if item.get("caption_vectors") is not None:
                captions = np.atleast_2d(np.asarray(item["caption_vectors"], dtype=np.float32))
                if self.params.normalize_parts:
                    captions = captions / np.maximum(np.linalg.norm(captions, axis=1, keepdims=True), 1e-12)
                per_caption = np.stack([weighted_fusion(text, c, a) for c in captions])
                notes.append(f"{len(per_caption)} queries, one per reference caption: alpha * text + (1 - alpha) * caption")
            else:
                per_caption = fused[None]
            results.append(ItemResult(outputs={"query_vectors": fused[None], "caption_queries": per_caption}, notes=notes))
        return results


class PdvParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha_text: float = Field(0.5, ge=0.0, le=10.0)  # how far the text moves along the direction
    alpha_image: float = Field(1.0, ge=0.0, le=10.0)  # how far the image moves along the direction
    beta: float = Field(0.7, ge=0.0, le=1.0)  # the composed text's share in the final fusion
    text_from: Literal["rewrite", "caption"] = "rewrite"  # the vector the text direction starts from


class Pdv(Component):
    kind = "pdv"
    description = "Prompt directional vectors: move text and image along rewrite - caption, then fuse."
    inputs = {
        "text_vectors": Port("vectors", "query_vectors"),
        "caption_vectors": Port("vectors"),
        "image_vectors": Port("vectors", "image_vectors"),
    }
    outputs = {"query_vectors": "vectors"}
    Params = PdvParams

    def run(self, items: list[dict[str, Any]]) -> list[ItemResult]:
        results = []
        p = self.params
        for item in items:
            text, caption, image = (mean_vector(item[name]) for name in ("text_vectors", "caption_vectors", "image_vectors"))
            fused = pdv_fusion(
                text, caption, image, alpha_text=p.alpha_text, alpha_image=p.alpha_image, beta=p.beta, text_from=p.text_from
            )
            note = _cosines(fused, text=text, caption=caption, image=image)
            results.append(ItemResult(outputs={"query_vectors": fused[None]}, notes=[f"{note}; |direction| {np.linalg.norm(text - caption):.3f}"]))
        return results


def _cosines(fused: np.ndarray, **parts: np.ndarray) -> str:
    """How close the fused query is to each part, for the trace."""
    return "cosine of the fused query with " + ", ".join(f"{name} {float(fused @ v):.3f}" for name, v in parts.items())
