"""Metrics over rankings: for each query, a list of gallery names, best first.

Every metric is a percentage (0-100, as papers and the official scripts print them) averaged over
ALL the queries given: a query whose target is absent from its ranking (not retrieved, or missing
from the indexed gallery) is a miss, never dropped. Rankings must not repeat a name.

What each protocol does (checked against the official code):

- CIRR (Cuberick-Orion/CIRR; the validate code of CLIP4Cir and SEARLE): the reference image is
  removed from the ranking; Recall@K is a hit when ``target_hard`` is in the top K. Recall_subset@K
  ranks only ``img_set.members`` (so 5 candidates once the reference is removed), in the order of
  the full ranking. ``Avg`` is (R@5 + R_subset@1) / 2, the number the leaderboard reports.
- CIRCO (miccunifi/CIRCO src/evaluation.py): the ranking is used as given. AP@K sums, over the top K,
  precision-at-i at each position i holding a ground truth, divided by min(K, number of ground
  truths); mAP@K is its mean. Recall@K counts ``target_img_id`` only. Semantic mAP@10 is the mean
  AP@10 over the queries that have each ``semantic_aspects`` entry.
- FashionIQ (XiaoxiaoGuo/fashion-iq; CLIP4Cir/SEARLE validate): the reference stays in the gallery;
  Recall@{10,50} per category, and their plain average over the three categories.
- GeneCIS (facebookresearch/genecis eval/eval_functions.py ``validate``): each query ranks its own
  candidates ``[target] + gallery``; Recall@{1,2,3}; the summary is R@1 averaged over the tasks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from cirkit.benchmarks.base import CirQuery
from cirkit.errors import CirkitError

CIRR_KS = (1, 5, 10, 50)
CIRR_SUBSET_KS = (1, 2, 3)
CIRCO_KS = (5, 10, 25, 50)
FASHIONIQ_KS = (10, 50)
GENECIS_KS = (1, 2, 3)
TRIPLETS_RECALL_KS = (1, 5, 10, 50)
TRIPLETS_MAP_KS = (5, 10, 25, 50)


# ---------------------------------------------------------------- per-query primitives

def rank_by_scores(names: Sequence[str], scores: Sequence[float] | np.ndarray, k: int | None = None) -> list[str]:
    """Names sorted by score, highest first; equal scores keep the order of `names` (stable)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(names),):
        raise CirkitError(f"rank_by_scores: {len(names)} names but {scores.size} scores")
    if np.isnan(scores).any():
        raise CirkitError("rank_by_scores: scores contain NaN")
    order = np.argsort(-scores, kind="stable")
    if k is not None:
        order = order[:k]
    return [names[i] for i in order]


def check_no_duplicates(ranking: Sequence[str], where: str = "ranking") -> None:
    if len(set(ranking)) == len(ranking):
        return
    first: dict[str, int] = {}
    for i, name in enumerate(ranking):
        if name in first:
            raise CirkitError(f"{where}: '{name}' is ranked twice (positions {first[name] + 1} and {i + 1})")
        first[name] = i


def without(ranking: Sequence[str], name: str) -> list[str]:
    """The ranking with every occurrence of `name` (the reference) removed."""
    return [n for n in ranking if n != name]


def restricted(ranking: Sequence[str], members: Iterable[str], drop: str | None = None) -> list[str]:
    """The ranking restricted to `members` (order kept), without `drop`."""
    keep = set(members)
    if drop is not None:
        keep.discard(drop)
    return [n for n in ranking if n in keep]


def recall_at_k(ranking: Sequence[str], targets: Iterable[str], k: int) -> float:
    """1.0 when any target is among the first `k` names, else 0.0."""
    if k < 1:
        raise CirkitError(f"recall_at_k: k must be >= 1, got {k}")
    targets = set(targets)
    return 1.0 if any(n in targets for n in ranking[:k]) else 0.0


def average_precision_at_k(ranking: Sequence[str], ground_truths: Sequence[str], k: int) -> float:
    """CIRCO's AP@K: sum of precision@i at ground-truth positions i <= K, / min(K, #ground truths)."""
    if k < 1:
        raise CirkitError(f"average_precision_at_k: k must be >= 1, got {k}")
    gts = set(ground_truths)
    if not gts:
        raise CirkitError("average_precision_at_k: no ground truths")
    check_no_duplicates(ranking)
    hits = 0
    total = 0.0
    for i, name in enumerate(ranking[:k], 1):
        if name in gts:
            hits += 1
            total += hits / i
    return total / min(len(gts), k)


# ---------------------------------------------------------------- per-protocol aggregates

def _ranking(rankings: Mapping[str, Sequence[str]], q: CirQuery) -> Sequence[str]:
    try:
        return rankings[q.id]
    except KeyError:
        raise CirkitError(f"no ranking for query '{q.id}'") from None


def _targets(q: CirQuery) -> tuple[str, ...]:
    if not q.targets:
        raise CirkitError(f"query '{q.id}' has no ground truth target")
    return q.targets


def _pct(values: list[float]) -> float:
    return float(np.mean(values) * 100.0) if values else float("nan")


def cirr_metrics(queries: Sequence[CirQuery], rankings: Mapping[str, Sequence[str]], *, recall: bool = True,
                 subset: bool = True, ks: Sequence[int] = CIRR_KS,
                 subset_ks: Sequence[int] = CIRR_SUBSET_KS) -> dict[str, float]:
    """CIRR Recall@K (reference removed) and Recall_subset@K (within img_set, reference removed).

    ``subset_incomplete`` counts queries whose ranking held fewer set members than the largest K
    and missed the target: truncated rankings cannot say where it would have been (counted as a miss).
    """
    hits = {k: [] for k in ks}
    sub_hits = {k: [] for k in subset_ks}
    incomplete = 0
    for q in queries:
        (target,) = _targets(q)[:1]
        ranking = without(_ranking(rankings, q), q.reference)
        if recall:
            for k in ks:
                hits[k].append(recall_at_k(ranking, (target,), k))
        if subset:
            if q.candidates is None:
                raise CirkitError(f"query '{q.id}' has no image set")
            sub = restricted(ranking, q.candidates, drop=q.reference)
            n_set = len(set(q.candidates) - {q.reference})
            if len(sub) < min(max(subset_ks), n_set) and target not in sub:
                incomplete += 1
            for k in subset_ks:
                sub_hits[k].append(recall_at_k(sub, (target,), k))
    out: dict[str, float] = {}
    if recall:
        out.update({f"R@{k}": _pct(hits[k]) for k in ks})
    if subset:
        out.update({f"R_subset@{k}": _pct(sub_hits[k]) for k in subset_ks})
        out["subset_incomplete"] = incomplete
    if recall and subset and 5 in hits and 1 in sub_hits:
        out["Avg"] = (out["R@5"] + out["R_subset@1"]) / 2
    out["queries"] = len(queries)
    return out


def circo_metrics(queries: Sequence[CirQuery], rankings: Mapping[str, Sequence[str]],
                  ks: Sequence[int] = CIRCO_KS, aspects: Sequence[str] | None = None) -> dict[str, float]:
    """CIRCO mAP@K over all ground truths, Recall@K of the annotated target, semantic mAP@10."""
    from cirkit.benchmarks.circo import SEMANTIC_ASPECTS

    aps = {k: [] for k in ks}
    recalls = {k: [] for k in ks}
    by_aspect: dict[str, list[float]] = {}
    for q in queries:
        gts = _targets(q)
        target = q.extra.get("target", gts[0])
        ranking = _ranking(rankings, q)
        check_no_duplicates(ranking, f"query '{q.id}'")
        for k in ks:
            aps[k].append(average_precision_at_k(ranking, gts, k))
            recalls[k].append(recall_at_k(ranking, (target,), k))
        ap10 = average_precision_at_k(ranking, gts, 10)
        for aspect in q.extra.get("semantic_aspects", ()):
            by_aspect.setdefault(aspect, []).append(ap10)
    out: dict[str, float] = {f"mAP@{k}": _pct(aps[k]) for k in ks}
    out.update({f"R@{k}": _pct(recalls[k]) for k in ks})
    order = list(aspects if aspects is not None else SEMANTIC_ASPECTS)
    order += sorted(a for a in by_aspect if a not in order)
    for aspect in order:
        if aspect in by_aspect:
            out[f"mAP@10/{aspect}"] = _pct(by_aspect[aspect])
    out["queries"] = len(queries)
    return out


def recall_metrics(queries: Sequence[CirQuery], rankings: Mapping[str, Sequence[str]], ks: Sequence[int], *,
                   drop_reference: bool = False, use_candidates: bool = False) -> dict[str, float]:
    """Recall@K: a hit when any target is in the top K (FashionIQ, GeneCIS)."""
    hits = {k: [] for k in ks}
    for q in queries:
        targets = _targets(q)
        ranking = _ranking(rankings, q)
        if use_candidates and q.candidates is not None:
            ranking = restricted(ranking, q.candidates)
        if drop_reference:
            ranking = without(ranking, q.reference)
        for k in ks:
            hits[k].append(recall_at_k(ranking, targets, k))
    out = {f"R@{k}": _pct(hits[k]) for k in ks}
    out["queries"] = len(queries)
    return out


def fashioniq_metrics(queries: Sequence[CirQuery], rankings: Mapping[str, Sequence[str]],
                      ks: Sequence[int] = FASHIONIQ_KS) -> dict[str, float]:
    """FashionIQ Recall@{10,50} of one category (reference kept in the ranking)."""
    return recall_metrics(queries, rankings, ks)


def genecis_metrics(queries: Sequence[CirQuery], rankings: Mapping[str, Sequence[str]],
                    ks: Sequence[int] = GENECIS_KS) -> dict[str, float]:
    """GeneCIS Recall@{1,2,3} of one task, each query ranking its own candidates."""
    return recall_metrics(queries, rankings, ks, use_candidates=True)


def triplets_metrics(queries: Sequence[CirQuery], rankings: Mapping[str, Sequence[str]],
                     recall_ks: Sequence[int] = TRIPLETS_RECALL_KS,
                     map_ks: Sequence[int] = TRIPLETS_MAP_KS) -> dict[str, float]:
    """Recall@K (any target) and CIRCO-style mAP@K, reference removed, per-query gallery respected."""
    out = recall_metrics(queries, rankings, recall_ks, drop_reference=True, use_candidates=True)
    aps = {k: [] for k in map_ks}
    for q in queries:
        ranking = _ranking(rankings, q)
        if q.candidates is not None:
            ranking = restricted(ranking, q.candidates)
        ranking = without(ranking, q.reference)
        for k in map_ks:
            aps[k].append(average_precision_at_k(ranking, _targets(q), k))
    queries_n = out.pop("queries")
    out.update({f"mAP@{k}": _pct(aps[k]) for k in map_ks})
    out["queries"] = queries_n
    return out


def average_over(results: Mapping[str, Mapping[str, float]], keys: Sequence[str]) -> dict[str, float]:
    """The plain mean of each metric over the groups (FashionIQ categories, GeneCIS tasks)."""
    return {key: float(np.mean([r[key] for r in results.values()])) for key in keys}
