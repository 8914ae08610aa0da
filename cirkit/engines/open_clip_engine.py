"""CLIP through open_clip: a model name + pretrained tag, or a local config JSON + checkpoint.

`identity` names the exact model and preprocessing; a gallery index stores it, and a query whose
CLIP identity differs is refused.

Image preprocessing (`preprocess`): "clip" is open_clip's own (resize the short side, centre crop,
normalize); "targetpad" first pads an image whose long side is at least `pad_ratio` times its short
side with black, evenly on both sides of the short side, to about that ratio (cirkit.images.pad_to_ratio),
then does the same. It applies to every image the model embeds: gallery images and reference images.
The identity records targetpad as `preprocess_type` and `pad_ratio`; an identity without them
(every index built before the option existed) means "clip".

`precision` is the arithmetic of the forward pass: fp32, or bf16/fp16 under torch.autocast (weights
stay fp32; matrix products run in half precision, norms and softmax in fp32). "auto" is fp32 on
CPU and bf16 (fp16 where bf16 is missing) on CUDA. It is not part of the identity: vectors of
another precision are close, not equal, and an index records the precision it was built with.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from cirkit.errors import CirkitError, one_line


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PREPROCESS_TYPES = ("clip", "targetpad")
DEFAULT_PAD_RATIO = 1.25


def preprocess_option(value: Any) -> dict[str, Any] | None:
    """A model entry's `preprocess` ("clip", "targetpad", or {name: targetpad, pad_ratio: R}) checked:
    None for clip, else {"name": "targetpad", "pad_ratio": R}. Raises ValueError."""
    if value is None:
        return None
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise ValueError("preprocess is 'clip', 'targetpad' or {name: targetpad, pad_ratio: 1.25}")
    unknown = set(value) - {"name", "pad_ratio"}
    if unknown:
        raise ValueError(f"preprocess: unknown key(s) {sorted(unknown)}: give name and pad_ratio")
    name = value.get("name", "targetpad" if "pad_ratio" in value else None)
    if name not in PREPROCESS_TYPES:
        raise ValueError(f"preprocess: unknown type {name!r}: choose clip or targetpad")
    if name == "clip":
        if "pad_ratio" in value:
            raise ValueError("preprocess: pad_ratio goes with targetpad")
        return None
    ratio = value.get("pad_ratio", DEFAULT_PAD_RATIO)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio < 1:
        raise ValueError(f"preprocess: pad_ratio must be a number >= 1, got {ratio!r}")
    return {"name": "targetpad", "pad_ratio": float(ratio)}


class TargetPad:
    """The first transform of targetpad preprocessing (a class, so DataLoader workers can pickle it)."""

    def __init__(self, ratio: float):
        self.ratio = ratio

    def __call__(self, image):
        from cirkit.images import pad_to_ratio

        return pad_to_ratio(image, self.ratio)

    def __repr__(self) -> str:
        return f"TargetPad(ratio={self.ratio})"
_DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise CirkitError(f"unknown precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    return precision


def default_batch_size(device: str) -> int:
    """Images per forward pass when none is asked: large enough to keep a GPU busy, small on CPU."""
    return 256 if device.startswith("cuda") else 64


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class ClipModel:
    def __init__(
        self, name: str, pretrained: str | None = None, *, device: str = "auto", dtype: str = "auto",
        precision: str = "auto", preprocess: str | dict[str, Any] | None = None,
    ):
        """`dtype` (a pipeline's setting) casts the weights; `precision` (see the module doc) runs an
        fp32 model under autocast, and when given it overrides `dtype`. `preprocess`: a model entry's
        option of that name ("clip", "targetpad", {name: targetpad, pad_ratio: R}; None: clip)."""
        import open_clip
        import torch

        from cirkit.engines.transformers_engine import resolve_device, resolve_dtype

        check_precision(precision)
        try:
            padding = preprocess_option(preprocess)
        except ValueError as exc:
            raise CirkitError(str(exc)) from None
        self.device = resolve_device(device)
        self._autocast = None  # the half dtype of the forward pass under torch.autocast, if any
        if precision == "auto" and dtype != "auto":  # the weights cast as the pipeline says
            self.dtype = resolve_dtype(dtype, self.device)
        else:
            self.dtype = torch.float32
            if precision == "auto" and self.device.startswith("cuda"):
                precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            if precision in ("bf16", "fp16"):
                self._autocast = torch.bfloat16 if precision == "bf16" else torch.float16
        self.precision = _DTYPE_NAMES[str(self._autocast or self.dtype).removeprefix("torch.")]
        self.batch_size = default_batch_size(self.device)
        self._identity: dict[str, Any] = {}
        model_name = name
        if name.endswith(".json"):
            config = Path(name)
            if not config.is_file():
                raise CirkitError(f"open_clip model config not found: {name}")
            open_clip.add_model_config(config)
            model_name = config.stem
            self._identity["config_sha256"] = file_sha256(config)
        self._identity["name"] = model_name
        if pretrained and Path(pretrained).expanduser().is_file():
            self._identity["checkpoint_sha256"] = file_sha256(Path(pretrained).expanduser())
        elif pretrained:
            self._identity["pretrained"] = pretrained
        try:
            # without weights, the same random weights in every process (an index and its queries agree)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                    model_name, pretrained=pretrained or None, device=self.device
                )
            self.tokenizer = open_clip.get_tokenizer(model_name)
        except (RuntimeError, OSError, ValueError, KeyError) as exc:
            what = f"{model_name}/{pretrained}" if pretrained else model_name
            raise CirkitError(f"cannot load CLIP model '{what}': {one_line(exc)}") from None
        if self.dtype != torch.float32:
            self.model.to(self.dtype)
        self.model.eval()
        preprocess_cfg = dict(getattr(self.model.visual, "preprocess_cfg", {}) or {})
        self._identity["preprocess"] = json.loads(json.dumps(preprocess_cfg))
        if padding is not None:
            from torchvision.transforms import Compose

            self.preprocess = Compose([TargetPad(padding["pad_ratio"]), *self.preprocess.transforms])
            self._identity["preprocess_type"] = "targetpad"
            self._identity["pad_ratio"] = padding["pad_ratio"]
        self.dim = int(self.model.text_projection.shape[1]) if hasattr(self.model, "text_projection") and self.model.text_projection is not None else None
        if self.dim is None:
            with torch.no_grad():
                self.dim = int(self.encode_texts(["a"])[0].shape[1])
        self._identity["dim"] = self.dim

    @property
    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def describe(self) -> dict[str, Any]:
        return {"engine": "open_clip", **{k: v for k, v in self._identity.items() if k != "preprocess"}}

    def encode_texts(self, texts: list[str], batch_size: int = 256, normalize: bool = True) -> tuple[np.ndarray, list[bool]]:
        """Text vectors (L2-normalized unless `normalize` is False), and for each text whether it was cut to the context length."""
        import torch

        truncated = [self._too_long(t) for t in texts]
        vectors = []
        with torch.inference_mode(), self._autocast_context():
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenizer(texts[start : start + batch_size]).to(self.device)
                features = self.model.encode_text(tokens)
                vectors.append(self._normalize(features) if normalize else self._raw(features))
        return np.concatenate(vectors), truncated

    def encode_images(self, pixels, normalize: bool = True) -> np.ndarray:
        """Image vectors (L2-normalized unless `normalize` is False) for a batch of preprocessed image tensors."""
        import torch

        with torch.inference_mode(), self._autocast_context():
            features = self.model.encode_image(pixels.to(self.device, self.dtype, non_blocking=True))
            return self._normalize(features) if normalize else self._raw(features)

    def _autocast_context(self):
        import torch

        if self._autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.split(":")[0], dtype=self._autocast)

    @staticmethod
    def _normalize(features) -> np.ndarray:
        features = features.float()
        features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return features.cpu().numpy().astype(np.float32)

    @staticmethod
    def _raw(features) -> np.ndarray:
        return features.float().cpu().numpy().astype(np.float32)

    def _too_long(self, text: str) -> bool:
        tok = self.tokenizer
        context = getattr(tok, "context_length", None)
        if context is None:
            return False
        if hasattr(tok, "encode") and hasattr(tok, "encoder"):  # open_clip's SimpleTokenizer
            return len(tok.encode(text)) + 2 > context
        ids = tok([text])[0]
        return bool(ids[-1] != 0)


def clip_identity_text(identity: dict[str, Any]) -> str:
    """A short human name for a CLIP identity, for messages."""
    tag = identity.get("pretrained") or (
        "checkpoint " + identity["checkpoint_sha256"][:12] if "checkpoint_sha256" in identity else "random weights"
    )
    if identity.get("preprocess_type", "clip") != "clip":
        tag += f", {identity['preprocess_type']} preprocessing, pad ratio {identity.get('pad_ratio')}"
    return f"{identity.get('name')} ({tag})"
