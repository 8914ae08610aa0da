"""Image-editing models through diffusers (an optional extra: pip install -e ".[diffusers]").

Any diffusers pipeline that takes an image and a prompt (InstructPix2Pix, FLUX.1 Kontext,
Qwen-Image-Edit, ...) is loaded with `DiffusionPipeline.from_pretrained` from a hub id or a local
directory; `options` of the model entry go to `from_pretrained`. It runs on the GPU when there is
one (bf16/fp16 there, fp32 on CPU unless `dtype` says otherwise).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from cirkit.engines.transformers_engine import resolve_device, resolve_dtype
from cirkit.errors import CirkitError, one_line


class EditParams(BaseModel):
    """How an image is edited: denoising steps, guidance, the seed, and the batch size."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(20, ge=1, le=1000)
    guidance_scale: float = Field(7.5, ge=0.0, le=100.0)  # text guidance
    image_guidance_scale: float | None = Field(1.5, ge=0.0, le=100.0)  # pipelines that take one (InstructPix2Pix)
    true_cfg_scale: float | None = Field(None, ge=0.0, le=100.0)  # pipelines that take one (Qwen-Image-Edit, FLUX.1 Kontext)
    size: int | None = Field(None, ge=8, le=4096)  # edit at this many pixels on the long side (None: the pipeline's default)
    seed: int = 0
    batch_size: int = Field(4, ge=1, le=256)


class DiffusersEditor:
    """One loaded image-editing pipeline."""

    def __init__(self, spec):
        try:
            import diffusers
        except ImportError:
            raise CirkitError("model engine 'diffusers' needs the diffusers package: pip install -e \".[diffusers]\"") from None
        self.model_id = spec.id
        self.revision = spec.revision
        self.device = resolve_device(spec.device)
        self.dtype = resolve_dtype(spec.dtype, self.device)
        try:
            self.pipeline = diffusers.DiffusionPipeline.from_pretrained(spec.id, revision=spec.revision, torch_dtype=self.dtype, **spec.options)
        except Exception as exc:  # diffusers raises many types for a missing or foreign directory
            raise CirkitError(f"cannot load image-editing model '{spec.id}': {type(exc).__name__}: {one_line(exc)}") from None
        accepted = inspect.signature(self.pipeline.__call__).parameters
        if "image" not in accepted or "prompt" not in accepted:
            raise CirkitError(f"model '{spec.id}' ({type(self.pipeline).__name__}) is not an image-editing pipeline: it takes no image and prompt")
        self.accepts = set(accepted)
        self.pipeline.to(self.device)
        self.pipeline.set_progress_bar_config(disable=True)

    def describe(self) -> dict[str, Any]:
        return {
            "engine": "diffusers",
            "model": self.model_id,
            "pipeline": type(self.pipeline).__name__,
            "revision": self.revision,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": self.device,
        }

    def edit(self, images: list[Image.Image], prompts: list[str], params: EditParams, on_batch: Callable[[int], None] | None = None) -> list[Image.Image]:
        """Each image edited as its prompt says, in request order. Batches hold images of one size
        (a pipeline's batch shares one shape); every request's noise comes from its own generator
        seeded with `seed`, so an edit does not depend on the batch it ran in."""
        import torch

        sized = [_sized(image, params.size) for image in images]
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(sized):
            by_size.setdefault(image.size, []).append(i)
        out: list[Image.Image | None] = [None] * len(images)
        for (width, height), indices in by_size.items():
            for start in range(0, len(indices), params.batch_size):
                chunk = indices[start : start + params.batch_size]
                kwargs: dict[str, Any] = {
                    "prompt": [prompts[i] for i in chunk],
                    "image": [sized[i] for i in chunk],
                    "num_inference_steps": params.steps,
                    "guidance_scale": params.guidance_scale,
                    "generator": [torch.Generator(self.device).manual_seed(params.seed) for _ in chunk],
                    "output_type": "pil",
                }
                if params.image_guidance_scale is not None and "image_guidance_scale" in self.accepts:
                    kwargs["image_guidance_scale"] = params.image_guidance_scale
                if params.true_cfg_scale is not None and "true_cfg_scale" in self.accepts:
                    kwargs["true_cfg_scale"] = params.true_cfg_scale
                if {"height", "width"} <= self.accepts:
                    kwargs.update(height=height, width=width)
                with torch.inference_mode():
                    edited = self.pipeline(**kwargs).images
                for i, image in zip(chunk, edited):
                    out[i] = image.convert("RGB")
                if on_batch:
                    on_batch(len(chunk))
        return out  # type: ignore[return-value]


def _sized(image: Image.Image, size: int | None) -> Image.Image:
    """The image scaled so its long side is `size`, both sides multiples of 8 (latent-space models need it)."""
    if size is None:
        return image
    scale = size / max(image.size)
    width, height = (max(8, round(side * scale / 8) * 8) for side in image.size)
    return image.resize((width, height), Image.Resampling.BICUBIC)
