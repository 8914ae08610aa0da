"""`cirkit eval` end to end on small folders in the benchmarks' real layouts, with tiny models."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from conftest import write_pipeline

NAMES = [f"dev-{i}-0-img{i % 2}" for i in range(12)]


@pytest.fixture
def cirr_dir(tmp_path):
    """DATA_DIR/cirr in the official layout: 12 dev images (one missing on disk), 3 queries."""
    root = tmp_path / "data" / "cirr"
    (root / "captions").mkdir(parents=True)
    (root / "image_splits").mkdir()
    (root / "img_raw" / "dev").mkdir(parents=True)
    for i, name in enumerate(NAMES[:-1]):
        Image.new("RGB", (48, 40), ((i * 67) % 256, (i * 29) % 256, (i * 113) % 256)).save(root / "img_raw" / "dev" / f"{name}.png")
    (root / "image_splits" / "split.rc2.val.json").write_text(json.dumps({n: f"./dev/{n}.png" for n in NAMES}))
    queries = []
    for q in range(3):
        members = NAMES[q * 3 : q * 3 + 6]
        queries.append({"pairid": 100 + q, "reference": members[0], "target_hard": members[2],
                        "target_soft": {members[2]: 1.0}, "caption": f"make it shade {q}",
                        "img_set": {"id": q, "members": members, "reference_rank": 0, "target_rank": 2}})
    (root / "captions" / "cap.rc2.val.json").write_text(json.dumps(queries))
    return tmp_path / "data"


def test_eval_cirr_end_to_end(cli, tmp_path, cirr_dir, tiny_pipeline, tiny_models):
    res = cli("eval", "cirr", "--data", cirr_dir, "--split", "val", "--pipeline", tiny_pipeline, "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    metrics = out["metrics"]
    for key in ("R@1", "R@5", "R@10", "R@50", "R_subset@1", "R_subset@2", "R_subset@3"):
        assert 0.0 <= metrics[key] <= 100.0
    assert metrics["R@50"] == 100.0  # 11 images: every present target is in the top 50
    assert metrics["gallery_missing"] == 1 and metrics["failed_runs"] == 0
    assert metrics["R_subset@3"] >= metrics["R_subset@1"]
    exp = out["experiment"]

    listed = cli("eval", "list")
    assert exp in listed.stdout
    failures = cli("runs", "failures", exp, "--k", "1", "--json")
    assert failures.exit_code == 0, failures.stderr
    rows = json.loads(failures.stdout)
    assert len(rows) == round(3 * (1 - metrics["R@1"] / 100))
    for row in rows:
        assert row["caption"] and row["descriptions"] and row["modification"].startswith("make it shade")
        assert row["target_rank"] is None or row["target_rank"] > 1
    table = cli("runs", "failures", exp, "--k", "1")
    assert table.exit_code == 0 and "failures (top 1)" in table.stdout

    other = write_pipeline(tmp_path / "other.yaml", tiny_models)
    other.write_text(other.read_text().replace("prompt: cirevl-rewrite,", "prompt: cirevl-rewrite-simple,"))
    res = cli("eval", "cirr", "--data", cirr_dir, "--split", "val", "--pipeline", other, "--json")
    exp_b = json.loads(res.stdout.strip().splitlines()[-1])["experiment"]
    diff = cli("eval", "compare", exp, exp_b, "--json")
    assert diff.exit_code == 0, diff.stderr
    compared = json.loads(diff.stdout)
    assert {m["metric"] for m in compared["metrics"]} >= {"R@1", "R_subset@1"}
    assert cli("eval", "compare", exp, exp_b).exit_code == 0


def test_eval_score_without_models(cli, tmp_path, cirr_dir):
    perfect = {}
    for q in json.loads((cirr_dir / "cirr" / "captions" / "cap.rc2.val.json").read_text()):
        others = [m for m in q["img_set"]["members"] if m not in (q["target_hard"], q["reference"])]
        perfect[str(q["pairid"])] = [q["target_hard"], *others]
    predictions = tmp_path / "pred.json"
    predictions.write_text(json.dumps(perfect))
    res = cli("eval", "score", "cirr", "--annotations", cirr_dir, "--predictions", predictions, "--split", "val", "--json")
    assert res.exit_code == 0, res.stderr
    metrics = json.loads(res.stdout)
    assert metrics["R@1"] == 100.0 and metrics["R_subset@1"] == 100.0


def test_eval_triplets(cli, tmp_path, tiny_pipeline):
    data = tmp_path / "mine"
    (data / "imgs").mkdir(parents=True)
    for i in range(8):
        Image.new("RGB", (40, 40), ((i * 70) % 256, (i * 30) % 256, 90)).save(data / "imgs" / f"{i}.jpg")
    lines = [{"id": f"t{i}", "reference": f"imgs/{i}.jpg", "text": "a brighter one", "targets": [f"imgs/{(i + 1) % 8}.jpg"]} for i in range(4)]
    (data / "queries.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    res = cli("eval", "triplets", "--data", data, "--split", "queries", "--pipeline", tiny_pipeline, "--limit", "3", "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["metrics"]["R@10"] == 100.0  # 8 images: the target is always in the top 10
    assert len(json.loads(cli("runs", "list", "--json").stdout)) == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--split", "train"], "split"),
        (["--split", "val", "--data", "WRONG"], "cap.rc2.val.json"),
    ],
)
def test_eval_bad_input(cli, tmp_path, cirr_dir, tiny_pipeline, args, message):
    full = ["eval", "cirr", "--data", cirr_dir, "--pipeline", tiny_pipeline, *args]
    full = [tmp_path / "nowhere" if a == "WRONG" else a for a in full]
    if "--data" in args:  # the later --data wins
        pass
    res = cli(*full)
    assert res.exit_code == 1 and message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_steps_can_take_given_texts(cli, tmp_path, cirr_dir, tiny_models, engine_calls_counter, shared):
    """The precomputed BLIP-2 captions of CIRR (keyed by image name) replace the captioner."""
    given = json.loads((shared / "captions" / "image_captions_cirr_val.json").read_text())
    mine = {name: given.get(name, f"a photo numbered {i}") for i, name in enumerate(NAMES)}
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps(mine))
    pipeline = write_pipeline(tmp_path / "given.yaml", tiny_models)
    pipeline.write_text(pipeline.read_text().replace(
        "{name: caption, kind: caption, model: captioner, prompt: cirevl-caption,",
        f"{{name: caption, kind: caption, given: {captions},"))
    res = cli("eval", "cirr", "--data", cirr_dir, "--split", "val", "--pipeline", pipeline, "--json")
    assert res.exit_code == 0, res.stderr
    run = json.loads(cli("runs", "show", json.loads(cli("runs", "list", "--json").stdout)[0]["id"], "--json").stdout)
    caption = run["steps"][0]
    assert caption["origin"] == "given" and caption["notes"][0].startswith(f"given: {captions}")
    assert caption["outputs"]["caption"] in mine.values()
    assert all(model != str(tiny_models.blip2) for model, _ in engine_calls_counter)

    mine.pop(NAMES[0])
    captions.write_text(json.dumps(mine))
    res = cli("eval", "cirr", "--data", cirr_dir, "--split", "val", "--pipeline", pipeline, "--json")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["metrics"]["failed_runs"] == 1  # the query whose reference has no caption
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    pipeline.write_text(pipeline.read_text().replace(str(captions), str(bad)))
    res = cli("pipelines", "validate", pipeline)
    assert res.exit_code == 1 and "field 'given'" in res.stderr


def test_eval_exits_non_zero_when_every_run_failed(cli, tmp_path, cirr_dir, tiny_pipeline, tiny_models):
    """A model that cannot load fails every query: the experiment is stored, and the exit says so."""
    res = cli("eval", "cirr", "--data", cirr_dir, "--split", "val", "--pipeline", tiny_pipeline, "--json",
              "--model", f'captioner={{id: "{tiny_models.clip_config.parent}"}}')
    assert res.exit_code != 0
    line = res.stderr.strip().splitlines()[-1]  # after the note on the missing gallery image
    assert line.startswith("error: every run of experiment ") and "failed; the first: step 'caption' failed" in line
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["metrics"]["failed_runs"] == 3 and out["metrics"]["R@1"] == 0.0
