"""embed: CLIP text vectors of one text or an ensemble of texts; embed_image: of the reference image.

Vectors are L2-normalized unless `normalize: false`: methods that add features before normalizing
(WeiMoCIR's weighted sum, the mean over captions of SEIZE and LDRE) need CLIP's raw features.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cirkit.components.base import Component, ItemResult
from cirkit.components.values import Port


class EmbedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch_size: int = Field(256, ge=1, le=65536)
    # False: CLIP's raw features (left out of dumps when True, so existing steps keep their cache keys)
    normalize: bool = Field(True, exclude_if=lambda v: v is True)


class Embed(Component):
    kind = "embed"
    description = "Embed texts with CLIP, one vector per text (L2-normalized unless normalize: false)."
    inputs = {"texts": Port("texts", "descriptions")}
    outputs = {"query_vectors": "vectors"}
    model_types = ("clip",)
    Params = EmbedParams

    def run(self, items: list[dict[str, Any]]) -> list[ItemResult]:
        per_item = [[t] if isinstance(t, str) else list(t) for t in (item["texts"] for item in items)]
        flat = [text for texts in per_item for text in texts]
        if self.params.normalize:
            vectors, truncated = self.model.encode_texts(flat, batch_size=self.params.batch_size)
        else:
            vectors, truncated = self.model.encode_texts(flat, batch_size=self.params.batch_size, normalize=False)
        results, start = [], 0
        for texts in per_item:
            end = start + len(texts)
            result = ItemResult(outputs={"query_vectors": vectors[start:end]}, prompts=texts)
            cut = [i + 1 for i in range(len(texts)) if truncated[start + i]]
            if cut:
                which = "" if len(texts) == 1 else f" (text {', '.join(map(str, cut))})"
                result.notes.append(f"text longer than CLIP's context length: truncated{which}")
            if not self.params.normalize:
                result.notes.append("raw CLIP features (not normalized)")
            results.append(result)
            start = end
        return results


class EmbedImage(Component):
    kind = "embed_image"
    description = "Embed the reference image with CLIP (L2-normalized unless normalize: false), for fusion with the text."
    inputs = {"image": Port("image", "image")}
    outputs = {"image_vectors": "vectors"}
    model_types = ("clip",)
    Params = EmbedParams

    def run(self, items: list[dict[str, Any]]) -> list[ItemResult]:
        import torch

        vectors = []
        for start in range(0, len(items), self.params.batch_size):
            pixels = torch.stack([self.model.preprocess(item["image"]) for item in items[start : start + self.params.batch_size]])
            if self.params.normalize:
                vectors.append(self.model.encode_images(pixels))
            else:
                vectors.append(self.model.encode_images(pixels, normalize=False))
        notes = [] if self.params.normalize else ["raw CLIP features (not normalized)"]
        return [ItemResult(outputs={"image_vectors": v[None]}, notes=list(notes)) for v in np.concatenate(vectors)]
