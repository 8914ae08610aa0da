"""Captions of the gallery images, kept beside the index, for scoring candidates by text too.

`cirkit index IMAGES --out IDX --captions PIPELINE` makes them (cirkit.pipelines.gallery_captions
runs the pipeline's caption step over the gallery). A caption step with several templates or `n`
samples keeps several captions per image, in the step's order. A search step with
`gallery_captions: w` then scores each candidate by (1 - w) * cos(query, image) +
w * mean_k cos(query_k, caption_k) over the image's captions (query_k = the query, unless the search
is given one query per caption).

Layout, inside the index directory:
    captions/<captioner digest>.jsonl           {"sha256", "captions": [...]} per image, appended as they
                                                come (an older {"sha256", "caption"} line is one caption)
    captions/<captioner digest>-<clip digest>.npz   their CLIP text vectors (L2-normalized), by image hash
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

    def __init__(self, captions: list[list[str]], vectors: np.ndarray):
        self.captions = captions  # per row of the index, the image's captions
        self.vectors = vectors  # (images, captions per image, dim)

    @property
    def per_image(self) -> int:
        return int(self.vectors.shape[1])

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
        counts = {len(vectors[h]) for h in rows}
        if len(counts) > 1:
            raise CirkitError(
                f"the gallery captions in {folder} have {min(counts)} to {max(counts)} captions per image: "
                "re-run `cirkit index ... --captions PIPELINE` so that every image has the same number"
            )
        found = cls(
            [texts.get(h, []) for h in rows],
            np.stack([vectors[h] for h in rows]) if rows else np.zeros((0, 1, index.identity["dim"]), np.float32),
        )
        index._gallery_captions = found
        return found


def read_captions(path: Path) -> dict[str, list[str]]:
    """Captions by image hash; a line cut by an interruption is ignored (that image is captioned again)."""
    captions: dict[str, list[str]] = {}
    if not path.is_file():
        return captions
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                record = json.loads(line)
                texts = record["captions"] if "captions" in record else [record["caption"]]
                if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
                    continue
                captions[record["sha256"]] = texts
            except (ValueError, KeyError, TypeError):
                continue
    return captions


def read_vectors(path: Path) -> dict[str, np.ndarray]:
    """Vectors by image hash, (captions per image, dim) each; a file of one vector per image reads as one caption."""
    if not path.is_file():
        return {}
    try:
        with np.load(path) as data:
            vectors = data["vectors"]
            if vectors.ndim == 2:
                vectors = vectors[:, None, :]
            return dict(zip(data["hashes"].tolist(), vectors))
    except (OSError, ValueError, KeyError):
        return {}


def write_vectors(path: Path, vectors: dict[str, np.ndarray]) -> None:
    data = {"hashes": np.array(list(vectors), dtype=str), "vectors": np.stack(list(vectors.values()))}
    _atomic_write(path, lambda p: np.savez(p, **data))


def activate(index: GalleryIndex, active: dict[str, Any]) -> None:
    """Make these captions (their files named in `active`) the ones the index scores with."""
    _atomic_write(index.directory / DIRECTORY / ACTIVE, lambda p: p.write_text(json.dumps(active, indent=1), encoding="utf-8"))
