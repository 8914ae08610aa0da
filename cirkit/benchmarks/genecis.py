"""GeneCIS (Vaze et al., CVPR 2023): facebookresearch/genecis, four conditional-similarity tasks.

On-disk layout under DATA_DIR::

    DATA_DIR/genecis/{focus_object,change_object,focus_attribute,change_attribute}.json
    DATA_DIR/genecis/val2017/000000153527.jpg      (COCO 2017 val images: object tasks)
    DATA_DIR/genecis/VG_100K_all/2344194.jpg       (Visual Genome 1.2, VG_100K + VG_100K_2 merged: attribute tasks)

The benchmark is ``genecis`` and the split is the task. Each sample ranks its own candidates,
``[target] + gallery`` (deduplicated: one change_object sample lists its target in its gallery too).
Object tasks name images by their COCO val id (``"153527"``). Attribute tasks rank object
instances: a name is ``"{image_id}:{x},{y},{w},{h}"`` and :meth:`Benchmark.load_image` crops the
instance box with :func:`crop_instance`, as the official evaluation does.

Queries: id = ``f"{task}-{index}"``; text = the condition; extra: ``task``, ``condition``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cirkit.benchmarks._io import Records, read_json_list
from cirkit.benchmarks.base import Benchmark, Box, CirQuery, check_split, looks_like_inside
from cirkit.errors import CirkitError

TASKS = ("change_attribute", "change_object", "focus_attribute", "focus_object")
OBJECT_TASKS = ("change_object", "focus_object")
COCO_DIR = "genecis/val2017"
VG_DIR = "genecis/VG_100K_all"
LAYOUT = "layout: DATA_DIR/genecis/TASK.json, DATA_DIR/genecis/val2017/, DATA_DIR/genecis/VG_100K_all/"


def task_file(data_dir: Path, task: str) -> Path:
    return Path(data_dir) / "genecis" / f"{task}.json"


def available_tasks(data_dir: str | Path) -> list[str]:
    return [t for t in TASKS if task_file(Path(data_dir), t).is_file()]


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def instance_name(image_id: Any, box: Box) -> str:
    return f"{image_id}:{','.join(_num(v) for v in box)}"


def load(data_dir: str | Path, task: str) -> Benchmark:
    data_dir = Path(data_dir)
    check_split("genecis", task, TASKS)
    path = task_file(data_dir, task)
    if not path.is_file():
        hint = LAYOUT + looks_like_inside(data_dir, "genecis", tuple(f"{t}.json" for t in TASKS))
        present = available_tasks(data_dir)
        have = f"; tasks present: {', '.join(present)}" if present else ""
        raise CirkitError(f"GeneCIS {task}: expected file {path} is missing ({hint}){have}")
    rec = Records(path)
    objects = task in OBJECT_TASKS
    gallery: dict[str, str] = {}
    boxes: dict[str, Box] = {}

    def image(i: int, where: str, meta: Any) -> str:
        if not isinstance(meta, dict):
            raise rec.fail(i, f"'{where}' must be an object")
        if objects:
            image_id = meta.get("val_image_id")
            if not isinstance(image_id, int) or isinstance(image_id, bool):
                raise rec.fail(i, f"'{where}': missing integer 'val_image_id'")
            name = str(image_id)
            gallery[name] = f"{COCO_DIR}/{image_id:012d}.jpg"
            return name
        image_id = meta.get("image_id")
        if not isinstance(image_id, (int, str)) or isinstance(image_id, bool) or image_id == "":
            raise rec.fail(i, f"'{where}': missing 'image_id'")
        bbox = meta.get("instance_bbox")
        if (not isinstance(bbox, list) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
            raise rec.fail(i, f"'{where}': 'instance_bbox' must be [x, y, width, height]")
        if bbox[2] <= 0 or bbox[3] <= 0:
            raise rec.fail(i, f"'{where}': 'instance_bbox' has no area")
        box: Box = tuple(float(v) for v in bbox)  # type: ignore[assignment]
        name = instance_name(image_id, box)
        gallery[name] = f"{VG_DIR}/{image_id}.jpg"
        boxes[name] = box
        return name

    queries: list[CirQuery] = []
    for i, raw in enumerate(read_json_list(path)):
        r = rec.obj(i, raw)
        condition = rec.get(i, r, "condition", str)
        reference = image(i, "reference", rec.get(i, r, "reference", dict))
        target = image(i, "target", rec.get(i, r, "target", dict))
        metas = rec.get(i, r, "gallery", list, nonempty=True)
        others = [image(i, f"gallery[{j}]", m) for j, m in enumerate(metas)]
        candidates = tuple(dict.fromkeys([target, *others]))
        extra = {"task": task, "condition": condition}
        ref_meta = r["reference"]
        for key, value in ref_meta.items():
            if key not in ("val_image_id", "image_id", "instance_bbox"):
                extra[f"reference_{key}"] = value
        queries.append(CirQuery(id=f"{task}-{i}", reference=reference, text=condition, targets=(target,),
                                candidates=candidates, extra=extra))
    return Benchmark(name="genecis", split=task, protocol="genecis", queries=queries, gallery=gallery,
                     data_dir=data_dir, has_ground_truth=True, boxes=boxes, files={"annotations": path})
