"""Images a step makes (an edited reference image) kept as files, content-addressed under the data directory.

A step's image output is written once as PNG to DATA_DIR/images/SHA[:2]/SHA.png and stored in the
run as {"image_file": path, "sha256": SHA}; steps that read it get the decoded image again, from a
fresh run, the cache or a re-run alike.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

from PIL import Image

from cirkit.errors import CirkitError, ImageError
from cirkit.images import load_image


def stored_images(outputs: dict[str, Any], data_dir: Path) -> dict[str, Any]:
    """The outputs with every image written to its file and replaced by a reference to it."""
    return {name: _store(value, data_dir) if isinstance(value, Image.Image) else value for name, value in outputs.items()}


def live_values(values: dict[str, Any]) -> dict[str, Any]:
    """The values with every stored image reference decoded back into an image."""
    return {name: _load(value) if is_image_ref(value) else value for name, value in values.items()}


def is_image_ref(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"image_file", "sha256"}


def _store(image: Image.Image, data_dir: Path) -> dict[str, str]:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    path = Path(data_dir) / "images" / sha[:2] / f"{sha}.png"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.part")
        partial.write_bytes(data)
        partial.replace(path)
    return {"image_file": str(path), "sha256": sha}


def _load(ref: dict[str, str]) -> Image.Image:
    try:
        return load_image(ref["image_file"])
    except ImageError as exc:
        raise CirkitError(f"stored image {ref['image_file']}: {exc}") from None
