"""Submission files (validated against the official examples) and scoring prediction files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cirkit.benchmarks import (
    circo_submission,
    load,
    score_predictions,
    validate_circo_submission,
    validate_cirr_submission,
    write_circo_submission,
    write_cirr_submission,
)
from cirkit.errors import CirkitError



@pytest.fixture(scope="module")
def cirr_test1(shared):
    return load("cirr", shared, "test1")


@pytest.fixture(scope="module")
def circo_test(shared):
    return load("circo", shared, "test")


def example(shared: Path, rel: str) -> dict:
    return json.loads((shared / rel).read_text())


CIRR_RECALL = "cirr/submission_examples/test1_pred_ranks_recall.json"
CIRR_SUBSET = "cirr/submission_examples/test1_pred_ranks_recall_subset.json"
CIRCO_TEST = "circo/submission_examples/submission_test.json"
CIRCO_VAL = "circo/submission_examples/submission_val.json"


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------- the official examples are valid

def test_official_cirr_examples_validate(shared, cirr_test1):
    assert validate_cirr_submission(example(shared, CIRR_RECALL), cirr_test1) == "recall"
    assert validate_cirr_submission(example(shared, CIRR_SUBSET), cirr_test1) == "recall_subset"


def test_official_circo_examples_validate(shared, circo_test):
    sub = validate_circo_submission(example(shared, CIRCO_TEST), circo_test)
    assert len(sub) == 800 and all(len(v) == 50 for v in sub.values())
    validate_circo_submission(example(shared, CIRCO_VAL), load("circo", shared, "val"))


def test_cirr_writer_reproduces_the_official_examples(shared, cirr_test1, tmp_path):
    recall, subset = example(shared, CIRR_RECALL), example(shared, CIRR_SUBSET)
    rankings = {k: v for k, v in recall.items() if k not in ("version", "metric")}
    subsets = {k: v for k, v in subset.items() if k not in ("version", "metric")}
    p_recall, p_subset = write_cirr_submission(cirr_test1, rankings, tmp_path, prefix="mine_",
                                               subset_rankings=subsets)
    assert p_recall.name == "mine_cirr_test1_recall.json" and p_subset.name == "mine_cirr_test1_recall_subset.json"
    assert json.loads(p_recall.read_text()) == recall
    assert json.loads(p_subset.read_text()) == subset
    assert list(json.loads(p_recall.read_text()))[:2] == ["version", "metric"]


def test_cirr_writer_from_full_rankings(shared, cirr_test1, tmp_path):
    names = list(cirr_test1.gallery)
    rankings = {}
    for q in cirr_test1.queries:
        rest = [n for n in names if n != q.reference][:60]
        rankings[q.id] = [q.reference] + rest + [m for m in q.candidates if m not in rest and m != q.reference]
    p_recall, p_subset = write_cirr_submission(cirr_test1, rankings, tmp_path)
    recall, subset = json.loads(p_recall.read_text()), json.loads(p_subset.read_text())
    q = cirr_test1.queries[0]
    assert recall["version"] == "rc2" and recall["metric"] == "recall"
    assert subset["metric"] == "recall_subset"
    assert recall[q.id] == [n for n in names if n != q.reference][:50]       # reference removed first
    assert subset[q.id] == [n for n in rankings[q.id] if n in q.candidates and n != q.reference][:3]
    assert score_predictions("cirr", shared, [p_recall, p_subset], "test1")["valid"] is True


def test_cirr_writer_refuses_short_rankings(cirr_test1, tmp_path):
    q = cirr_test1.queries[0]
    rankings = {x.id: list(x.candidates) for x in cirr_test1.queries}
    with pytest.raises(CirkitError) as e:
        write_cirr_submission(cirr_test1, rankings, tmp_path)
    assert one_line_error(e) == f"rankings: pairid {q.id}: 5 names once the reference is removed; the server needs 50"
    assert not list(tmp_path.iterdir())                                       # nothing half-written


def test_circo_writer_reproduces_the_official_example(shared, circo_test, tmp_path):
    ex = example(shared, CIRCO_TEST)
    path = write_circo_submission(circo_test, {k: [str(i) for i in v] + ["1"] for k, v in ex.items()},
                                  tmp_path / "circo_test.json")
    assert json.loads(path.read_text()) == ex


def test_circo_writer_refuses_duplicates_and_unknown_images(shared, circo_test):
    ex = example(shared, CIRCO_TEST)
    bad = {k: list(v) for k, v in ex.items()}
    bad["3"][7] = bad["3"][2]
    with pytest.raises(CirkitError) as e:
        circo_submission(circo_test, bad)
    assert one_line_error(e) == (f"CIRCO submission: query 3: '{bad['3'][2]}' is ranked twice "
                                 "(positions 3 and 8)")
    bad = {k: list(v) for k, v in ex.items()}
    bad["5"][0] = 999999999
    with pytest.raises(CirkitError) as e:
        circo_submission(circo_test, bad)
    assert "query 5: '999999999' is not in the CIRCO gallery" in one_line_error(e)
    short = {k: list(v)[:49] for k, v in ex.items()}
    with pytest.raises(CirkitError) as e:
        circo_submission(circo_test, short)
    assert one_line_error(e) == "rankings: query 0: 49 names; the server needs 50"


@pytest.mark.parametrize("mutate,expected", [
    (lambda s: s.pop("version"), "missing 'version' entry"),
    (lambda s: s.pop("metric"), "missing 'metric' entry"),
    (lambda s: s.update(version="rc1"), "'version' must be \"rc2\", got 'rc1'"),
    (lambda s: s.update(metric="map"), "'metric' must be \"recall\" or \"recall_subset\", got 'map'"),
    (lambda s: s.pop("12063"), "no prediction for 1 of 4148 queries (first: '12063')"),
    (lambda s: s.update({"99999999": []}), "unknown query id '99999999' (not in cirr test1; 1 unknown)"),
    (lambda s: s.update({"12063": s["12063"][:49]}), "pairid 12063: expected 50 names, got 49"),
    (lambda s: s["12063"].__setitem__(5, s["12063"][0]), "pairid 12063: 'test1-38-2-img1' is ranked twice"),
    (lambda s: s["12063"].__setitem__(5, "dev-1-0-img0"),
     "pairid 12063: 'dev-1-0-img0' is not in the CIRR test1 gallery"),
    (lambda s: s["12063"].__setitem__(5, "test1-147-1-img1"), "pairid 12063: ranks the reference image"),
    (lambda s: s.update({"12063": "x"}), "pairid 12063: expected a list of image names, got a string"),
])
def test_cirr_validation_errors(shared, cirr_test1, mutate, expected):
    sub = example(shared, CIRR_RECALL)
    mutate(sub)
    with pytest.raises(CirkitError) as e:
        validate_cirr_submission(sub, cirr_test1)
    assert expected in one_line_error(e)


def test_cirr_subset_validation(shared, cirr_test1):
    sub = example(shared, CIRR_SUBSET)
    sub["12063"][0] = "test1-38-2-img1"   # a gallery image outside the query's set
    with pytest.raises(CirkitError) as e:
        validate_cirr_submission(sub, cirr_test1)
    assert "pairid 12063: 'test1-38-2-img1' is not in the query's image set" in one_line_error(e)


# ---------------------------------------------------------------- score_predictions

def write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_score_cirr_val_generic_rankings(shared, tmp_path):
    b = load("cirr", shared, "val")
    names = list(b.gallery)
    # the reference first (removed by the protocol), then the target: a perfect score
    perfect = {q.id: [q.reference, q.targets[0]] + [n for n in names[:100] if n not in (q.reference, q.targets[0])]
               for q in b.queries}
    r = score_predictions("cirr", shared, write(tmp_path / "p.json", perfect), "val")
    assert r["R@1"] == 100.0 and r["R_subset@1"] == 100.0 and r["Avg"] == 100.0 and r["queries"] == 4181
    # the target last of its set: R_subset@3 misses it (5 candidates), R@50 too
    worst = {q.id: [n for n in names if n != q.targets[0]] + [q.targets[0]] for q in b.queries[:50]}
    r = score_predictions("cirr", shared, write(tmp_path / "w.json", worst), "val", missing="miss")
    assert r["R@50"] == 0.0 and r["R_subset@3"] == 0.0 and r["queries_without_ranking"] == 4131


def test_score_cirr_val_submission_files(shared, tmp_path):
    b = load("cirr", shared, "val")
    names = list(b.gallery)
    rankings = {q.id: [q.targets[0]] + [n for n in names[:60] + list(q.candidates)
                                        if n not in (q.reference, q.targets[0])]
                for q in b.queries}
    rankings = {k: list(dict.fromkeys(v)) for k, v in rankings.items()}
    p_recall, p_subset = write_cirr_submission(b, rankings, tmp_path)
    r = score_predictions("cirr", shared, [p_recall, p_subset], "val")
    assert r["R@1"] == 100.0 and r["R_subset@1"] == 100.0
    only_recall = score_predictions("cirr", shared, p_recall, "val")
    assert "R@50" in only_recall and "R_subset@1" not in only_recall
    with pytest.raises(CirkitError) as e:
        score_predictions("cirr", shared, [p_recall, p_recall], "val")
    assert "a second 'recall' file" in one_line_error(e)


def test_score_circo_val_and_test(shared, tmp_path):
    b = load("circo", shared, "val")
    filler = [n for n in list(b.gallery)[:40] if all(n not in q.targets for q in b.queries)][:2]
    perfect = {q.id: list(q.targets) + filler for q in b.queries}
    r = score_predictions("circo", shared, write(tmp_path / "v.json", perfect), "val")
    assert r["mAP@5"] == 100.0 and r["mAP@50"] == 100.0 and r["R@5"] == 100.0
    r = score_predictions("circo", shared, shared / CIRCO_TEST, "test")
    assert r["scored"] is False and r["valid"] is True
    assert "needs the CIRCO evaluation server" in r["message"]


def test_score_fashioniq_average_and_genecis_average(shared, tmp_path):
    preds = {}
    for cat, hit in (("dress", True), ("shirt", False), ("toptee", True)):
        b = load(f"fashioniq-{cat}", shared, "val")
        names = list(b.gallery)[:60]
        for q in b.queries:
            rest = [n for n in names if n != q.targets[0]]
            preds[q.id] = ([q.targets[0]] + rest) if hit else rest
    r = score_predictions("fashioniq", shared, write(tmp_path / "f.json", preds), "val")
    assert r["dress/R@10"] == 100.0 and r["shirt/R@50"] == 0.0 and r["toptee/R@10"] == 100.0
    assert r["average/R@10"] == pytest.approx(200 / 3) and r["average/R@50"] == pytest.approx(200 / 3)
    one = score_predictions("fashioniq-dress", shared,
                            write(tmp_path / "d.json", {k: v for k, v in preds.items() if k.startswith("dress-")}),
                            "val")
    assert one["R@10"] == 100.0
    g = {}
    perfect = ("focus_object", "focus_attribute", "change_attribute")
    for task in ("focus_object", "change_object", "focus_attribute", "change_attribute"):
        for q in load("genecis", shared, task).queries:
            g[q.id] = list(q.candidates) if task in perfect else list(reversed(q.candidates))
    r = score_predictions("genecis", shared, write(tmp_path / "g.json", g), "all")
    assert r["focus_object/R@1"] == 100.0 and r["change_object/R@1"] == 0.0
    assert r["focus_attribute/R@1"] == 100.0 and r["change_attribute/R@1"] == 100.0
    assert r["average/R@1"] == 75.0  # the paper's figure: the mean of the four tasks' R@1
    r = score_predictions("genecis", shared, write(tmp_path / "g1.json",
                                                   {k: v for k, v in g.items() if k.startswith("focus_object")}),
                          "focus_object")
    assert r["focus_object/R@1"] == 100.0


def test_score_predictions_bad_files(shared, tmp_path):
    b = load("circo", shared, "val")
    good = {q.id: list(q.targets) for q in b.queries}
    bad = dict(good, **{"9999": ["1"]})
    with pytest.raises(CirkitError) as e:
        score_predictions("circo", shared, write(tmp_path / "a.json", bad), "val")
    assert "unknown query id '9999'" in one_line_error(e)
    dup = dict(good, **{"0": [good["0"][0], good["0"][0]]})
    with pytest.raises(CirkitError) as e:
        score_predictions("circo", shared, write(tmp_path / "b.json", dup), "val")
    assert "ranked twice" in one_line_error(e)
    trunc = tmp_path / "c.json"
    trunc.write_text(json.dumps(good)[:300])
    with pytest.raises(CirkitError) as e:
        score_predictions("circo", shared, trunc, "val")
    assert one_line_error(e).startswith(f"{trunc}: not valid JSON (truncated)")
    with pytest.raises(CirkitError) as e:
        score_predictions("circo", shared, write(tmp_path / "d.json", [1, 2]), "val")
    assert "expected a JSON object" in one_line_error(e)
    with pytest.raises(CirkitError) as e:
        score_predictions("circo", shared, tmp_path / "nope.json", "val")
    assert one_line_error(e) == f"{tmp_path / 'nope.json'}: file not found"
    with pytest.raises(CirkitError) as e:
        score_predictions("circo", shared, write(tmp_path / "e.json", good), "train")
    assert "valid splits: val, test" in one_line_error(e)
    f = {q.id: [q.targets[0]] for q in load("fashioniq-dress", shared, "val").queries}
    with pytest.raises(CirkitError) as e:
        score_predictions("fashioniq", shared, write(tmp_path / "f.json", f), "val")
    assert "no ranking for 2038 of 2038 queries (first: 'shirt-0')" in one_line_error(e)


def test_score_test_splits_validate_only(shared, tmp_path):
    r = score_predictions("cirr", shared, [shared / CIRR_RECALL, shared / CIRR_SUBSET], "test1")
    assert r == {**r, "valid": True, "scored": False, "queries": 4148}
    assert "needs the CIRR evaluation server" in r["message"]
    broken = example(shared, CIRR_SUBSET)
    broken["12064"] = broken["12064"] + ["test1-83-1-img1"]
    with pytest.raises(CirkitError) as e:
        score_predictions("cirr", shared, write(tmp_path / "s.json", broken), "test1")
    assert "pairid 12064: expected 3 names, got 4" in one_line_error(e)
    t = load("fashioniq-dress", shared, "test")
    preds = {q.id: [q.reference] for q in t.queries}
    r = score_predictions("fashioniq-dress", shared, write(tmp_path / "t.json", preds), "test")
    assert r["scored"] is False and "no evaluation server" in r["message"]
