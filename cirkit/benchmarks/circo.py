"""CIRCO (Baldrati et al., ICCV 2023): miccunifi/CIRCO, over the COCO 2017 unlabeled images.

On-disk layout under DATA_DIR (the official one, with the folder named ``circo``)::

    DATA_DIR/circo/annotations/{val,test}.json
    DATA_DIR/circo/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json   (COCO; gives the gallery)
    DATA_DIR/circo/COCO2017_unlabeled/unlabeled2017/000000355099.jpg              (COCO unlabeled2017 images)

The gallery is the 123,403 images of COCO unlabeled2017, in the order of
``image_info_unlabeled2017.json``. Without that file, ``DATA_DIR/circo/coco_unlabeled2017_gallery_ids.txt``
(one id per line, same order) is used instead. Image names are the ids as strings (``"355099"``);
the file is ``f"{id:012d}.jpg"``.

Queries: id = ``str(id)``; targets = ``gt_img_ids`` (the first is ``target_img_id``, the one the
caption was written for: Recall@K uses it alone); extra: ``shared_concept``, ``semantic_aspects``
(val), ``target`` (val).
"""

from __future__ import annotations

from pathlib import Path

from cirkit.benchmarks._io import Records, read_json, read_json_list
from cirkit.benchmarks.base import Benchmark, CirQuery, check_split, looks_like_inside
from cirkit.errors import CirkitError

SPLITS = ("val", "test")
GALLERY_SIZE = 123_403
IMAGE_DIR = "circo/COCO2017_unlabeled/unlabeled2017"
SEMANTIC_ASPECTS = (
    "cardinality", "addition", "negation", "direct_addressing", "compare_change",
    "comparative_statement", "statement_with_conjunction", "spatial_relations_background", "viewpoint",
)
LAYOUT = ("layout: DATA_DIR/circo/annotations/SPLIT.json, "
          "DATA_DIR/circo/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json")


def annotations_file(data_dir: Path, split: str) -> Path:
    return Path(data_dir) / "circo" / "annotations" / f"{split}.json"


def image_info_file(data_dir: Path) -> Path:
    return Path(data_dir) / "circo" / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json"


def gallery_ids_file(data_dir: Path) -> Path:
    return Path(data_dir) / "circo" / "coco_unlabeled2017_gallery_ids.txt"


def image_name(image_id: int) -> str:
    return str(int(image_id))


def load_gallery(data_dir: Path) -> tuple[dict[str, str], Path]:
    info, ids_txt = image_info_file(data_dir), gallery_ids_file(data_dir)
    gallery: dict[str, str] = {}
    if info.is_file():
        data = read_json(info)
        images = data.get("images") if isinstance(data, dict) else None
        if not isinstance(images, list):
            raise CirkitError(f"{info}: expected a COCO image info object with an 'images' list")
        rec = Records(info, unit="images record")
        for i, raw in enumerate(images):
            r = rec.obj(i, raw)
            image_id = rec.get(i, r, "id", int)
            file_name = rec.get(i, r, "file_name", str, optional=True) or f"{image_id:012d}.jpg"
            gallery[image_name(image_id)] = f"{IMAGE_DIR}/{file_name}"
        return gallery, info
    if ids_txt.is_file():
        try:
            lines = ids_txt.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise CirkitError(f"{ids_txt}: cannot read: {e}") from None
        for n, line in enumerate(lines, 1):
            line = line.strip()
            if not line:
                continue
            if not line.isdigit():
                raise CirkitError(f"{ids_txt}: line {n}: expected an integer COCO id, got {line[:40]!r}")
            gallery[image_name(int(line))] = f"{IMAGE_DIR}/{int(line):012d}.jpg"
        return gallery, ids_txt
    raise CirkitError(
        f"CIRCO gallery: expected file {info} (COCO's image_info_unlabeled2017.json) "
        f"or {ids_txt} (one COCO id per line); neither exists"
    )


def load(data_dir: str | Path, split: str) -> Benchmark:
    data_dir = Path(data_dir)
    check_split("circo", split, SPLITS)
    ann_path = annotations_file(data_dir, split)
    if not ann_path.is_file():
        hint = LAYOUT + looks_like_inside(data_dir, "circo", ("annotations", "COCO2017_unlabeled"))
        raise CirkitError(f"CIRCO {split} annotations: expected file {ann_path} is missing ({hint})")
    gallery, gallery_source = load_gallery(data_dir)
    has_gt = split == "val"
    rec = Records(ann_path)
    queries: list[CirQuery] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(read_json_list(ann_path)):
        r = rec.obj(i, raw)
        qid = rec.get(i, r, "id", int)
        ref = image_name(rec.get(i, r, "reference_img_id", int))
        caption = rec.get(i, r, "relative_caption", str)
        extra: dict = {"shared_concept": rec.get(i, r, "shared_concept", str, optional=True) or ""}
        targets: tuple[str, ...] = ()
        if has_gt:
            target = image_name(rec.get(i, r, "target_img_id", int))
            gts = rec.get(i, r, "gt_img_ids", list, nonempty=True)
            for j, g in enumerate(gts):
                if not isinstance(g, int) or isinstance(g, bool):
                    raise rec.fail(i, f"'gt_img_ids'[{j}] must be an integer COCO id")
            targets = tuple(image_name(g) for g in gts)
            if len(set(targets)) != len(targets):
                raise rec.fail(i, "'gt_img_ids' repeats an id")
            if targets[0] != target:
                raise rec.fail(i, "'target_img_id' is not the first of 'gt_img_ids'")
            aspects = rec.get(i, r, "semantic_aspects", list, optional=True) or []
            extra["semantic_aspects"] = tuple(str(a) for a in aspects)
            extra["target"] = target
        key = str(qid)
        if key in seen:
            raise rec.fail(i, f"id {qid} repeats record {seen[key]}")
        seen[key] = i
        for name in (ref, *targets):
            if name not in gallery:
                raise rec.fail(i, f"image id {name} is not in the gallery ({gallery_source.name})")
        queries.append(CirQuery(id=key, reference=ref, text=caption, targets=targets, extra=extra))
    return Benchmark(name="circo", split=split, protocol="circo", queries=queries, gallery=gallery,
                     data_dir=data_dir, has_ground_truth=has_gt,
                     files={"annotations": ann_path, "gallery": gallery_source})
