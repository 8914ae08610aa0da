"""Benchmark loaders over the real annotation files, bad files, and the GeneCIS instance crop."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cirkit.benchmarks import crop_box, crop_instance, evaluate, load, load_group, load_triplets
from cirkit.errors import CirkitError



def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------- counts on the real files

@pytest.mark.parametrize("bench,split,queries,gallery", [
    ("cirr", "val", 4181, 2297),
    ("cirr", "test1", 4148, 2315),
    ("circo", "val", 220, 123_403),
    ("circo", "test", 800, 123_403),
    ("fashioniq-dress", "val", 2017, 3817),
    ("fashioniq-shirt", "val", 2038, 6346),
    ("fashioniq-toptee", "val", 1961, 5373),
    ("fashioniq-dress", "test", 2024, 3818),
    ("fashioniq-shirt", "test", 2038, 6346),
    ("fashioniq-toptee", "test", 2056, 5374),
])
def test_counts(shared, bench, split, queries, gallery):
    b = load(bench, shared, split)
    assert len(b.queries) == queries
    assert len(b.gallery) == gallery
    assert len({q.id for q in b.queries}) == queries
    assert b.has_ground_truth == (split == "val")
    assert all(bool(q.targets) == b.has_ground_truth for q in b.queries)


@pytest.mark.parametrize("task", ["focus_object", "change_object"])
def test_genecis_counts(shared, task):
    b = load("genecis", shared, task)
    assert len(b.queries) == 1960
    for q in b.queries:
        assert q.targets[0] == q.candidates[0]
        assert 14 <= len(q.candidates) <= 15
        assert q.text == q.extra["condition"]
    assert b.image_path(b.queries[0].reference) == shared / "genecis" / "val2017" / "000000189213.jpg"


def test_cirr_fields(shared):
    b = load("cirr", shared, "val")
    q = b.query("12060")
    assert q.reference == "dev-244-0-img0" and q.targets == ("dev-1028-1-img1",)
    assert q.text == "show three bottles of soft drink"
    assert len(q.candidates) == 6 and q.reference in q.candidates
    assert b.gallery["dev-244-0-img0"] == "cirr/img_raw/dev/dev-244-0-img0.png"
    assert b.image_path("dev-244-0-img0") == shared / "cirr" / "img_raw" / "dev" / "dev-244-0-img0.png"
    t = load("cirr", shared, "test1")
    assert t.query("12063").targets == () and len(t.query("12063").candidates) == 6


def test_circo_fields(shared):
    b = load("circo", shared, "val")
    q = b.query("0")
    assert q.reference == "271520" and q.targets == ("355099", "528417", "534704")
    assert q.extra["target"] == "355099"
    assert q.extra["shared_concept"] == "a girl with a traditional Chinese umbrella"
    assert "cardinality" in q.extra["semantic_aspects"]
    assert b.gallery["355099"] == "circo/COCO2017_unlabeled/unlabeled2017/000000355099.jpg"
    assert all(len(q.targets) >= 1 for q in b.queries)
    assert b.files["gallery"].name == "coco_unlabeled2017_gallery_ids.txt"


def test_fashioniq_text_protocol(shared):
    b = load("fashioniq-dress", shared, "val")
    q = b.query("dress-0")
    assert q.text == "is shiny and silver with shorter sleeves and fit and flare"
    assert q.reference == "B005X4PL1G" and q.targets == ("B0084Y8XIU",)
    t = load("fashioniq-dress", shared, "test")
    assert t.query("dress-0").text == "yello and more flowing and short and black"   # " yello ..." stripped
    group = load_group("fashioniq", shared, "val")
    assert list(group) == ["dress", "shirt", "toptee"]


def test_check_images_counts_missing(shared):
    b = load("fashioniq-toptee", shared, "val")
    check = b.check_images()
    assert check.total == 5373 and len(check.missing) == 5373 and check.present == 0


# ---------------------------------------------------------------- bad names, files and layouts

def test_wrong_split_lists_valid_ones(shared):
    with pytest.raises(CirkitError) as e:
        load("cirr", shared, "test")
    assert one_line_error(e) == "cirr: unknown split 'test'; valid splits: val, test1"
    with pytest.raises(CirkitError) as e:
        load("circo", shared, "test1")
    assert "valid splits: val, test" in one_line_error(e)
    with pytest.raises(CirkitError) as e:
        load("genecis", shared, "val")
    assert "valid splits: change_attribute, change_object, focus_attribute, focus_object" in one_line_error(e)
    with pytest.raises(CirkitError) as e:
        load("fashioniq-dress", shared, "train")
    assert "valid splits: val, test" in one_line_error(e)


def test_unknown_benchmark(shared):
    with pytest.raises(CirkitError) as e:
        load("cirrr", shared, "val")
    msg = one_line_error(e)
    assert msg.startswith("unknown benchmark 'cirrr'; valid benchmarks: cirr, circo, fashioniq-dress")
    with pytest.raises(CirkitError) as e:
        load("fashioniq", shared, "val")
    assert "fashioniq-dress" in one_line_error(e)


def copy_cirr(shared: Path, dst: Path) -> Path:
    shutil.copytree(shared / "cirr", dst / "cirr", ignore=shutil.ignore_patterns("submission_examples"))
    return dst


def test_missing_file_says_what_was_expected_where(tmp_path):
    with pytest.raises(CirkitError) as e:
        load("cirr", tmp_path, "val")
    msg = one_line_error(e)
    assert f"expected file {tmp_path / 'cirr' / 'captions' / 'cap.rc2.val.json'} is missing" in msg
    assert "layout: DATA_DIR/cirr/captions/" in msg
    with pytest.raises(CirkitError) as e:
        load("fashioniq-shirt", tmp_path, "val")
    assert str(tmp_path / "fashioniq" / "captions" / "cap.shirt.val.json") in one_line_error(e)
    with pytest.raises(CirkitError) as e:
        load("genecis", tmp_path, "focus_attribute")
    assert str(tmp_path / "genecis" / "focus_attribute.json") in one_line_error(e)


def test_missing_split_file(shared, tmp_path):
    copy_cirr(shared, tmp_path)
    (tmp_path / "cirr" / "image_splits" / "split.rc2.val.json").unlink()
    with pytest.raises(CirkitError) as e:
        load("cirr", tmp_path, "val")
    assert f"{tmp_path / 'cirr' / 'image_splits' / 'split.rc2.val.json'} is missing" in one_line_error(e)


def test_wrong_layout_data_dir_is_the_benchmark_folder(shared):
    with pytest.raises(CirkitError) as e:
        load("cirr", shared / "cirr", "val")
    assert "looks like the cirr/ folder itself: pass its parent as DATA_DIR" in one_line_error(e)
    with pytest.raises(CirkitError) as e:
        load("circo", shared / "circo", "val")
    assert "looks like the circo/ folder itself" in one_line_error(e)
    with pytest.raises(CirkitError) as e:
        load("genecis", shared / "genecis", "focus_object")
    assert "looks like the genecis/ folder itself" in one_line_error(e)


def test_truncated_json(shared, tmp_path):
    copy_cirr(shared, tmp_path)
    path = tmp_path / "cirr" / "captions" / "cap.rc2.val.json"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CirkitError) as e:
        load("cirr", tmp_path, "val")
    msg = one_line_error(e)
    assert msg.startswith(f"{path}: not valid JSON (truncated)")


def test_empty_and_wrong_type_json(shared, tmp_path):
    copy_cirr(shared, tmp_path)
    path = tmp_path / "cirr" / "captions" / "cap.rc2.val.json"
    path.write_text("")
    with pytest.raises(CirkitError) as e:
        load("cirr", tmp_path, "val")
    assert one_line_error(e) == f"{path}: empty file, expected JSON"
    path.write_text('{"pairid": 1}')
    with pytest.raises(CirkitError) as e:
        load("cirr", tmp_path, "val")
    assert one_line_error(e) == f"{path}: expected a JSON list of records, got an object"


def test_missing_key_names_file_and_record(shared, tmp_path):
    copy_cirr(shared, tmp_path)
    path = tmp_path / "cirr" / "captions" / "cap.rc2.val.json"
    records = json.loads(path.read_text())
    del records[17]["target_hard"]
    path.write_text(json.dumps(records))
    with pytest.raises(CirkitError) as e:
        load("cirr", tmp_path, "val")
    assert one_line_error(e) == f"{path}: record 17: missing 'target_hard'"
    assert "cap.rc2.val.json: record 17: missing 'target_hard'" in str(e.value)


def test_bad_records(shared, tmp_path):
    copy_cirr(shared, tmp_path)
    path = tmp_path / "cirr" / "captions" / "cap.rc2.val.json"
    original = json.loads(path.read_text())
    cases = [
        (lambda r: r[3].update(pairid="x"), "record 3: 'pairid' must be an integer, got a string"),
        (lambda r: r[4].update(reference="nope"), "record 4: image 'nope' is not in split.rc2.val.json"),
        (lambda r: r[5].update(pairid=r[0]["pairid"]), "record 5: pairid 12060 repeats record 0"),
        (lambda r: r.__setitem__(6, "oops"), "record 6: expected an object, got a string"),
        (lambda r: r[7]["img_set"].pop("members"), "record 7: missing 'img_set.members'"),
    ]
    for mutate, expected in cases:
        records = json.loads(json.dumps(original))
        mutate(records)
        path.write_text(json.dumps(records))
        with pytest.raises(CirkitError) as e:
            load("cirr", tmp_path, "val")
        assert one_line_error(e) == f"{path}: {expected}"


def test_circo_needs_a_gallery_and_valid_records(shared, tmp_path):
    (tmp_path / "circo" / "annotations").mkdir(parents=True)
    shutil.copy(shared / "circo" / "annotations" / "val.json", tmp_path / "circo" / "annotations" / "val.json")
    with pytest.raises(CirkitError) as e:
        load("circo", tmp_path, "val")
    msg = one_line_error(e)
    assert "image_info_unlabeled2017.json" in msg and "coco_unlabeled2017_gallery_ids.txt" in msg
    # the official COCO image info file is the preferred gallery source
    info = tmp_path / "circo" / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json"
    info.parent.mkdir(parents=True)
    ids = [int(x) for x in (shared / "circo" / "coco_unlabeled2017_gallery_ids.txt").read_text().split()]
    info.write_text(json.dumps({"images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in ids]}))
    b = load("circo", tmp_path, "val")
    assert len(b.gallery) == 123_403 and b.files["gallery"] == info
    records = json.loads((shared / "circo" / "annotations" / "val.json").read_text())
    records[2]["gt_img_ids"] = [records[2]["gt_img_ids"][1], records[2]["gt_img_ids"][0]]
    path = tmp_path / "circo" / "annotations" / "val.json"
    path.write_text(json.dumps(records))
    with pytest.raises(CirkitError) as e:
        load("circo", tmp_path, "val")
    assert one_line_error(e) == f"{path}: record 2: 'target_img_id' is not the first of 'gt_img_ids'"


def test_fashioniq_bad_captions(shared, tmp_path):
    shutil.copytree(shared / "fashioniq", tmp_path / "fashioniq")
    path = tmp_path / "fashioniq" / "captions" / "cap.dress.val.json"
    records = json.loads(path.read_text())
    records[9]["captions"] = ["only one"]
    path.write_text(json.dumps(records))
    with pytest.raises(CirkitError) as e:
        load("fashioniq-dress", tmp_path, "val")
    assert one_line_error(e) == f"{path}: record 9: 'captions' must be a list of two strings"


def test_fashioniq_png_images_are_found(shared, tmp_path):
    shutil.copytree(shared / "fashioniq", tmp_path / "fashioniq")
    images = tmp_path / "fashioniq" / "images"
    images.mkdir()
    first = json.loads((tmp_path / "fashioniq" / "image_splits" / "split.dress.val.json").read_text())[0]
    Image.new("RGB", (8, 8)).save(images / f"{first}.png")
    b = load("fashioniq-dress", tmp_path, "val")
    assert b.gallery[first] == f"fashioniq/images/{first}.png"
    assert b.check_images().present == 1


def test_cirr_alternative_image_root(shared, tmp_path):
    copy_cirr(shared, tmp_path)
    (tmp_path / "cirr" / "dev").mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "cirr" / "dev" / "dev-244-0-img0.png")
    b = load("cirr", tmp_path, "val")
    assert b.gallery["dev-244-0-img0"] == "cirr/dev/dev-244-0-img0.png"
    assert b.load_image("dev-244-0-img0").getpixel((0, 0)) == (255, 0, 0)
    check = b.check_images()
    assert check.present == 1 and len(check.missing) == 2296


# ---------------------------------------------------------------- GeneCIS attribute tasks and crops

def pattern_image(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """Every pixel different: R = x, G = y."""
    a = np.zeros((height, width, 3), dtype=np.uint8)
    a[..., 0] = np.arange(width)[None, :]
    a[..., 1] = np.arange(height)[:, None]
    a[..., 2] = 200
    im = Image.fromarray(a, "RGB")
    return im.convert(mode) if mode != "RGB" else im


def test_crop_box_matches_the_official_arithmetic():
    # left/top move up-left by 0.7 of the box; the crop keeps 1.7 box sizes from there
    assert crop_box((100, 80), (40, 30, 20, 10)) == pytest.approx((26, 23, 60, 40))
    # clipped at the image border: the right edge follows the clipped left edge, as in genecis
    assert crop_box((100, 80), (2, 3, 20, 10)) == pytest.approx((0, 0, 34, 17))
    assert crop_box((50, 40), (40, 30, 20, 10)) == pytest.approx((26, 23, 50, 40))
    assert crop_box((100, 80), (40, 30, 20, 10), dilate=0) == (40, 30, 60, 40)


def test_crop_instance_dilates_and_pads_to_square():
    im = pattern_image(100, 80)
    out = crop_instance(im, (40, 30, 20, 10))
    assert out.size == (34, 34) and out.mode == "RGB"
    a = np.asarray(out)
    pad = (34 - 17) // 2
    assert (a[:pad] == 0).all() and (a[pad + 17:] == 0).all()           # black bands above and below
    assert tuple(a[pad, 0]) == (26, 23, 200)                            # top-left of the crop
    assert tuple(a[pad + 16, 33]) == (59, 39, 200)                      # bottom-right of the crop
    tall = crop_instance(im, (10, 10, 5, 30))                           # taller than wide: pad left/right
    assert tall.size[0] == tall.size[1]
    assert crop_instance(im, (40, 30, 20, 10), pad_square=False).size == (34, 17)
    gray = crop_instance(pattern_image(100, 80, "L"), (40, 30, 20, 10))
    assert gray.mode == "L" and gray.size == (34, 34) and gray.getpixel((0, 0)) == 0


def test_crop_instance_box_outside_image():
    with pytest.raises(CirkitError) as e:
        crop_instance(pattern_image(20, 20), (200, 200, 10, 10))
    assert "does not fit the 20x20 image" in one_line_error(e)


def write_attribute_task(root: Path, task: str = "change_attribute") -> Path:
    samples = []
    for i in range(3):
        samples.append({
            "condition": ["red", "wooden", "striped"][i],
            "reference": {"image_id": 10, "instance_bbox": [40, 30, 20, 10], "object_name": "chair"},
            "target": {"image_id": 11, "instance_bbox": [5, 5, 30, 30]},
            "gallery": [{"image_id": 12, "instance_bbox": [1, 2, 3, 4]},
                        {"image_id": 11, "instance_bbox": [50, 40, 10.5, 10]}],
        })
    path = root / "genecis" / f"{task}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(samples))
    return path


def test_genecis_attribute_task(tmp_path):
    write_attribute_task(tmp_path)
    vg = tmp_path / "genecis" / "VG_100K_all"
    vg.mkdir()
    pattern_image(100, 80).save(vg / "10.png", format="PNG")
    (vg / "10.png").rename(vg / "10.jpg")  # lossless content under the expected name
    b = load("genecis", tmp_path, "change_attribute")
    assert len(b.queries) == 3
    q = b.queries[0]
    assert q.id == "change_attribute-0" and q.text == "red" and q.extra["reference_object_name"] == "chair"
    assert q.reference == "10:40,30,20,10" and b.boxes[q.reference] == (40.0, 30.0, 20.0, 10.0)
    assert q.candidates == ("11:5,5,30,30", "12:1,2,3,4", "11:50,40,10.5,10")
    assert b.image_path(q.reference) == vg / "10.jpg"
    crop = b.load_image(q.reference)
    assert crop.size == (34, 34) and crop.getpixel((0, 8)) == (26, 23, 200)
    result = evaluate(b, {qq.id: list(reversed(qq.candidates)) for qq in b.queries})
    assert result["R@1"] == 0.0 and result["R@3"] == 100.0
    group = load_group("genecis", tmp_path, "all")
    assert list(group) == ["change_attribute"]


def test_genecis_attribute_bad_box(tmp_path):
    path = write_attribute_task(tmp_path, "focus_attribute")
    samples = json.loads(path.read_text())
    samples[1]["gallery"][0]["instance_bbox"] = [1, 2, 3]
    path.write_text(json.dumps(samples))
    with pytest.raises(CirkitError) as e:
        load("genecis", tmp_path, "focus_attribute")
    assert one_line_error(e) == f"{path}: record 1: 'gallery[0]': 'instance_bbox' must be [x, y, width, height]"


# ---------------------------------------------------------------- a user's own triplets

def write_triplets(root: Path, lines: list[str], name: str = "mine") -> Path:
    (root / "shoes").mkdir(parents=True, exist_ok=True)
    for n in ("red", "blue", "green"):
        Image.new("RGB", (4, 4)).save(root / "shoes" / f"{n}.jpg")
    path = root / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_triplets_load_and_evaluate(tmp_path):
    write_triplets(tmp_path, [
        json.dumps({"id": "q1", "reference": "shoes/red.jpg", "text": "blue", "targets": ["shoes/blue.jpg"]}),
        "",
        json.dumps({"id": 2, "reference": "shoes/red.jpg", "text": "green or blue",
                    "targets": ["shoes/green.jpg", "shoes/blue.jpg"],
                    "gallery": ["shoes/blue.jpg", "shoes/green.jpg", "shoes/missing.jpg"]}),
    ])
    b = load("triplets", tmp_path, "mine")
    assert [q.id for q in b.queries] == ["q1", "2"]
    assert set(b.gallery) == {"shoes/red.jpg", "shoes/blue.jpg", "shoes/green.jpg", "shoes/missing.jpg"}
    assert b.check_images().missing == ("shoes/missing.jpg",)
    assert b.queries[1].candidates == ("shoes/blue.jpg", "shoes/green.jpg", "shoes/missing.jpg")
    rankings = {"q1": ["shoes/red.jpg", "shoes/green.jpg", "shoes/blue.jpg"],   # reference removed: blue at 2
                "2": ["shoes/red.jpg", "shoes/blue.jpg", "shoes/missing.jpg", "shoes/green.jpg"]}
    r = evaluate(b, rankings)
    assert r["R@1"] == 50.0 and r["R@5"] == 100.0
    # AP@5: q1 = (1/2)/1; q2 ranks blue, missing, green -> (1/1 + 2/3)/2
    assert r["mAP@5"] == pytest.approx(100 * (0.5 + (1 + 2 / 3) / 2) / 2)
    same = load_triplets(tmp_path / "mine.jsonl")
    assert [q.id for q in same.queries] == ["q1", "2"]


def test_triplets_errors(tmp_path):
    good = json.dumps({"id": "a", "reference": "shoes/red.jpg", "text": "x", "targets": ["shoes/blue.jpg"]})
    cases = [
        (["{not json"], "line 1: not valid JSON: Expecting property name enclosed in double quotes at column 2"),
        ([good, json.dumps({"id": "b", "text": "x"})], "line 2: missing 'reference'"),
        ([good, good], "line 2: id 'a' repeats line 1"),
        ([json.dumps({"id": "c", "reference": "../etc/x.jpg", "text": "x"})],
         "line 1: 'reference': '../etc/x.jpg' must be a path relative to the image folder (no '..')"),
        ([json.dumps({"id": "d", "reference": "shoes/red.jpg", "text": "x", "targets": ["shoes/blue.jpg"],
                      "gallery": ["shoes/green.jpg"]})],
         "line 1: target 'shoes/blue.jpg' is not in the query's 'gallery'"),
    ]
    for lines, expected in cases:
        path = write_triplets(tmp_path, lines)
        with pytest.raises(CirkitError) as e:
            load("triplets", tmp_path, "mine")
        assert one_line_error(e) == f"{path}: {expected}"
    with pytest.raises(CirkitError) as e:
        load("triplets", tmp_path, "other")
    assert "valid splits: mine" in one_line_error(e)
