"""A user's own triplets: one JSON object per line.

    {"id": "q1", "reference": "shoes/red.jpg", "text": "the same but in blue",
     "targets": ["shoes/blue.jpg"], "gallery": ["shoes/blue.jpg", "shoes/green.jpg"]}

- ``id``: a string or integer, unique in the file.
- ``reference`` and every name: an image path relative to the image root (POSIX ``/``).
- ``text``: the modification text.
- ``targets``: ground truth images (optional; omit or leave empty when unknown).
- ``gallery``: optional per-query candidate set; without it the query ranks the whole gallery.

On-disk layout: ``DATA_DIR/SPLIT.jsonl`` with the images under ``DATA_DIR`` (``load("triplets",
DATA_DIR, SPLIT)``), or any file with :func:`load_triplets`. The gallery is every image file under
the image root, plus every image the file names (those missing on disk show in
:meth:`Benchmark.check_images`). Evaluation: Recall@{1,5,10,50} (a hit is any target in the top K)
and mAP@{5,10,25,50} (CIRCO's AP), with the reference removed from the ranking.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from cirkit.benchmarks._io import Records
from cirkit.benchmarks.base import Benchmark, CirQuery
from cirkit.errors import CirkitError


def _clean_name(rec: Records, i: int, field: str, name: str) -> str:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise rec.fail(i, f"'{field}': '{name}' must be a path relative to the image folder (no '..')")
    return str(p)


def load_triplets(path: str | Path, image_root: str | Path | None = None, *, split: str | None = None) -> Benchmark:
    """Load a triplets JSONL file; images are read relative to `image_root` (default: its folder)."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    if not path.is_file():
        raise CirkitError(f"triplets: expected file {path} is missing")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise CirkitError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise CirkitError(f"{path}: cannot read: {e.strerror or e}") from None
    rec = Records(path, unit="line", base=1)
    queries: list[CirQuery] = []
    mentioned: dict[str, None] = {}
    seen: dict[str, int] = {}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            raise rec.fail(i, f"not valid JSON: {e.msg} at column {e.colno}") from None
        r = rec.obj(i, raw)
        qid = rec.get(i, r, "id", (str, int))
        qid = str(qid)
        if not qid.strip():
            raise rec.fail(i, "'id' is empty")
        if qid in seen:
            raise rec.fail(i, f"id '{qid}' repeats line {seen[qid] + 1}")
        seen[qid] = i
        reference = _clean_name(rec, i, "reference", rec.get(i, r, "reference", str, nonempty=True))
        text = rec.get(i, r, "text", str)
        targets = [_clean_name(rec, i, "targets", n) for n in (rec.str_list(i, r, "targets", optional=True) or [])]
        if len(set(targets)) != len(targets):
            raise rec.fail(i, "'targets' repeats an image")
        cand = rec.str_list(i, r, "gallery", optional=True)
        candidates = None
        if cand is not None:
            if not cand:
                raise rec.fail(i, "'gallery' is empty")
            candidates = tuple(dict.fromkeys(_clean_name(rec, i, "gallery", n) for n in cand))
            outside = [t for t in targets if t not in candidates]
            if outside:
                raise rec.fail(i, f"target '{outside[0]}' is not in the query's 'gallery'")
        for n in (reference, *targets, *(candidates or ())):
            mentioned[n] = None
        extra = {k: v for k, v in r.items() if k not in ("id", "reference", "text", "targets", "gallery")}
        queries.append(CirQuery(id=qid, reference=reference, text=text, targets=tuple(targets),
                                candidates=candidates, extra=extra))
    if not queries:
        raise CirkitError(f"{path}: no triplets (empty file)")

    gallery: dict[str, str] = {}
    if root.is_dir():
        from cirkit.images import iter_image_files

        for f in iter_image_files(root):
            rel = f.relative_to(root).as_posix()
            gallery[rel] = rel
    for n in mentioned:
        gallery.setdefault(n, n)
    with_gt = [q for q in queries if q.targets]
    return Benchmark(name="triplets", split=split or path.stem, protocol="triplets", queries=queries,
                     gallery=gallery, data_dir=root, has_ground_truth=bool(with_gt), files={"triplets": path})


def load(data_dir: str | Path, split: str) -> Benchmark:
    data_dir = Path(data_dir)
    path = data_dir / f"{split}.jsonl"
    if not path.is_file():
        present = sorted(p.stem for p in data_dir.glob("*.jsonl")) if data_dir.is_dir() else []
        valid = f"; valid splits: {', '.join(present)}" if present else ""
        raise CirkitError(f"triplets {split}: expected file {path} is missing (layout: DATA_DIR/SPLIT.jsonl){valid}")
    return load_triplets(path, data_dir, split=split)
