"""Submission files for the test servers of CIRR and CIRCO, validated before they are written.

- CIRR (https://cirr.cecs.anu.edu.au/, Cuberick-Orion/CIRR Test-split_server.md): two JSON files,
  ``{"version": "rc2", "metric": "recall", "<pairid>": [top 50 names], ...}`` and the same with
  ``"metric": "recall_subset"`` and the top 3 names within the query's image set. As in the
  official CLIP4Cir/SEARLE submission code, the reference is removed from the ranking first.
- CIRCO (https://circo.micc.unifi.it/, miccunifi/CIRCO README): ``{"<id>": [top 50 COCO ids], ...}``
  for every query, with no duplicates (the server counts a repeated ground truth twice).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cirkit.benchmarks._io import json_type, write_json_atomic
from cirkit.benchmarks.base import Benchmark
from cirkit.benchmarks.metrics import restricted, without
from cirkit.errors import CirkitError

CIRR_VERSION = "rc2"
CIRR_TOP = {"recall": 50, "recall_subset": 3}
CIRCO_TOP = 50


def _require(benchmark: Benchmark, protocol: str) -> None:
    if benchmark.protocol != protocol:
        raise CirkitError(f"{benchmark.title}: not a {protocol.upper()} benchmark")


def _names(value: Any, where: str, allow_int: bool = False) -> list[str]:
    if not isinstance(value, list):
        raise CirkitError(f"{where}: expected a list of image names, got {json_type(value)}")
    out = []
    for j, item in enumerate(value):
        if isinstance(item, str) and item:
            out.append(item)
        elif allow_int and isinstance(item, int) and not isinstance(item, bool):
            out.append(str(item))
        else:
            kind = "an image id" if allow_int else "an image name string"
            raise CirkitError(f"{where}: item {j} must be {kind}, got {json_type(item)}")
    return out


def _check_list(names: list[str], where: str, length: int | None, gallery: Mapping[str, Any] | set,
                gallery_label: str) -> None:
    if length is not None and len(names) != length:
        raise CirkitError(f"{where}: expected {length} names, got {len(names)}")
    if not names:
        raise CirkitError(f"{where}: empty ranking")
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n in seen:
            raise CirkitError(f"{where}: '{n}' is ranked twice (positions {seen[n] + 1} and {i + 1})")
        seen[n] = i
        if n not in gallery:
            raise CirkitError(f"{where}: '{n}' is not in {gallery_label}")


def _check_keys(keys: Sequence[str], benchmark: Benchmark, source: str, *, complete: bool = True) -> None:
    ids = set(benchmark.query_ids)
    unknown = [k for k in keys if k not in ids]
    if unknown:
        raise CirkitError(f"{source}: unknown query id '{unknown[0]}' (not in {benchmark.title}; "
                          f"{len(unknown)} unknown)")
    if complete:
        given = set(keys)
        absent = [q for q in benchmark.query_ids if q not in given]
        if absent:
            raise CirkitError(f"{source}: no prediction for {len(absent)} of {len(ids)} queries "
                              f"(first: '{absent[0]}')")


# ---------------------------------------------------------------- CIRR

def validate_cirr_submission(submission: Any, benchmark: Benchmark, *, source: str = "CIRR submission",
                             complete: bool = True) -> str:
    """Check a CIRR submission object; return its metric (``recall`` or ``recall_subset``)."""
    _require(benchmark, "cirr")
    if not isinstance(submission, dict):
        raise CirkitError(f"{source}: expected a JSON object, got {json_type(submission)}")
    for key in ("version", "metric"):
        if key not in submission:
            raise CirkitError(f"{source}: missing '{key}' entry (the server needs \"version\": \"rc2\" "
                              "and \"metric\": \"recall\" or \"recall_subset\")")
    if submission["version"] != CIRR_VERSION:
        raise CirkitError(f"{source}: 'version' must be \"{CIRR_VERSION}\", got {submission['version']!r}")
    metric = submission["metric"]
    if metric not in CIRR_TOP:
        raise CirkitError(f"{source}: 'metric' must be \"recall\" or \"recall_subset\", got {metric!r}")
    keys = [k for k in submission if k not in ("version", "metric")]
    _check_keys(keys, benchmark, source, complete=complete)
    label = f"the CIRR {benchmark.split} gallery"
    for key in keys:
        q = benchmark.query(key)
        where = f"{source}: pairid {key}"
        names = _names(submission[key], where)
        if metric == "recall":  # the whole gallery less the reference, when it is smaller than 50 + 1
            _check_list(names, where, min(CIRR_TOP[metric], len(benchmark.gallery) - 1), benchmark.gallery, label)
        else:
            members = set(q.candidates or ()) - {q.reference}
            _check_list(names, where, min(CIRR_TOP[metric], len(members)), members,
                        "the query's image set (img_set.members without the reference)")
        if q.reference in names:
            raise CirkitError(f"{where}: ranks the reference image '{q.reference}' (the protocol removes it)")
    return metric


def cirr_submission(benchmark: Benchmark, rankings: Mapping[str, Sequence[str]],
                    subset_rankings: Mapping[str, Sequence[str]] | None = None) -> tuple[dict, dict]:
    """The ``recall`` and ``recall_subset`` submission objects from full rankings.

    Each ranking (best first) has the reference removed; ``recall`` keeps its first 50 names and
    ``recall_subset`` the first 3 that are in the query's image set. Give `subset_rankings` to
    take the subset lists from other rankings (for instance an existing recall_subset file).
    """
    _require(benchmark, "cirr")
    recall: dict[str, Any] = {"version": CIRR_VERSION, "metric": "recall"}
    subset: dict[str, Any] = {"version": CIRR_VERSION, "metric": "recall_subset"}
    _check_keys([str(k) for k in rankings], benchmark, "rankings")
    if subset_rankings is not None:
        _check_keys([str(k) for k in subset_rankings], benchmark, "subset rankings")
    for q in benchmark.queries:
        ranking = [str(n) for n in rankings[q.id]]
        top = without(ranking, q.reference)[:CIRR_TOP["recall"]]
        need = min(CIRR_TOP["recall"], len(benchmark.gallery) - 1)
        if len(top) < need:
            raise CirkitError(f"rankings: pairid {q.id}: {len(top)} names once the reference is removed; "
                              f"the server needs {need}")
        source = subset_rankings[q.id] if subset_rankings is not None else ranking
        members = q.candidates or ()
        sub = restricted([str(n) for n in source], members, drop=q.reference)[:CIRR_TOP["recall_subset"]]
        need_sub = min(CIRR_TOP["recall_subset"], len(set(members) - {q.reference}))
        if len(sub) < need_sub:
            raise CirkitError(f"rankings: pairid {q.id}: only {len(sub)} of its image set's "
                              f"{len(set(members) - {q.reference})} other members are ranked; rank the whole "
                              "gallery or at least the set")
        recall[q.id] = top
        subset[q.id] = sub
    validate_cirr_submission(recall, benchmark, source="recall submission")
    validate_cirr_submission(subset, benchmark, source="recall_subset submission")
    return recall, subset


def write_cirr_submission(benchmark: Benchmark, rankings: Mapping[str, Sequence[str]], out_dir: str | Path, *,
                          prefix: str = "", subset_rankings: Mapping[str, Sequence[str]] | None = None
                          ) -> tuple[Path, Path]:
    """Validate and write ``{prefix}cirr_{split}_recall.json`` and ``..._recall_subset.json``."""
    recall, subset = cirr_submission(benchmark, rankings, subset_rankings)
    out_dir = Path(out_dir)
    stem = f"{prefix}cirr_{benchmark.split}"
    return (write_json_atomic(out_dir / f"{stem}_recall.json", recall),
            write_json_atomic(out_dir / f"{stem}_recall_subset.json", subset))


# ---------------------------------------------------------------- CIRCO

def validate_circo_submission(submission: Any, benchmark: Benchmark, *, source: str = "CIRCO submission",
                              top: int | None = CIRCO_TOP, complete: bool = True) -> dict[str, list[str]]:
    """Check a CIRCO submission object; return it as ``{query id: [image names]}``.

    ``top=None`` accepts rankings of any length (for scoring val predictions).
    """
    _require(benchmark, "circo")
    if not isinstance(submission, dict):
        raise CirkitError(f"{source}: expected a JSON object {{query id: [image ids]}}, got {json_type(submission)}")
    keys = [str(k) for k in submission]
    _check_keys(keys, benchmark, source, complete=complete)
    out: dict[str, list[str]] = {}
    for key, value in submission.items():
        where = f"{source}: query {key}"
        names = _names(value, where, allow_int=True)
        names = [str(int(n)) if n.isdigit() else n for n in names]
        _check_list(names, where, top, benchmark.gallery, "the CIRCO gallery (COCO unlabeled2017)")
        out[str(key)] = names
    return out


def circo_submission(benchmark: Benchmark, rankings: Mapping[str, Sequence[str]]) -> dict[str, list[int]]:
    """The submission object: the first 50 names of each query's ranking, as COCO ids."""
    _require(benchmark, "circo")
    _check_keys([str(k) for k in rankings], benchmark, "rankings")
    sub: dict[str, list[int]] = {}
    for q in benchmark.queries:
        top = [str(n) for n in rankings[q.id]][:CIRCO_TOP]
        if len(top) < CIRCO_TOP:
            raise CirkitError(f"rankings: query {q.id}: {len(top)} names; the server needs {CIRCO_TOP}")
        sub[q.id] = [int(n) if n.isdigit() else n for n in top]  # non-ids fail validation below
    validate_circo_submission(sub, benchmark, source="CIRCO submission")
    return sub


def write_circo_submission(benchmark: Benchmark, rankings: Mapping[str, Sequence[str]], path: str | Path) -> Path:
    """Validate and write the CIRCO submission JSON at `path`."""
    return write_json_atomic(Path(path), circo_submission(benchmark, rankings))
