"""Captions of the gallery images, kept beside the index, for scoring candidates by text too.

`cirkit index IMAGES --out IDX --captions PIPELINE` makes them (cirkit.pipelines.gallery_captions
runs the pipeline's caption step over the gallery). A search step with `gallery_captions: w` then
scores each candidate by (1 - w) * cos(query, image) + w * cos(query, caption).

Layout, inside the index directory:
    captions/<captioner digest>.jsonl           {"sha256", "caption"} per image, appended as they come
    captions/<captioner digest>-<clip digest>.npz   their CLIP text vectors, by image hash
    captions/active.json                        which of those the index uses, and what made them

Captions are keyed by image content hash and by the captioner's configuration, so an interrupted
run resumes where it stopped and re-indexing captions only new images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cirkit.errors import CirkitError, one_line
from cirkit.gallery.index import GalleryIndex, _atomic_write

DIRECTORY = "captions"
ACTIVE = "active.json"


class GalleryCaptions:
    """The gallery captions and their vectors, row-aligned with an opened index."""

    def __init__(self, captions: list[str | None], vectors: np.ndarray):
        self.captions = captions
        self.vectors = vectors

    @classmethod
    def of(cls, index: GalleryIndex) -> GalleryCaptions:
        cached = getattr(index, "_gallery_captions", None)
        if cached is not None:
            return cached
        folder = index.directory / DIRECTORY
        try:
            active = json.loads((folder / ACTIVE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CirkitError(
                f"the index in {index.directory} has no gallery captions: "
                f"add them with `cirkit index IMAGES --out {index.directory} --captions PIPELINE`"
            ) from None
        except (OSError, ValueError) as exc:
            raise CirkitError(f"{folder / ACTIVE}: unreadable ({one_line(exc)})") from None
        if active.get("clip") != index.identity:
            raise CirkitError(f"the gallery captions in {folder} were embedded with another CLIP than the index: re-run `cirkit index --captions`")
        texts = read_captions(folder / active["captions_file"])
        vectors = read_vectors(folder / active["vectors_file"])
        rows = [e["sha256"] for e in index.manifest["entries"]]
        absent = sum(1 for h in rows if h not in vectors)
        if absent:
            raise CirkitError(
                f"gallery captions cover {len(rows) - absent} of the {len(rows)} images in {index.directory}: "
                "re-run `cirkit index ... --captions PIPELINE` to caption the rest"
            )
        found = cls([texts.get(h) for h in rows], np.stack([vectors[h] for h in rows]) if rows else np.zeros((0, index.identity["dim"]), np.float32))
        index._gallery_captions = found
        return found


def read_captions(path: Path) -> dict[str, str]:
    """Captions by image hash; a line cut by an interruption is ignored (that image is captioned again)."""
    captions: dict[str, str] = {}
    if not path.is_file():
        return captions
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                record = json.loads(line)
                captions[record["sha256"]] = record["caption"]
            except (ValueError, KeyError, TypeError):
                continue
    return captions


def read_vectors(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    try:
        with np.load(path) as data:
            return dict(zip(data["hashes"].tolist(), data["vectors"]))
    except (OSError, ValueError, KeyError):
        return {}


def write_vectors(path: Path, vectors: dict[str, np.ndarray]) -> None:
    data = {"hashes": np.array(list(vectors), dtype=str), "vectors": np.stack(list(vectors.values()))}
    _atomic_write(path, lambda p: np.savez(p, **data))


def activate(index: GalleryIndex, active: dict[str, Any]) -> None:
    """Make these captions (their files named in `active`) the ones the index scores with."""
    _atomic_write(index.directory / DIRECTORY / ACTIVE, lambda p: p.write_text(json.dumps(active, indent=1), encoding="utf-8"))
