"""Gallery captions at index time: the pipeline's caption step run over every gallery image, then
its CLIP over the captions, stored beside the index (cirkit.gallery.captions). A caption step with
several templates or `n` samples keeps all its captions per image, in its order.

The step runs through the runner's own step execution, and its captions are filed under the
step's fingerprint (the same hash as the step cache's keys), by image content hash: an interrupted
run resumes where it stopped, and re-indexing captions only new images.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cirkit.console import progress_bar
from cirkit.errors import CirkitError, ImageError
from cirkit.gallery import GalleryIndex
from cirkit.gallery.captions import DIRECTORY, activate, read_captions, read_vectors, write_vectors
from cirkit.images import load_image
from cirkit.pipelines.fingerprint import model_fingerprint, step_hash
from cirkit.pipelines.runner import run_step


@dataclass
class CaptionReport:
    count: int
    captioned: int
    reused: int
    failed: list[dict[str, str]]


def caption_gallery(index_dir: str | Path, pipeline: Any, models: Any, *, progress: bool = True) -> CaptionReport:
    """Caption every image of the index with the pipeline's caption step and embed the captions."""
    index = GalleryIndex.open(index_dir)
    step = next((s for s in pipeline.steps if s.kind == "caption" and not s.given), None)
    if step is None:
        raise CirkitError(f"pipeline '{pipeline.name}' has no caption step with a model to caption the gallery with")
    clip = models.get(pipeline.clip_model())
    index.check_model(clip.identity)
    spec = pipeline.model_for(step)
    digest = step_hash(spec, step, step.params).hexdigest()[:16]
    folder = index.directory / DIRECTORY
    folder.mkdir(exist_ok=True)
    captions_file = folder / f"{digest}.jsonl"
    done = read_captions(captions_file)
    if not done:
        done = _earlier_captions(folder, spec, step)

    hashes = list(dict.fromkeys(e["sha256"] for e in index.manifest["entries"]))
    path_of = {e["sha256"]: index.root / e["path"] for e in index.manifest["entries"]}
    todo = [h for h in hashes if h not in done]
    failed: list[dict[str, str]] = []
    batch = max(1, step.params.batch_size)
    with progress_bar(progress and bool(todo)) as bar, open(captions_file, "a", encoding="utf-8") as out:
        if done and out.tell() == 0:  # captions of an earlier release, filed under this step's fingerprint
            out.writelines(json.dumps({"sha256": h, "captions": c}) + "\n" for h, c in done.items())
        task = bar.add_task("captioning the gallery", total=len(todo))
        for start in range(0, len(todo), batch):
            chunk, items = [], []
            for sha in todo[start : start + batch]:
                try:
                    items.append({"image": load_image(path_of[sha])})
                    chunk.append(sha)
                except ImageError as exc:
                    failed.append({"path": str(path_of[sha]), "reason": str(exc)})
            _, results = run_step(step, step.params, spec, models, items) if chunk else (None, [])
            for sha, result in zip(chunk, results):
                if result.error:
                    failed.append({"path": str(path_of[sha]), "reason": result.error})
                    continue
                done[sha] = list(result.outputs.get("captions") or [result.outputs["caption"]])
                out.write(json.dumps({"sha256": sha, "captions": done[sha]}) + "\n")
            out.flush()
            os.fsync(out.fileno())
            bar.advance(task, len(todo[start : start + batch]))

    covered = [h for h in hashes if h in done]
    clip_digest = hashlib.sha256(json.dumps(clip.identity, sort_keys=True).encode()).hexdigest()[:16]
    vectors_file = folder / f"{digest}-{clip_digest}.npz"
    known = read_vectors(vectors_file)
    missing = [h for h in covered if h not in known]
    if missing:
        flat = [text for h in missing for text in done[h]]
        vectors, _ = clip.encode_texts(flat)
        start = 0
        for h in missing:
            known[h], start = vectors[start : start + len(done[h])], start + len(done[h])
    counts = {len(known[h]) for h in covered}
    if len(counts) > 1:
        raise CirkitError(f"the caption step '{step.name}' gave {min(counts)} to {max(counts)} captions per image: every image needs the same number")
    if missing:
        write_vectors(vectors_file, known)
    activate(index, {
        "captioner": {"engine": spec.engine, "model": spec.id or spec.name},
        "step": step.name,
        "templates": [p.name for p in step.prompts],
        "captions_file": captions_file.name,
        "vectors_file": vectors_file.name,
        "clip": clip.identity,
        "count": len(covered),
        "per_image": counts.pop() if counts else 0,
    })
    return CaptionReport(count=len(covered), captioned=len(todo) - len(failed), reused=len(hashes) - len(todo), failed=failed)


def _earlier_captions(folder: Path, spec: Any, step: Any) -> dict[str, list[str]]:
    """Captions filed by release 0.1, under a digest of the same model, params and templates."""
    text = json.dumps([model_fingerprint(spec), step.params.model_dump(exclude={"batch_size"}), [p.text for p in step.prompts]], sort_keys=True)
    return read_captions(folder / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.jsonl")
