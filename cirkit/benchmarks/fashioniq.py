"""FashionIQ (Wu et al., CVPR 2021): XiaoxiaoGuo/fashion-iq, one benchmark per category.

On-disk layout under DATA_DIR::

    DATA_DIR/fashioniq/captions/cap.{dress,shirt,toptee}.{val,test}.json
    DATA_DIR/fashioniq/image_splits/split.{dress,shirt,toptee}.{val,test}.json
    DATA_DIR/fashioniq/images/B0084Y8XIU.jpg        (flat folder of all categories; .png also found)

Benchmarks ``fashioniq-dress``, ``fashioniq-shirt``, ``fashioniq-toptee`` are evaluated each on its
own, gallery = the category's split file (the reference stays in the gallery). Queries: id =
``f"{category}-{index}"`` (index in the captions file); text = the two captions stripped of
``".?, "`` and joined as ``"c0 and c1"`` (as SEARLE/CIReVL do); extra: ``captions``, ``category``.
The test split has no targets, and no evaluation server: it cannot be scored.
"""

from __future__ import annotations

from pathlib import Path

from cirkit.benchmarks._io import Records, read_json_list, require_file
from cirkit.benchmarks.base import Benchmark, CirQuery, check_split, looks_like_inside
from cirkit.errors import CirkitError

CATEGORIES = ("dress", "shirt", "toptee")
SPLITS = ("val", "test")
LAYOUT = ("layout: DATA_DIR/fashioniq/captions/cap.CATEGORY.SPLIT.json, "
          "DATA_DIR/fashioniq/image_splits/split.CATEGORY.SPLIT.json, DATA_DIR/fashioniq/images/NAME.jpg")


def captions_file(data_dir: Path, category: str, split: str) -> Path:
    return Path(data_dir) / "fashioniq" / "captions" / f"cap.{category}.{split}.json"


def split_file(data_dir: Path, category: str, split: str) -> Path:
    return Path(data_dir) / "fashioniq" / "image_splits" / f"split.{category}.{split}.json"


def join_captions(captions: list[str] | tuple[str, ...]) -> str:
    """The protocol's modification text: ``f"{c0.strip('.?, ')} and {c1.strip('.?, ')}"``."""
    return " and ".join(c.strip(".?, ") for c in captions)


def _image_ext(data_dir: Path, names: list[str]) -> str:
    images = Path(data_dir) / "fashioniq" / "images"
    if images.is_dir():
        for name in names[:20]:
            for ext in (".jpg", ".png"):
                if (images / f"{name}{ext}").is_file():
                    return ext
    return ".jpg"


def load(data_dir: str | Path, split: str, category: str) -> Benchmark:
    data_dir = Path(data_dir)
    if category not in CATEGORIES:
        raise CirkitError(f"fashioniq: unknown category '{category}'; valid categories: {', '.join(CATEGORIES)}")
    bench = f"fashioniq-{category}"
    check_split(bench, split, SPLITS)
    hint = LAYOUT + looks_like_inside(data_dir, "fashioniq", ("captions", "image_splits"))
    cap_path = require_file(captions_file(data_dir, category, split), f"FashionIQ {category} {split} captions", hint)
    split_path = require_file(split_file(data_dir, category, split), f"FashionIQ {category} {split} image split",
                              hint)

    names = read_json_list(split_path)
    for j, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise CirkitError(f"{split_path}: record {j}: expected an image name string")
    ext = _image_ext(data_dir, names)
    gallery = {name: f"fashioniq/images/{name}{ext}" for name in names}

    has_gt = split == "val"
    rec = Records(cap_path)
    queries: list[CirQuery] = []
    for i, raw in enumerate(read_json_list(cap_path)):
        r = rec.obj(i, raw)
        reference = rec.get(i, r, "candidate", str, nonempty=True)
        captions = rec.get(i, r, "captions", list, nonempty=True)
        if len(captions) != 2 or not all(isinstance(c, str) for c in captions):
            raise rec.fail(i, "'captions' must be a list of two strings")
        targets: tuple[str, ...] = ()
        if has_gt:
            targets = (rec.get(i, r, "target", str, nonempty=True),)
        for name in (reference, *targets):
            if name not in gallery:
                raise rec.fail(i, f"image '{name}' is not in {split_path.name}")
        queries.append(CirQuery(id=f"{category}-{i}", reference=reference, text=join_captions(captions),
                                targets=targets, extra={"captions": tuple(captions), "category": category}))
    return Benchmark(name=bench, split=split, protocol="fashioniq", queries=queries, gallery=gallery,
                     data_dir=data_dir, has_ground_truth=has_gt,
                     files={"captions": cap_path, "image_split": split_path})
