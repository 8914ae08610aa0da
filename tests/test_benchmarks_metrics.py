"""Metric functions: hand-computed cases, and agreement with the official scripts' arithmetic."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest

from cirkit.benchmarks import (
    CirQuery,
    average_precision_at_k,
    circo_metrics,
    cirr_metrics,
    evaluate,
    fashioniq_metrics,
    genecis_metrics,
    load,
    rank_by_scores,
    recall_at_k,
)
from cirkit.benchmarks.metrics import check_no_duplicates, restricted, without
from cirkit.errors import CirkitError



# ---------------------------------------------------------------- primitives

def test_rank_by_scores_ties_keep_gallery_order():
    names = ["a", "b", "c", "d"]
    assert rank_by_scores(names, [0.5, 0.9, 0.5, 0.1]) == ["b", "a", "c", "d"]
    assert rank_by_scores(names, [1, 1, 1, 1]) == names
    assert rank_by_scores(names, np.array([0.2, 0.2, 0.3, 0.2]), k=2) == ["c", "a"]
    with pytest.raises(CirkitError):
        rank_by_scores(names, [1, 2])
    with pytest.raises(CirkitError):
        rank_by_scores(names, [1, float("nan"), 2, 3])


def test_recall_at_k():
    assert recall_at_k(["x", "t", "y"], ["t"], 1) == 0.0
    assert recall_at_k(["x", "t", "y"], ["t"], 2) == 1.0
    assert recall_at_k(["x", "y"], ["t"], 50) == 0.0            # target never retrieved
    assert recall_at_k(["x", "u", "t"], ["t", "u"], 2) == 1.0   # any of several targets
    assert recall_at_k([], ["t"], 5) == 0.0


def test_duplicates_are_refused():
    with pytest.raises(CirkitError, match=r"'a' is ranked twice \(positions 1 and 3\)"):
        check_no_duplicates(["a", "b", "a"])
    with pytest.raises(CirkitError, match="ranked twice"):
        average_precision_at_k(["g", "g"], ["g"], 5)


def test_reference_removal_and_subset_restriction():
    assert without(["r", "a", "r", "b"], "r") == ["a", "b"]
    assert restricted(["x", "r", "b", "y", "a"], ["a", "b", "r"], drop="r") == ["b", "a"]


def test_average_precision_one_ground_truth():
    assert average_precision_at_k(["g", "x"], ["g"], 5) == 1.0
    assert average_precision_at_k(["x", "g"], ["g"], 5) == 0.5
    assert average_precision_at_k(["x", "y", "z", "w", "v", "g"], ["g"], 5) == 0.0
    assert average_precision_at_k(["x", "y", "z", "w", "v", "g"], ["g"], 10) == pytest.approx(1 / 6)


def test_average_precision_several_ground_truths():
    ranking = ["g1", "x", "g2", "y", "z", "g3", "w"]
    gts = ["g1", "g2", "g3"]
    # precision at the hits: 1/1, 2/3, 3/6; divided by min(K, 3)
    assert average_precision_at_k(ranking, gts, 5) == pytest.approx((1 + 2 / 3) / 3)
    assert average_precision_at_k(ranking, gts, 10) == pytest.approx((1 + 2 / 3 + 3 / 6) / 3)
    assert average_precision_at_k(ranking, gts, 2) == pytest.approx(1 / 2)      # / min(2, 3)


def test_average_precision_many_ground_truths_divides_by_k():
    gts = [f"g{i}" for i in range(12)]
    ranking = gts[:5] + [f"x{i}" for i in range(45)]
    assert average_precision_at_k(ranking, gts, 5) == 1.0
    assert average_precision_at_k(ranking, gts, 10) == pytest.approx(5 / 10)
    assert average_precision_at_k(ranking, gts, 50) == pytest.approx(5 / 12)
    assert average_precision_at_k(gts, gts, 50) == 1.0


# ---------------------------------------------------------------- protocols, hand-computed

def cirr_query(qid, target="t", ref="r"):
    return CirQuery(id=qid, reference=ref, text="", targets=(target,), candidates=(ref, "a", target, "b", "c", "d"))


def test_cirr_metrics_hand_computed():
    queries = [cirr_query("1"), cirr_query("2"), cirr_query("3")]
    rankings = {
        "1": ["r", "t", "a"],                              # reference removed: t is first
        "2": ["x", "a", "y", "b", "z", "t", "c", "d"],     # t 6th overall; in the set: a, b, t -> 3rd
        "3": ["x", "y"],                                   # t never retrieved: a miss
    }
    m = cirr_metrics(queries, rankings)
    assert m["R@1"] == pytest.approx(100 / 3)
    assert m["R@5"] == pytest.approx(100 / 3)
    assert m["R@10"] == pytest.approx(200 / 3)
    assert m["R@50"] == pytest.approx(200 / 3)
    assert m["R_subset@1"] == pytest.approx(100 / 3)
    assert m["R_subset@2"] == pytest.approx(100 / 3)
    assert m["R_subset@3"] == pytest.approx(200 / 3)
    assert m["Avg"] == pytest.approx((m["R@5"] + m["R_subset@1"]) / 2)
    assert m["subset_incomplete"] == 1          # query 3 ranked no set member at all
    assert m["queries"] == 3


def test_cirr_reference_never_counts():
    q = CirQuery(id="1", reference="r", text="", targets=("t",), candidates=("r", "t", "a", "b", "c", "d"))
    m = cirr_metrics([q], {"1": ["r", "a", "b", "c", "d", "t"]})
    assert m["R@5"] == 100.0 and m["R_subset@1"] == 0.0 and m["R_subset@3"] == 0.0


def test_circo_metrics_hand_computed():
    q1 = CirQuery(id="0", reference="r", text="", targets=("g1", "g2", "g3"),
                  extra={"target": "g1", "semantic_aspects": ("cardinality", "addition")})
    q2 = CirQuery(id="1", reference="r", text="", targets=("h",),
                  extra={"target": "h", "semantic_aspects": ("addition",)})
    rankings = {"0": ["g2", "x", "g1", "y", "z", "g3"], "1": ["x", "h"]}
    m = circo_metrics([q1, q2], rankings)
    ap1_5 = (1 + 2 / 3) / 3
    ap1_10 = (1 + 2 / 3 + 3 / 6) / 3
    assert m["mAP@5"] == pytest.approx(100 * (ap1_5 + 0.5) / 2)
    assert m["mAP@10"] == pytest.approx(100 * (ap1_10 + 0.5) / 2)
    # Recall@K counts the annotated target only: g1 is third, h second
    assert m["R@5"] == 100.0
    m1 = circo_metrics([q1], {"0": ["g2", "g1"]}, ks=(1, 2))
    assert m1["R@1"] == 0.0 and m1["R@2"] == 100.0 and m1["mAP@1"] == 100.0
    assert m["mAP@10/cardinality"] == pytest.approx(100 * ap1_10)
    assert m["mAP@10/addition"] == pytest.approx(100 * (ap1_10 + 0.5) / 2)
    assert "mAP@10/negation" not in m
    with pytest.raises(CirkitError, match="ranked twice"):
        circo_metrics([q2], {"1": ["h", "x", "h"]})


def test_fashioniq_keeps_the_reference():
    q = CirQuery(id="dress-0", reference="r", text="", targets=("t",))
    ranking = ["r"] + [f"x{i}" for i in range(8)] + ["t"]       # t is 10th only if r counts
    assert fashioniq_metrics([q], {"dress-0": ranking})["R@10"] == 100.0
    assert fashioniq_metrics([q], {"dress-0": ["r"] + [f"x{i}" for i in range(9)] + ["t"]})["R@10"] == 0.0


def test_genecis_ranks_candidates_only():
    q = CirQuery(id="focus_object-0", reference="r", text="", targets=("t",), candidates=("t", "a", "b", "c"))
    assert genecis_metrics([q], {"focus_object-0": ["a", "t", "b", "c"]}) == {
        "R@1": 0.0, "R@2": 100.0, "R@3": 100.0, "queries": 1}
    # names outside the candidates are ignored by the metric itself (evaluate() refuses them)
    assert genecis_metrics([q], {"focus_object-0": ["zz", "t"]})["R@1"] == 100.0


# ---------------------------------------------------------------- evaluate(): counting, never dropping

def test_missing_images_count_as_misses(shared):
    b = load("fashioniq-dress", shared, "val")
    names = list(b.gallery)
    # a perfect ranker, except that half the targets are missing from the indexed gallery
    missing_targets = {q.targets[0] for q in b.queries[::2]}
    available = [n for n in names if n not in missing_targets]
    rankings = {}
    for q in b.queries:
        top = [q.targets[0]] if q.targets[0] not in missing_targets else []
        rankings[q.id] = top + [n for n in available[:60] if n != q.targets[0]]
    r = evaluate(b, rankings, available=available)
    hit = sum(1 for q in b.queries if q.targets[0] not in missing_targets)
    assert r["R@10"] == pytest.approx(100 * hit / len(b.queries))
    assert r["queries"] == 2017
    assert r["gallery_missing"] == len(missing_targets)
    assert r["queries_target_missing"] == sum(1 for q in b.queries if q.targets[0] in missing_targets)
    assert r["gallery_images"] == 3817


def test_queries_without_ranking(shared):
    b = load("genecis", shared, "focus_object")
    rankings = {q.id: list(q.candidates) for q in b.queries[:1000]}
    with pytest.raises(CirkitError, match=r"no ranking for 960 of 1960 queries \(first: 'focus_object-1000'\)"):
        evaluate(b, rankings)
    r = evaluate(b, rankings, missing="miss")
    assert r["R@1"] == pytest.approx(100 * 1000 / 1960)
    assert r["queries_without_ranking"] == 960


def test_evaluate_refuses_bad_rankings(shared):
    b = load("cirr", shared, "val")
    q = b.queries[0]
    with pytest.raises(CirkitError, match="unknown query id '1'"):
        evaluate(b, {"1": []}, missing="miss")
    with pytest.raises(CirkitError, match=f"query '{q.id}': 'nope' is not in the cirr val gallery"):
        evaluate(b, {q.id: ["nope"]}, missing="miss")
    with pytest.raises(CirkitError, match="ranked twice"):
        evaluate(b, {q.id: [q.targets[0], q.targets[0]]}, missing="miss")
    g = load("genecis", shared, "change_object")
    with pytest.raises(CirkitError, match="is not in the query's candidates"):
        evaluate(g, {g.queries[0].id: [g.queries[1].reference]}, missing="miss")
    t = load("cirr", shared, "test1")
    with pytest.raises(CirkitError, match="no public ground truth: scoring needs the CIRR evaluation server"):
        evaluate(t, {})


# ---------------------------------------------------------------- agreement with the official code

def official_cirr(index_names, sorted_indices, reference_names, target_names, group_members):
    """The arithmetic of CLIP4Cir/SEARLE ``compute_cirr_val_metrics``, in numpy."""
    sorted_index_names = np.array(index_names)[sorted_indices]
    n, g = sorted_index_names.shape
    reference_mask = sorted_index_names != np.repeat(np.array(reference_names), g).reshape(n, -1)
    sorted_index_names = sorted_index_names[reference_mask].reshape(n, g - 1)
    labels = sorted_index_names == np.repeat(np.array(target_names), g - 1).reshape(n, -1)
    group_members = np.array(group_members)
    group_mask = (sorted_index_names[..., None] == group_members[:, None, :]).sum(-1).astype(bool)
    group_labels = labels[group_mask].reshape(n, -1)
    out = {f"R@{k}": labels[:, :k].sum() / n * 100 for k in (1, 5, 10, 50)}
    out.update({f"R_subset@{k}": group_labels[:, :k].sum() / n * 100 for k in (1, 2, 3)})
    return out


def test_cirr_matches_official_arithmetic(shared):
    b = load("cirr", shared, "val")
    queries = b.queries[:400]
    names = list(b.gallery)
    rng = np.random.default_rng(0)
    sorted_indices = np.stack([rng.permutation(len(names)) for _ in queries])
    # make it informative: put each target near the top for a third of the queries
    pos = {n: i for i, n in enumerate(names)}
    for row, q in zip(sorted_indices, queries, strict=True):
        if rng.random() < 0.33:
            t = pos[q.targets[0]]
            j = int(np.where(row == t)[0][0])
            k = int(rng.integers(0, 8))
            row[j], row[k] = row[k], row[j]
    expected = official_cirr(names, sorted_indices, [q.reference for q in queries],
                             [q.targets[0] for q in queries], [list(q.candidates) for q in queries])
    rankings = {q.id: [names[i] for i in row] for q, row in zip(queries, sorted_indices, strict=True)}
    got = cirr_metrics(queries, rankings)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key


def test_circo_matches_official_evaluation_on_the_example_submission(shared):
    """miccunifi/CIRCO src/evaluation.py compute_metrics, in numpy, on submission_val.json."""
    ann = json.loads((shared / "circo" / "annotations" / "val.json").read_text())
    preds = json.loads((shared / "circo" / "submission_examples" / "submission_val.json").read_text())
    aps, recalls, semantic = defaultdict(list), defaultdict(list), defaultdict(list)
    for qid, p in preds.items():
        a = ann[int(qid)]
        p = np.array(p, dtype=int)
        labels = np.isin(p, a["gt_img_ids"])
        precisions = np.cumsum(labels) * labels / np.arange(1, len(p) + 1)
        for k in (5, 10, 25, 50):
            aps[k].append(np.sum(precisions[:k]) / min(len(a["gt_img_ids"]), k))
            recalls[k].append(np.sum((p == a["target_img_id"])[:k]))
        for aspect in a["semantic_aspects"]:
            semantic[aspect].append(np.sum(precisions[:10]) / min(len(a["gt_img_ids"]), 10))
    b = load("circo", shared, "val")
    got = evaluate(b, preds)
    for k in (5, 10, 25, 50):
        assert got[f"mAP@{k}"] == pytest.approx(np.mean(aps[k]) * 100)
        assert got[f"R@{k}"] == pytest.approx(np.mean(recalls[k]) * 100)
    for aspect, values in semantic.items():
        assert got[f"mAP@10/{aspect}"] == pytest.approx(np.mean(values) * 100)
    assert len(semantic) == 9
