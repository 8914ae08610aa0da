"""GeneCIS through `cirkit eval`: all four tasks (instance crops for the attribute ones), the average
the paper reports, and candidate sets ranked by the pipeline's own final query."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cirkit.benchmarks import crop_instance
from cirkit.gallery import GalleryIndex
from cirkit.store import RunStore

COCO = [153_527 + 1_000 * i for i in range(12)]
VG = [2_316_576 + i for i in range(8)]


def _image(i: int, size=(64, 48)) -> Image.Image:
    rng = np.random.default_rng(i)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _genecis_dir(root: Path) -> Path:
    (root / "genecis" / "val2017").mkdir(parents=True)
    (root / "genecis" / "VG_100K_all").mkdir(parents=True)
    for i in COCO:
        _image(i).save(root / "genecis" / "val2017" / f"{i:012d}.jpg")
    for i in VG:
        _image(i, (80, 60)).save(root / "genecis" / "VG_100K_all" / f"{i}.jpg")
    for task in ("focus_object", "change_object"):
        samples = []
        for q in range(3):
            ref, target, *others = COCO[q * 4 : q * 4 + 4]
            samples.append({"condition": ["dog", "wall", "cup"][q], "reference": {"val_image_id": ref},
                            "target": {"val_image_id": target}, "gallery": [{"val_image_id": i} for i in others]})
        (root / "genecis" / f"{task}.json").write_text(json.dumps(samples))
    box = lambda i, b: {"image_id": str(VG[i]), "instance_bbox": b}  # noqa: E731
    for task in ("focus_attribute", "change_attribute"):
        samples = []
        for q in range(2):
            samples.append({"condition": ["red", "wooden"][q], "reference": box(q * 4, [10, 8, 20, 14]),
                            "target": box(q * 4 + 1, [30.5, 20, 25, 30]),
                            "gallery": [box(q * 4 + 2, [0, 0, 40, 10]), box(q * 4 + 3, [50, 30, 20, 20]), box(q * 4 + 1, [5, 5, 10, 40])]})
        (root / "genecis" / f"{task}.json").write_text(json.dumps(samples))
    return root


def _eval(cli, *args) -> dict:
    res = cli("eval", *map(str, args), "--json")
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_all_four_tasks_and_their_average(cli, tmp_path, tiny_pipeline):
    data = _genecis_dir(tmp_path / "bench")
    out = _eval(cli, "genecis", "--data", data, "--split", "all", "--pipeline", tiny_pipeline)
    tasks = out["experiments"]
    assert sorted(tasks) == ["change_attribute", "change_object", "focus_attribute", "focus_object"]
    assert all(t["failed_runs"] == 0 and t["metrics"]["queries"] in (2, 3) for t in tasks.values())
    assert out["average"]["R@1"] == pytest.approx(np.mean([t["metrics"]["R@1"] for t in tasks.values()]))

    # an attribute query ranks its 4 instance crops (the target's image holds two of them)
    store = RunStore(os.environ["CIRKIT_DATA_DIR"])
    rows = store.experiment(tasks["focus_attribute"]["experiment"])["runs"]
    run = store.get(next(r["run_id"] for r in rows if r["query_id"] == "focus_attribute-0"))
    paths = [hit["path"] for hit in run.results]
    assert len(paths) == 4 and all(p.startswith(".cirkit-crops/genecis/focus_attribute/") for p in paths)
    assert f".cirkit-crops/genecis/focus_attribute/{VG[1]}_30.5_20_25_30.png" in paths
    # the crop on disk is the official crop (dilated box, padded to a square), and the reference is a crop too
    crop = Image.open(data / f".cirkit-crops/genecis/focus_attribute/{VG[1]}_30.5_20_25_30.png")
    expected = crop_instance(Image.open(data / "genecis" / "VG_100K_all" / f"{VG[1]}.jpg").convert("RGB"), (30.5, 20, 25, 30))
    assert crop.size == expected.size and crop.size[0] == crop.size[1]
    assert np.array_equal(np.asarray(crop.convert("RGB")), np.asarray(expected))
    assert Path(run.inputs["image"]).name == f"{VG[0]}_10_8_20_14.png"
    store.close()


def test_a_pdv_pipeline_ranks_the_candidates_by_its_fused_vector(cli, tmp_path, tiny_models):
    from test_fusion import _fusion_pipeline

    data = _genecis_dir(tmp_path / "bench")
    pipeline = _fusion_pipeline(tmp_path / "pdv.yaml", tiny_models, reference=False, pdv={"alpha_text": 1.0, "alpha_image": 1.0, "beta": 0.5})
    out = _eval(cli, "genecis", "--data", data, "--split", "focus_object", "--pipeline", pipeline)
    store = RunStore(os.environ["CIRKIT_DATA_DIR"])
    index = GalleryIndex.open(next((data / ".cirkit-index").iterdir()))
    for row in store.experiment(out["experiment"])["runs"]:
        run = store.get(row["run_id"])
        fused = np.asarray(next(s for s in run.steps if s.name == "pdv").outputs["query_vectors"], dtype=np.float64)[0]
        caption_vector = np.asarray(next(s for s in run.steps if s.name == "embed_caption").outputs["query_vectors"], dtype=np.float64)[0]
        q = int(row["query_id"].split("-")[1])
        candidates = [f"genecis/val2017/{i:012d}.jpg" for i in COCO[q * 4 + 1 : q * 4 + 4]]
        vectors = np.stack([np.asarray(index.vectors[index.paths.index(c)], dtype=np.float64) for c in candidates])
        by_fused = [candidates[i] for i in np.argsort(-(vectors @ fused), kind="stable")]
        assert [hit["path"] for hit in run.results] == by_fused
        assert [h["score"] for h in run.results] == pytest.approx(sorted(vectors @ fused, reverse=True), abs=1e-5)
        assert not np.allclose(fused, caption_vector)  # the fused query, not the first vector of the run
    store.close()


def test_a_rerun_of_a_genecis_query_ranks_the_same_candidates(cli, tmp_path, tiny_pipeline):
    data = _genecis_dir(tmp_path / "bench")
    out = _eval(cli, "genecis", "--data", data, "--split", "focus_object", "--pipeline", tiny_pipeline)
    store = RunStore(os.environ["CIRKIT_DATA_DIR"])
    run = store.get(store.experiment(out["experiment"])["runs"][0]["run_id"])
    store.close()
    res = cli("runs", "rerun", run.id, "--from", "search")
    assert res.exit_code == 0, res.stderr
    new_id = res.stdout.split("new run ")[1].split()[0]
    new = json.loads(cli("runs", "show", new_id, "--json").stdout)
    assert [h["path"] for h in new["results"]] == [h["path"] for h in run.results] and len(run.results) == 3
