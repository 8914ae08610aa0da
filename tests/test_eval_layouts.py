"""`cirkit eval` end to end on small synthetic folders in each benchmark's published layout.

Every folder copies the structure of the real annotation records (shared/benchmarks) with its own
handful of tiny solid-colour images, and runs the real entry point over the tiny random-weight
pipeline. Rankings are read back from the stored runs and re-scored here, independently of
cirkit's evaluators, so the wiring from runs to metrics is checked too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from cirkit.benchmarks import load, validate_circo_submission, validate_cirr_submission
from cirkit.store import RunStore

CIRCO_ASPECTS = ["cardinality", "addition", "negation", "viewpoint"]


# ---------------------------------------------------------------- helpers

def colour(i: int) -> tuple[int, int, int]:
    return ((i * 67 + 13) % 256, (i * 29 + 101) % 256, (i * 113 + 7) % 256)


def save_images(folder: Path, files: list[str], size: tuple[int, int] = (40, 32)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(files):
        Image.new("RGB", size, colour(i)).save(folder / name)


def run_eval(cli, *args):
    """`cirkit eval ... --json`: the result and its parsed JSON line."""
    res = cli("eval", *map(str, args), "--json")
    assert res.exit_code == 0, res.stderr
    return res, json.loads(res.stdout.strip().splitlines()[-1])


def store() -> RunStore:
    return RunStore(os.environ["CIRKIT_DATA_DIR"])  # the cli fixture's per-test run store


def experiment_runs(exp_id: str) -> dict[str, tuple[object, int | None]]:
    """query id -> (its stored run, its stored target rank)."""
    s = store()
    return {row["query_id"]: (s.get(row["run_id"]), row["target_rank"]) for row in s.experiment(exp_id)["runs"]}


def ranked_stems(run) -> list[str]:
    """The run's ranking as file stems (results' paths are relative to DATA_DIR)."""
    return [Path(hit["path"]).stem for hit in run.results]


def ap_at_k(ranking: list[str], gts: list[str], k: int) -> float:
    hits, total = 0, 0.0
    for i, name in enumerate(ranking[:k], 1):
        if name in gts:
            hits += 1
            total += hits / i
    return total / min(k, len(gts))


def one_error_line(res) -> str:
    assert res.exit_code == 1, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


# ---------------------------------------------------------------- CIRCO

CIRCO_IDS = [900_101 + 7 * i for i in range(12)]


def circo_dir(root: Path, split: str, ids: list[int] = CIRCO_IDS, queries: int = 4) -> Path:
    """DATA_DIR/circo: annotations/SPLIT.json, coco_unlabeled2017_gallery_ids.txt, COCO2017_unlabeled/unlabeled2017/."""
    circo = root / "circo"
    (circo / "annotations").mkdir(parents=True)
    (circo / "coco_unlabeled2017_gallery_ids.txt").write_text("".join(f"{i}\n" for i in ids))
    save_images(circo / "COCO2017_unlabeled" / "unlabeled2017", [f"{i:012d}.jpg" for i in ids])
    records = []
    for q in range(queries):
        ref = ids[q * 3]
        if split == "val":  # the val record format: every field of miccunifi/CIRCO annotations/val.json
            gts = [ids[q * 3 + 1 + j] for j in range(1 + q % 3) if q * 3 + 1 + j < len(ids)]
            records.append({"reference_img_id": ref, "target_img_id": gts[0],
                            "relative_caption": f"shows {q + 2} dogs and has a darker background",
                            "shared_concept": "a dog with a hat", "gt_img_ids": gts, "id": q,
                            "semantic_aspects": CIRCO_ASPECTS[q % 2 : q % 2 + 2]})
        else:  # test: no target, no gt_img_ids, no semantic_aspects
            records.append({"reference_img_id": ref, "relative_caption": f"is taken during the day, variant {q}",
                            "shared_concept": "a man on a bench", "id": q})
    (circo / "annotations" / f"{split}.json").write_text(json.dumps(records))
    return root


def test_circo_val(cli, tmp_path, tiny_pipeline):
    data = circo_dir(tmp_path / "bench", "val")
    _, out = run_eval(cli, "circo", "--data", data, "--split", "val", "--pipeline", tiny_pipeline)
    m = out["metrics"]
    for k in (5, 10, 25, 50):
        assert 0.0 <= m[f"mAP@{k}"] <= 100.0 and 0.0 <= m[f"R@{k}"] <= 100.0
    # 12 images <= 50: the whole gallery is ranked, so every ground truth is in the top 25 and 50
    assert m["R@50"] == 100.0 and m["R@25"] == 100.0 and m["mAP@50"] > 0.0
    assert m["mAP@50"] == m["mAP@25"] >= m["mAP@10"] >= m["mAP@5"]  # at most 3 ground truths: AP grows with K
    assert {k.split("/")[1] for k in m if k.startswith("mAP@10/")} == set(CIRCO_ASPECTS[:3])
    assert m["queries"] == 4 and m["gallery_images"] == 12 and m["gallery_missing"] == 0 and m["failed_runs"] == 0
    assert out["submission"] == []  # val: scored here, nothing to submit

    # the experiment is stored with one run per query, and its metrics are those of the runs' rankings
    exp = store().experiment(out["experiment"])
    assert exp["benchmark"] == "circo" and exp["split"] == "val" and exp["metrics"]["mAP@10"] == m["mAP@10"]
    runs = experiment_runs(out["experiment"])
    assert sorted(runs) == ["0", "1", "2", "3"]
    records = {str(r["id"]): r for r in json.loads((data / "circo" / "annotations" / "val.json").read_text())}
    for k in (5, 10, 25, 50):
        aps = []
        for qid, (run, _) in runs.items():
            ranking = [str(int(s)) for s in ranked_stems(run)]
            assert len(ranking) == 12 and len(set(ranking)) == 12
            gts = [str(g) for g in records[qid]["gt_img_ids"]]
            aps.append(ap_at_k(ranking, gts, k))
        assert m[f"mAP@{k}"] == pytest.approx(100 * sum(aps) / len(aps))
    for qid, (run, target_rank) in runs.items():
        assert run.inputs["modification"] == records[qid]["relative_caption"]
        ranking = [int(s) for s in ranked_stems(run)]  # used as given: the reference is not removed
        assert target_rank == min(ranking.index(g) for g in records[qid]["gt_img_ids"]) + 1
    assert out["experiment"] in cli("eval", "list").stdout
    assert json.loads(cli("runs", "failures", out["experiment"], "--k", "50", "--json").stdout) == []


def test_circo_test_small_gallery_cannot_make_a_submission(cli, tmp_path, tiny_pipeline):
    """The CIRCO server needs 50 ids per query: a 12-image gallery cannot give them, and says so."""
    data = circo_dir(tmp_path / "bench", "test", queries=3)
    sub = tmp_path / "submissions"
    res = cli("eval", "circo", "--data", data, "--split", "test", "--pipeline", tiny_pipeline,
              "--submission-dir", sub, "--json")
    line = one_error_line(res)
    assert "12 names; the server needs 50" in line
    assert not list(sub.glob("*.json"))  # nothing half-written
    assert store().experiments() == []  # and no experiment stored


def test_circo_test_submission(cli, tmp_path, tiny_pipeline):
    ids = [700_003 + 11 * i for i in range(53)]  # just over the 50 the server needs
    data = circo_dir(tmp_path / "bench", "test", ids=ids, queries=3)
    sub = tmp_path / "submissions"
    _, out = run_eval(cli, "circo", "--data", data, "--split", "test", "--pipeline", tiny_pipeline,
                      "--submission-dir", sub)
    m = out["metrics"]
    assert m["scored"] is False and m["queries"] == 3 and m["failed_runs"] == 0
    assert not any(k.startswith(("mAP@", "R@")) for k in m)
    path = sub / "circo_test.json"
    assert out["submission"] == [str(path)] and path.is_file()
    submission = json.loads(path.read_text())
    assert sorted(submission) == ["0", "1", "2"]
    for qid, top in submission.items():
        assert len(top) == 50 and len(set(top)) == 50
        assert all(type(i) is int and i in ids for i in top)  # COCO ids as integers, as the server takes them
    validate_circo_submission(submission, load("circo", data, "test"))
    # the top 50 are the first 50 of the stored run's ranking
    for qid, (run, target_rank) in experiment_runs(out["experiment"]).items():
        assert [int(s) for s in ranked_stems(run)][:50] == submission[qid]
        assert target_rank is None  # no ground truth


# ---------------------------------------------------------------- CIRR test1

CIRR_TEST = [f"test1-{40 + i}-{i % 3}-img{i % 2}" for i in range(12)]


def test_cirr_test1_submission(cli, tmp_path, tiny_pipeline):
    root = tmp_path / "bench"
    cirr = root / "cirr"
    (cirr / "captions").mkdir(parents=True)
    (cirr / "image_splits").mkdir()
    save_images(cirr / "img_raw" / "test1", [f"{n}.png" for n in CIRR_TEST])
    (cirr / "image_splits" / "split.rc2.test1.json").write_text(json.dumps({n: f"./test1/{n}.png" for n in CIRR_TEST}))
    records = []
    for q in range(3):  # the test1 record format: no target_hard, no target_soft
        members = CIRR_TEST[q * 2 : q * 2 + 6]
        records.append({"pairid": 12063 + q, "reference": members[1], "caption": f"remove all but {q + 1} dogs",
                        "img_set": {"id": q + 1, "members": members, "reference_rank": 1}})
    (cirr / "captions" / "cap.rc2.test1.json").write_text(json.dumps(records))

    sub = tmp_path / "submissions"
    _, out = run_eval(cli, "cirr", "--data", root, "--split", "test1", "--pipeline", tiny_pipeline,
                      "--submission-dir", sub)
    assert out["metrics"]["scored"] is False and out["metrics"]["queries"] == 3
    assert not any(k.startswith("R@") for k in out["metrics"])
    recall_path, subset_path = sub / "cirr_test1_recall.json", sub / "cirr_test1_recall_subset.json"
    assert out["submission"] == [str(recall_path), str(subset_path)]
    bench = load("cirr", root, "test1")
    recall, subset = json.loads(recall_path.read_text()), json.loads(subset_path.read_text())
    assert recall["version"] == subset["version"] == "rc2"
    assert recall["metric"] == "recall" and subset["metric"] == "recall_subset"
    assert validate_cirr_submission(recall, bench) == "recall"
    assert validate_cirr_submission(subset, bench) == "recall_subset"
    runs = experiment_runs(out["experiment"])
    for r in records:
        qid, ref, members = str(r["pairid"]), r["reference"], r["img_set"]["members"]
        ranking = ranked_stems(runs[qid][0])
        assert recall[qid] == [n for n in ranking if n != ref][:50]  # 11: the gallery less the reference
        assert len(recall[qid]) == 11 and ref not in recall[qid]
        assert subset[qid] == [n for n in ranking if n in members and n != ref][:3]
    # the files are what the scorer accepts for test1: valid, but only the server can score them
    res = cli("eval", "score", "cirr", "--annotations", root, "--predictions", recall_path,
              "--predictions", subset_path, "--split", "test1", "--json")
    assert res.exit_code == 0, res.stderr
    scored = json.loads(res.stdout)
    assert scored["valid"] is True and scored["scored"] is False


# ---------------------------------------------------------------- FashionIQ

FIQ = [f"B00TEST{i:03d}X" for i in range(12)]


def test_fashioniq_dress_val(cli, tmp_path, tiny_pipeline):
    root = tmp_path / "bench"
    fiq = root / "fashioniq"
    (fiq / "captions").mkdir(parents=True)
    (fiq / "image_splits").mkdir()
    save_images(fiq / "images", [f"{n}.jpg" for n in FIQ])
    (fiq / "image_splits" / "split.dress.val.json").write_text(json.dumps(FIQ))
    captions = [
        ["is shiny and silver with shorter sleeves.", "fit and flare"],
        ["is grey with black design", " is a light printed short dress?"],
        ["Is longer, ", "has no straps."],
        ["is red", "is red"],
    ]
    records = [{"target": FIQ[2 * q + 1], "candidate": FIQ[2 * q], "captions": c} for q, c in enumerate(captions)]
    (fiq / "captions" / "cap.dress.val.json").write_text(json.dumps(records))

    _, out = run_eval(cli, "fashioniq-dress", "--data", root, "--split", "val", "--pipeline", tiny_pipeline)
    m = out["metrics"]
    assert 0.0 <= m["R@10"] <= m["R@50"] <= 100.0
    assert m["R@50"] == 100.0  # 12 images: the target is always in the top 50
    assert not any(k in m for k in ("R@1", "R@5", "R_subset@1", "mAP@10"))
    assert m["queries"] == 4 and m["gallery_images"] == 12 and m["failed_runs"] == 0

    runs = experiment_runs(out["experiment"])
    assert sorted(runs) == [f"dress-{i}" for i in range(4)]
    expected = [
        "is shiny and silver with shorter sleeves and fit and flare",
        "is grey with black design and is a light printed short dress",
        "Is longer and has no straps",
        "is red and is red",
    ]
    hits10 = 0
    for i, text in enumerate(expected):
        run, target_rank = runs[f"dress-{i}"]
        assert run.inputs["modification"] == text  # the protocol's "c0 and c1"
        assert Path(run.inputs["image"]).name == f"{FIQ[2 * i]}.jpg"
        ranking = ranked_stems(run)
        assert FIQ[2 * i] in ranking and len(ranking) == 12  # the reference stays in the gallery ...
        assert target_rank == ranking.index(FIQ[2 * i + 1]) + 1  # ... and in the stored target rank
        hits10 += target_rank <= 10
    assert m["R@10"] == pytest.approx(100 * hits10 / 4)


# ---------------------------------------------------------------- GeneCIS

def test_genecis_focus_object(cli, tmp_path, tiny_pipeline):
    root = tmp_path / "bench"
    ids = [153_527 + 1_000 * i for i in range(13)]
    save_images(root / "genecis" / "val2017", [f"{i:012d}.jpg" for i in ids])
    samples = []
    for q in range(4):  # the focus_object record format: COCO val2017 ids
        ref, target, *others = ids[q * 3 : q * 3 + 4]
        samples.append({"condition": ["cardboard", "wall", "dog", "umbrella"][q],
                        "gallery": [{"val_image_id": i} for i in others], "reference": {"val_image_id": ref},
                        "target": {"val_image_id": target}})
    # as one real change_object sample does, the target also listed in the gallery: 3 candidates, not 4
    samples[3]["gallery"].insert(1, {"val_image_id": samples[3]["target"]["val_image_id"]})
    (root / "genecis" / "focus_object.json").write_text(json.dumps(samples))

    _, out = run_eval(cli, "genecis", "--data", root, "--split", "focus_object", "--pipeline", tiny_pipeline)
    m = out["metrics"]
    assert 0.0 <= m["R@1"] <= m["R@2"] <= m["R@3"] <= 100.0
    assert m["queries"] == 4 and m["gallery_images"] == 13 and m["failed_runs"] == 0
    # every query ranks its own 3 candidates (the target and 2 others), not the 13 images: R@3 is a sure hit
    assert m["R@3"] == 100.0

    runs = experiment_runs(out["experiment"])
    hits = {1: 0, 2: 0}
    for q, s in enumerate(samples):
        run, target_rank = runs[f"focus_object-{q}"]
        assert run.inputs["modification"] == s["condition"]
        candidates = list(dict.fromkeys([s["target"]["val_image_id"], *(g["val_image_id"] for g in s["gallery"])]))
        ranking = [int(n) for n in ranked_stems(run)]
        assert sorted(ranking) == sorted(candidates)  # the pipeline's search ranked the query's candidates only
        rank = ranking.index(s["target"]["val_image_id"]) + 1
        assert target_rank == rank <= len(candidates)
        for k in hits:
            hits[k] += rank <= k
    assert m["R@1"] == pytest.approx(100 * hits[1] / 4) and m["R@2"] == pytest.approx(100 * hits[2] / 4)


# ---------------------------------------------------------------- bad layouts

def test_missing_gallery_images_count_as_misses(cli, tmp_path, tiny_pipeline):
    data = circo_dir(tmp_path / "bench", "val")
    images = data / "circo" / "COCO2017_unlabeled" / "unlabeled2017"
    records = json.loads((data / "circo" / "annotations" / "val.json").read_text())
    lost_target = records[0]["target_img_id"]  # query 0 has a single ground truth: its only one
    assert records[0]["gt_img_ids"] == [lost_target]
    lost_reference = records[1]["reference_img_id"]  # query 1 cannot even start
    for image_id in (lost_target, lost_reference):
        (images / f"{image_id:012d}.jpg").unlink()

    res, out = run_eval(cli, "circo", "--data", data, "--split", "val", "--pipeline", tiny_pipeline)
    m = out["metrics"]
    assert m["gallery_images"] == 12 and m["gallery_missing"] == 2
    assert m["queries_target_missing"] == 1 and m["queries_reference_missing"] == 1
    assert m["queries"] == 4 and m["queries_without_ranking"] == 1 and m["failed_runs"] == 0  # every query counts ...
    assert m["R@50"] == 50.0  # ... queries 0 and 1 as misses: 2 of 4 targets found
    assert "2 of 12 gallery images are missing" in res.stderr
    assert "1 queries have a missing reference image" in res.stderr
    runs = experiment_runs(out["experiment"])
    assert sorted(runs) == ["0", "2", "3"]  # query 1 was not run
    assert runs["0"][1] is None and str(lost_target) not in {str(int(s)) for s in ranked_stems(runs["0"][0])}
    assert all(len(ranked_stems(runs[q][0])) == 10 and runs[q][1] is not None for q in ("2", "3"))


def _inside(tmp_path: Path, folder: str, files: list[str]) -> Path:
    for f in files:
        (tmp_path / folder / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / f).write_text("[]")
    return tmp_path / folder


@pytest.mark.parametrize(
    "bench, split, files, expected",
    [
        ("cirr", "val", ["captions/cap.rc2.val.json", "image_splits/split.rc2.val.json"], "cirr/captions/cap.rc2.val.json"),
        ("circo", "val", ["annotations/val.json", "coco_unlabeled2017_gallery_ids.txt"], "circo/annotations/val.json"),
        ("fashioniq-dress", "val", ["captions/cap.dress.val.json", "image_splits/split.dress.val.json"],
         "fashioniq/captions/cap.dress.val.json"),
        ("genecis", "focus_object", ["focus_object.json"], "genecis/focus_object.json"),
    ],
)
def test_benchmark_folder_given_as_data_dir(cli, tmp_path, tiny_pipeline, bench, split, files, expected):
    """--data pointing at the benchmark's own folder (not its parent): one line naming the file it expected."""
    folder = _inside(tmp_path, bench.split("-")[0], files)
    line = one_error_line(cli("eval", bench, "--data", folder, "--split", split, "--pipeline", tiny_pipeline))
    assert str(folder / expected) in line
    assert f"looks like the {bench.split('-')[0]}/ folder itself: pass its parent as DATA_DIR" in line


def test_wrong_layout_names_the_expected_files(cli, tmp_path, tiny_pipeline):
    # CIRCO annotations in place but no gallery list: both accepted gallery files are named
    data = tmp_path / "bench"
    (data / "circo" / "annotations").mkdir(parents=True)
    (data / "circo" / "annotations" / "val.json").write_text("[]")
    line = one_error_line(cli("eval", "circo", "--data", data, "--split", "val", "--pipeline", tiny_pipeline))
    assert str(data / "circo" / "coco_unlabeled2017_gallery_ids.txt") in line
    assert "image_info_unlabeled2017.json" in line
    # FashionIQ captions under the wrong name (a shirt file, no dress file)
    (data / "fashioniq" / "captions").mkdir(parents=True)
    (data / "fashioniq" / "captions" / "cap.shirt.val.json").write_text("[]")
    line = one_error_line(cli("eval", "fashioniq-dress", "--data", data, "--split", "val", "--pipeline", tiny_pipeline))
    assert str(data / "fashioniq" / "captions" / "cap.dress.val.json") in line and "is missing" in line
    # GeneCIS: the other task's file only; the message says which tasks are there
    (data / "genecis").mkdir()
    (data / "genecis" / "change_object.json").write_text("[]")
    line = one_error_line(cli("eval", "genecis", "--data", data, "--split", "focus_object", "--pipeline", tiny_pipeline))
    assert str(data / "genecis" / "focus_object.json") in line and "tasks present: change_object" in line


@pytest.mark.parametrize(
    "bench, split, valid",
    [
        ("circo", "test1", "valid splits: val, test"),
        ("cirr", "test", "valid splits: val, test1"),
        ("fashioniq-dress", "train", "valid splits: val, test"),
        ("genecis", "focus", "valid splits: change_attribute, change_object, focus_attribute, focus_object"),
    ],
)
def test_wrong_split_lists_the_valid_ones(cli, tmp_path, tiny_pipeline, bench, split, valid):
    line = one_error_line(cli("eval", bench, "--data", tmp_path, "--split", split, "--pipeline", tiny_pipeline))
    assert f"unknown split '{split}'" in line and line.endswith(valid)
