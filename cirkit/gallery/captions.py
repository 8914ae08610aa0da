"""Captions of the gallery images, computed at index time, for scoring candidates by text too.

`cirkit index IMAGES --out IDX --captions PIPELINE` captions every gallery image with the
pipeline's caption step (its model, template and parameters) and embeds the captions with the
pipeline's CLIP. A search step with `gallery_captions: w` then scores each candidate by
(1 - w) * cos(query, image) + w * cos(query, caption).

Layout, inside the index directory:
    captions/<captioner digest>.jsonl           {"sha256", "caption"} per image, appended as they come
    captions/<captioner digest>-<clip digest>.npz   their CLIP text vectors, by image hash
    captions/active.json                        which of those the index uses, and what made them

Captions are keyed by image content hash and by the captioner's configuration, so an interrupted
run resumes where it stopped and re-indexing captions only new images.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cirkit.console import progress_bar
from cirkit.errors import CirkitError, ImageError, one_line
from cirkit.gallery.index import GalleryIndex, _atomic_write
from cirkit.images import load_image

DIRECTORY = "captions"
ACTIVE = "active.json"


@dataclass
class CaptionReport:
    count: int
    captioned: int
    reused: int
    failed: list[dict[str, str]]


def caption_gallery(index_dir: str | Path, pipeline: Any, models: Any, *, progress: bool = True) -> CaptionReport:
    """Caption every image of the index with the pipeline's caption step and embed the captions."""
    from cirkit.pipelines.fingerprint import model_fingerprint

    index = GalleryIndex.open(index_dir)
    step = next((s for s in pipeline.steps if s.kind == "caption" and not s.given), None)
    if step is None:
        raise CirkitError(f"pipeline '{pipeline.name}' has no caption step with a model to caption the gallery with")
    clip = models.get(pipeline.clip_model())
    index.check_model(clip.identity)
    spec = pipeline.model_for(step)
    captioner = json.dumps(
        [model_fingerprint(spec), step.params.model_dump(exclude={"batch_size"}), [p.text for p in step.prompts]], sort_keys=True
    )
    digest = _digest(captioner)
    folder = index.directory / DIRECTORY
    folder.mkdir(exist_ok=True)
    captions_file = folder / f"{digest}.jsonl"
    done = _read_captions(captions_file)

    hashes = list(dict.fromkeys(e["sha256"] for e in index.manifest["entries"]))
    path_of = {e["sha256"]: index.root / e["path"] for e in index.manifest["entries"]}
    todo = [h for h in hashes if h not in done]
    failed: list[dict[str, str]] = []
    if todo:
        model = models.get(spec)
        component = step.component(step.params, model=model, prompts=step.prompts)
        batch = max(1, step.params.batch_size)
        with progress_bar(progress) as bar, open(captions_file, "a", encoding="utf-8") as out:
            task = bar.add_task("captioning the gallery", total=len(todo))
            for start in range(0, len(todo), batch):
                chunk, images = [], []
                for sha in todo[start : start + batch]:
                    try:
                        images.append(load_image(path_of[sha]))
                        chunk.append(sha)
                    except ImageError as exc:
                        failed.append({"path": str(path_of[sha]), "reason": str(exc)})
                for sha, result in zip(chunk, component.run([{"image": image} for image in images]) if chunk else []):
                    if result.error:
                        failed.append({"path": str(path_of[sha]), "reason": result.error})
                        continue
                    done[sha] = result.outputs["caption"]
                    out.write(json.dumps({"sha256": sha, "caption": done[sha]}) + "\n")
                out.flush()
                os.fsync(out.fileno())
                bar.advance(task, len(todo[start : start + batch]))

    covered = [h for h in hashes if h in done]
    vectors_file = folder / f"{digest}-{_digest(json.dumps(clip.identity, sort_keys=True))}.npz"
    known = _read_vectors(vectors_file)
    missing = [h for h in covered if h not in known]
    if missing:
        vectors, _ = clip.encode_texts([done[h] for h in missing])
        known.update(zip(missing, vectors))
        data = {"hashes": np.array(list(known), dtype=str), "vectors": np.stack(list(known.values()))}
        _atomic_write(vectors_file, lambda p: np.savez(p, **data))
    active = {
        "captioner": {"engine": spec.engine, "model": spec.id or spec.name},
        "step": step.name,
        "templates": [p.name for p in step.prompts],
        "captions_file": captions_file.name,
        "vectors_file": vectors_file.name,
        "clip": clip.identity,
        "count": len(covered),
    }
    _atomic_write(folder / ACTIVE, lambda p: p.write_text(json.dumps(active, indent=1), encoding="utf-8"))
    return CaptionReport(count=len(covered), captioned=len(todo) - len(failed), reused=len(hashes) - len(todo), failed=failed)


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
        texts = _read_captions(folder / active["captions_file"])
        vectors = _read_vectors(folder / active["vectors_file"])
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


def _read_captions(path: Path) -> dict[str, str]:
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


def _read_vectors(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    try:
        with np.load(path) as data:
            return dict(zip(data["hashes"].tolist(), data["vectors"]))
    except (OSError, ValueError, KeyError):
        return {}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
