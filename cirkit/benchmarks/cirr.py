"""CIRR (Liu et al., ICCV 2021): the rc2 release of Cuberick-Orion/CIRR (branch cirr_dataset).

On-disk layout under DATA_DIR (the official one: clone the cirr_dataset branch as ``cirr``
and put NLVR2's raw images in ``img_raw``)::

    DATA_DIR/cirr/captions/cap.rc2.{val,test1}.json
    DATA_DIR/cirr/image_splits/split.rc2.{val,test1}.json
    DATA_DIR/cirr/img_raw/dev/dev-244-0-img0.png          (image_splits path "./dev/..." under img_raw/)
    DATA_DIR/cirr/img_raw/test1/test1-147-1-img1.png

When ``cirr/img_raw/`` does not exist but ``cirr/dev/`` or ``cirr/test1/`` does (the layout of
CLIP4Cir-style checkouts), images are read from there.

Queries: id = ``str(pairid)``; targets = ``(target_hard,)`` (empty for test1); candidates =
``img_set.members`` (the reference included: the evaluator drops it). ``reference_rank`` and
``target_rank`` are not positions in ``members`` and are ignored.
"""

from __future__ import annotations

from pathlib import Path

from cirkit.benchmarks._io import Records, read_json_list, read_json_object, require_file
from cirkit.benchmarks.base import Benchmark, CirQuery, check_split, looks_like_inside

SPLITS = ("val", "test1")
VERSION = "rc2"
LAYOUT = "layout: DATA_DIR/cirr/captions/cap.rc2.SPLIT.json, DATA_DIR/cirr/image_splits/split.rc2.SPLIT.json"


def captions_file(data_dir: Path, split: str) -> Path:
    return Path(data_dir) / "cirr" / "captions" / f"cap.{VERSION}.{split}.json"


def split_file(data_dir: Path, split: str) -> Path:
    return Path(data_dir) / "cirr" / "image_splits" / f"split.{VERSION}.{split}.json"


def image_root(data_dir: Path) -> str:
    root = Path(data_dir) / "cirr"
    if not (root / "img_raw").is_dir() and any((root / d).is_dir() for d in ("dev", "test1", "train")):
        return "cirr"
    return "cirr/img_raw"


def load(data_dir: str | Path, split: str) -> Benchmark:
    data_dir = Path(data_dir)
    check_split("cirr", split, SPLITS)
    hint = LAYOUT + looks_like_inside(data_dir, "cirr", ("captions", "image_splits"))
    cap_path = require_file(captions_file(data_dir, split), f"CIRR {split} captions", hint)
    split_path = require_file(split_file(data_dir, split), f"CIRR {split} image split", hint)

    names = read_json_object(split_path)
    root = image_root(data_dir)
    gallery: dict[str, str] = {}
    for name, rel in names.items():
        if not isinstance(rel, str) or not rel.strip():
            raise _fail_split(split_path, name)
        rel = rel[2:] if rel.startswith("./") else rel.lstrip("/")
        gallery[name] = f"{root}/{rel}"

    has_gt = split != "test1"
    rec = Records(cap_path)
    queries: list[CirQuery] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(read_json_list(cap_path)):
        r = rec.obj(i, raw)
        pairid = rec.get(i, r, "pairid", int)
        reference = rec.get(i, r, "reference", str, nonempty=True)
        caption = rec.get(i, r, "caption", str)
        img_set = rec.get(i, r, "img_set", dict)
        members = rec.str_list(i, img_set, "members", nonempty=True) if "members" in img_set else None
        if members is None:
            raise rec.fail(i, "missing 'img_set.members'")
        targets: tuple[str, ...] = ()
        extra = {"pairid": pairid, "img_set_id": img_set.get("id")}
        if has_gt:
            target = rec.get(i, r, "target_hard", str, nonempty=True)
            targets = (target,)
            if isinstance(r.get("target_soft"), dict):
                extra["target_soft"] = dict(r["target_soft"])
        qid = str(pairid)
        if qid in seen:
            raise rec.fail(i, f"pairid {pairid} repeats record {seen[qid]}")
        seen[qid] = i
        for name in (reference, *targets, *members):
            if name not in gallery:
                raise rec.fail(i, f"image '{name}' is not in {split_path.name}")
        if reference not in members:
            raise rec.fail(i, f"reference '{reference}' is not in img_set.members")
        queries.append(CirQuery(id=qid, reference=reference, text=caption, targets=targets,
                                candidates=tuple(members), extra=extra))
    return Benchmark(name="cirr", split=split, protocol="cirr", queries=queries, gallery=gallery,
                     data_dir=data_dir, has_ground_truth=has_gt,
                     files={"captions": cap_path, "image_split": split_path})


def _fail_split(path: Path, name: str):
    from cirkit.errors import CirkitError

    return CirkitError(f"{path}: image '{name}': expected a relative path string")
