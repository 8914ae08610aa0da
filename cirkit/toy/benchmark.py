"""The toy composed-retrieval benchmark, written in CIRR's layout and JSON format.

    DATA_DIR/cirr/captions/cap.rc2.val.json          [{pairid, reference, target_hard, target_soft, caption, img_set}]
    DATA_DIR/cirr/image_splits/split.rc2.val.json    {name: "./dev/NAME.png"}
    DATA_DIR/cirr/img_raw/dev/NAME.png               the gallery: every scene of the world, once

So the CIRR benchmark code reads it as it reads CIRR (`split` "val"). Image names carry the scene
("dev-017-large-red-circle-left-black") so that rankings are readable; no model ever sees a name.
The gallery order is shuffled, so index position and scene order differ.

The queries are fixed by QUERY_SEED. The training script of the toy models never trains on a
query's (reference scene, target scene) pair, in any phrasing, and never sees a gallery rendering.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cirkit.toy.world import ATTRIBUTES, Modification, Scene, all_scenes, modify, render, seed_for, values

GALLERY_SEED = 2024
QUERY_SEED = 7
NUM_QUERIES = 250
SPLIT = "val"
FOLDER = "dev"


@dataclass(frozen=True)
class ToyQuery:
    pairid: int
    reference: Scene
    modification: Modification
    members: tuple[Scene, ...]

    @property
    def target(self) -> Scene:
        return self.modification.target


def gallery_names() -> dict[Scene, str]:
    """Every scene's image name, numbered in a shuffled order."""
    return numbered_names(all_scenes(), GALLERY_SEED, FOLDER)


def numbered_names(scenes: list, seed: int, folder: str) -> dict:
    """Image names FOLDER-NNN-SLUG for the scenes (anything with a `slug`), numbered in an order shuffled by `seed`."""
    order = list(range(len(scenes)))
    random.Random(seed).shuffle(order)
    return {scene: f"{folder}-{number:03d}-{scene.slug}" for number, scene in zip(order, scenes)}


def gallery_image(scene: Scene):
    """The gallery's rendering of a scene (PIL image)."""
    return render(scene, seed_for("gallery", GALLERY_SEED, scene.slug))


def queries(count: int = NUM_QUERIES, seed: int = QUERY_SEED) -> list[ToyQuery]:
    """The benchmark's queries: distinct (reference, target) pairs, 60% one change, 40% two."""
    rng = random.Random(seed)
    scenes = all_scenes()
    seen: set[tuple[Scene, Scene]] = set()
    out: list[ToyQuery] = []
    while len(out) < count:
        reference = rng.choice(scenes)
        mod = modify(reference, rng)
        if (reference, mod.target) in seen:
            continue
        seen.add((reference, mod.target))
        # CIRR's img_set: the reference, the target and four near misses of the target
        near = [
            Scene(**{**_fields(mod.target), attribute: value})
            for attribute in ATTRIBUTES
            for value in values(attribute)
            if value != mod.target.get(attribute)
        ]
        near = [s for s in near if s != reference]
        members = [reference, mod.target, *rng.sample(near, 4)]
        rng.shuffle(members)
        out.append(ToyQuery(pairid=len(out), reference=reference, modification=mod, members=tuple(members)))
    return out


def held_out_pairs() -> set[tuple[Scene, Scene]]:
    """The (reference, target) scene pairs of the benchmark: never in the training data."""
    return {(q.reference, q.target) for q in queries()}


def _fields(scene: Scene) -> dict[str, str]:
    return {a: scene.get(a) for a in ATTRIBUTES}


def captions_records(items: list[ToyQuery] | None = None) -> list[dict[str, Any]]:
    names = gallery_names()
    records = []
    for q in items if items is not None else queries():
        members = [names[s] for s in q.members]
        records.append(
            {
                "pairid": q.pairid,
                "reference": names[q.reference],
                "target_hard": names[q.target],
                "target_soft": {names[q.target]: 1.0},
                "caption": q.modification.text,
                "img_set": {
                    "id": q.pairid,
                    "members": members,
                    "reference_rank": members.index(names[q.reference]),
                    "target_rank": members.index(names[q.target]),
                },
            }
        )
    return records


def split_record() -> dict[str, str]:
    return {name: f"./{FOLDER}/{name}.png" for name in sorted(gallery_names().values())}


def captions_path(data_dir: Path) -> Path:
    return Path(data_dir) / "cirr" / "captions" / f"cap.rc2.{SPLIT}.json"


def split_path(data_dir: Path) -> Path:
    return Path(data_dir) / "cirr" / "image_splits" / f"split.rc2.{SPLIT}.json"


def images_root(data_dir: Path) -> Path:
    """The gallery folder to index (holds dev/NAME.png)."""
    return Path(data_dir) / "cirr" / "img_raw"


def write_benchmark(data_dir: str | Path, on_image=None, prune: bool = False) -> dict[str, Path]:
    """Write (or complete, or repair) the toy benchmark under `data_dir`. Idempotent and safe to
    interrupt: every file is written through a temporary file and renamed, and a file already there
    with the right bytes is left alone.

    `on_image()` is called after each gallery image. `prune` also deletes the other files of the
    image folder (leftovers of an interrupted run or of another version of the world).
    Returns the paths written.
    """
    data_dir = Path(data_dir)
    folder = images_root(data_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    names = gallery_names()
    if prune:
        keep = {f"{name}.png" for name in names.values()}
        for path in folder.iterdir():
            if path.name not in keep and (path.is_file() or path.is_symlink()):
                path.unlink()
    for scene, name in sorted(names.items(), key=lambda kv: kv[1]):
        buffer = io.BytesIO()
        gallery_image(scene).save(buffer, format="PNG")
        _write_if_changed(folder / f"{name}.png", buffer.getvalue())
        if on_image:
            on_image()
    _write_if_changed(split_path(data_dir), _json(split_record()))
    _write_if_changed(captions_path(data_dir), _json(captions_records()))
    return {"captions": captions_path(data_dir), "image_split": split_path(data_dir), "images": images_root(data_dir)}


def _json(data: Any) -> bytes:
    return (json.dumps(data, indent=1) + "\n").encode()


def _write_if_changed(path: Path, data: bytes) -> None:
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def fingerprint() -> str:
    """A digest of the world as the models were trained for it: captions, image names and the
    benchmark's queries. The training script records it; a test compares, so a changed world
    without retrained models is caught."""
    h = hashlib.sha256()
    for scene in all_scenes():
        h.update(scene.caption.encode())
    h.update(_json(split_record()))
    h.update(_json(captions_records()))
    return h.hexdigest()
