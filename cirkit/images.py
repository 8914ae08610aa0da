"""Loading user images safely: every bad file becomes an ImageError with a short reason.

Messages never contain the path; callers add it (``f"{path}: {err}"``).
"""

from __future__ import annotations

import hashlib
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cirkit.errors import CirkitError, ImageError

# Twice Pillow's default Image.MAX_IMAGE_PIXELS (89_478_485): the point where Pillow itself
# raises DecompressionBombError. About 13400x13400, or ~537 MB once decoded to RGB.
DEFAULT_MAX_PIXELS = 178_956_970

# Suffixes (lower case) that iter_image_files picks up, limited to those this Pillow can open
# (AVIF needs Pillow >= 11.3; HEIC is not supported).
IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".gif", ".bmp", ".dib",
        ".tif", ".tiff", ".webp", ".avif", ".ppm", ".pgm", ".pbm", ".pnm", ".tga",
    }
) & frozenset(Image.registered_extensions())

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "PA")
_WHITE = (255, 255, 255, 255)


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `path` fully into an upright 8-bit RGB image, or raise ImageError.

    EXIF orientation is applied, animations give their first frame, transparency is
    composited over white and high bit-depth grayscale is rescaled to 0..255.
    Images over `max_pixels` are refused from the header, before any decoding.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise ImageError(_os_reason(e)) from e
    if not stat.S_ISREG(st.st_mode):
        raise ImageError("not a regular file")
    if st.st_size == 0:
        raise ImageError("empty file (0 bytes)")
    try:
        f = open(path, "rb")
    except OSError as e:
        raise ImageError(_os_reason(e)) from e

    # Pillow warns (DecompressionBombWarning, corrupt EXIF, ...) on user files; we report
    # through ImageError only. Not thread-safe before Python 3.14, like all warning filters.
    with f, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(f) as im:  # lazy: reads the header only
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageError(f"too large: {w}x{h} pixels exceeds the limit of {max_pixels}")
                im.load()  # first frame only for animations
                try:
                    im = ImageOps.exif_transpose(im)
                except Exception:
                    pass  # unreadable EXIF: keep the stored orientation
                return _to_rgb(im)
        except ImageError:
            raise
        except Exception as e:  # Pillow raises many types on bad data
            raise ImageError(_decode_reason(e)) from e


def _os_reason(e: OSError) -> str:
    if isinstance(e, (FileNotFoundError, NotADirectoryError)):
        return "missing file"
    if isinstance(e, PermissionError):
        return "unreadable: permission denied"
    return f"unreadable: {e.strerror or e}"


def _decode_reason(e: Exception) -> str:
    if isinstance(e, Image.DecompressionBombError):
        return "too large: exceeds Pillow's decompression-bomb limit"
    if isinstance(e, MemoryError):
        return "too large: out of memory while decoding"
    if isinstance(e, UnidentifiedImageError):
        return "not an image"
    if isinstance(e, OSError) and e.errno is not None:  # a real I/O error, not a decoder one
        return _os_reason(e)
    return "corrupt or truncated image"


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in _SIXTEEN_BIT or im.mode in ("I", "F"):
        im = _to_8bit(im)
    elif im.mode == "LAB":
        im = _lab_to_rgb(im)
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    try:
        return im.convert("RGB")  # a copy even when already RGB
    except ValueError as e:
        raise ImageError(f"unsupported pixel format ({im.mode})") from e


def _to_8bit(im: Image.Image) -> Image.Image:
    """Scale 16/32-bit grayscale to "L" (Pillow's convert clips at 255: mostly white)."""
    a = np.nan_to_num(np.asarray(im, dtype=np.float64))
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if im.mode in _SIXTEEN_BIT or (im.mode == "I" and lo >= 0 and hi <= 65535):
        a = a / 257  # 16-bit samples (old Pillow opens 16-bit PNGs as "I")
    elif im.mode == "F" and lo >= 0 and hi <= 1:
        a = a * 255
    else:  # other ranges: stretch min..max
        a = (a - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


def _lab_to_rgb(im: Image.Image) -> Image.Image:
    try:
        from PIL import ImageCms

        srgb, lab = ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB")
        return ImageCms.applyTransform(im, ImageCms.buildTransform(lab, srgb, "LAB", "RGB"))
    except ImportError:  # Pillow built without littlecms
        return im.convert("RGB")


def pad_to_ratio(image: Image.Image, ratio: float) -> Image.Image:
    """Pad with black, the same number of pixels on both sides of the short side, when the long side
    is at least `ratio` times the short side: each side gets int((long / ratio - short) / 2) pixels,
    so the result is about `ratio`:1. Other images are returned as they are."""
    w, h = image.size
    if min(w, h) == 0 or max(w, h) / min(w, h) < ratio:
        return image
    target = max(w, h) / ratio
    hp = max(int((target - w) / 2), 0)
    vp = max(int((target - h) / 2), 0)
    if not hp and not vp:
        return image
    padded = Image.new(image.mode, (w + 2 * hp, h + 2 * vp), 0)
    padded.paste(image, (hp, vp))
    return padded


def image_sha256(path: str | Path) -> str:
    """Hex SHA-256 of the file's bytes, read in chunks. Raises ImageError if unreadable."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except IsADirectoryError as e:
        raise ImageError("not a regular file") from e
    except OSError as e:
        raise ImageError(_os_reason(e)) from e


def iter_image_files(root: Path) -> list[Path]:
    """Image files under `root` (suffix in IMAGE_EXTENSIONS, any case), sorted by relative path.

    Hidden files and folders (name starting with ".") are skipped. Symlinked folders are
    followed, but each real folder is visited once, so symlink loops end. Unreadable
    folders are skipped. Raises CirkitError if `root` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise CirkitError(f"not a folder: {root}")
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name, reverse=True)  # stack pops in order
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    stack.append(folder / entry.name)
                elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                    found.append(folder / entry.name)
            except OSError:
                continue
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())
