"""Evaluate rankings on a benchmark, and score existing prediction files without any model."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from cirkit.benchmarks import metrics as M
from cirkit.benchmarks._io import json_type, read_json
from cirkit.benchmarks.base import Benchmark
from cirkit.benchmarks.registry import load_group
from cirkit.benchmarks.submission import validate_circo_submission, validate_cirr_submission
from cirkit.errors import CirkitError

Missing = Literal["error", "miss"]

SERVERS = {
    "cirr": "the CIRR evaluation server (https://cirr.cecs.anu.edu.au/): upload the recall and recall_subset files",
    "circo": "the CIRCO evaluation server (https://circo.micc.unifi.it/)",
}
GROUP_KEYS = {"fashioniq": ("R@10", "R@50"), "genecis": ("R@1", "R@2", "R@3")}


def _normalize(benchmark: Benchmark, rankings: Mapping[Any, Any], source: str, missing: Missing,
               *, check_names: bool = True) -> tuple[dict[str, list[str]], int]:
    """Rankings keyed by query id, names as strings, validated; plus how many queries had none."""
    if not isinstance(rankings, Mapping):
        raise CirkitError(f"{source}: expected {{query id: [ranked image names]}}, got {json_type(rankings)}")
    if missing not in ("error", "miss"):
        raise CirkitError(f"missing must be 'error' or 'miss', got {missing!r}")
    ids = {q.id: q for q in benchmark.queries}
    out: dict[str, list[str]] = {}
    for key, value in rankings.items():
        qid = str(key)
        q = ids.get(qid)
        if q is None:
            raise CirkitError(f"{source}: unknown query id '{qid}' (not in {benchmark.title})")
        if not isinstance(value, (list, tuple)):
            raise CirkitError(f"{source}: query '{qid}': expected a list of image names, got {json_type(value)}")
        names = []
        for j, n in enumerate(value):
            if isinstance(n, str) and n:
                names.append(n)
            elif isinstance(n, int) and not isinstance(n, bool):
                names.append(str(n))
            else:
                raise CirkitError(f"{source}: query '{qid}': item {j} must be an image name, got {json_type(n)}")
        M.check_no_duplicates(names, f"{source}: query '{qid}'")
        if check_names:
            if benchmark.protocol == "genecis":
                allowed: Any = set(q.candidates or ())
                label = "the query's candidates"
            else:
                allowed, label = benchmark.gallery, f"the {benchmark.title} gallery"
            if not all(map(allowed.__contains__, names)):
                bad = next(n for n in names if n not in allowed)
                raise CirkitError(f"{source}: query '{qid}': '{bad}' is not in {label}")
        out[qid] = names
    absent = [q.id for q in benchmark.queries if q.id not in out]
    if absent and missing == "error":
        raise CirkitError(f"{source}: no ranking for {len(absent)} of {len(benchmark.queries)} queries "
                          f"(first: '{absent[0]}'); pass missing='miss' to count them as misses")
    for qid in absent:
        out[qid] = []
    return out, len(absent)


def _protocol_metrics(benchmark: Benchmark, rankings: Mapping[str, Sequence[str]], *, recall: bool = True,
                      subset: bool = True) -> dict[str, float]:
    qs = benchmark.queries
    p = benchmark.protocol
    if p == "cirr":
        return M.cirr_metrics(qs, rankings, recall=recall, subset=subset)
    if p == "circo":
        return M.circo_metrics(qs, rankings)
    if p == "fashioniq":
        return M.fashioniq_metrics(qs, rankings)
    if p == "genecis":
        return M.genecis_metrics(qs, rankings)
    if p == "triplets":
        without_gt = [q.id for q in qs if not q.targets]
        if without_gt:
            raise CirkitError(f"{benchmark.title}: {len(without_gt)} queries have no 'targets' "
                              f"(first: '{without_gt[0]}'): every query needs ground truth to be evaluated")
        return M.triplets_metrics(qs, rankings)
    raise CirkitError(f"{benchmark.title}: no evaluator for protocol '{p}'")


def _no_ground_truth(benchmark: Benchmark) -> str:
    server = SERVERS.get(benchmark.protocol)
    if server:
        return f"{benchmark.title} has no public ground truth: scoring needs {server}"
    return f"{benchmark.title} has no public ground truth and no evaluation server: it cannot be scored"


def evaluate(benchmark: Benchmark, rankings: Mapping[Any, Sequence[Any]], *,
             available: Iterable[str] | None = None, missing: Missing = "error",
             source: str = "rankings") -> dict[str, float]:
    """Score rankings (``{query id: [gallery names, best first]}``) with the benchmark's protocol.

    Metrics are percentages over all queries. `available` is the set of gallery names actually
    indexed (present on disk): images missing from it are counted and reported
    (``gallery_missing``, ``queries_target_missing``, ``queries_reference_missing``); a query
    whose target is missing still counts, as a miss. With ``missing="miss"`` queries that have
    no ranking count as misses (``queries_without_ranking``) instead of raising.
    """
    if not benchmark.has_ground_truth:
        raise CirkitError(_no_ground_truth(benchmark))
    normalized, absent = _normalize(benchmark, rankings, source, missing)
    out = _protocol_metrics(benchmark, normalized)
    out["gallery_images"] = len(benchmark.gallery)
    if missing == "miss":
        out["queries_without_ranking"] = absent
    if available is not None:
        have = set(available)
        out["gallery_missing"] = sum(1 for n in benchmark.gallery if n not in have)
        out["queries_target_missing"] = sum(1 for q in benchmark.queries if any(t not in have for t in q.targets))
        out["queries_reference_missing"] = sum(1 for q in benchmark.queries if q.reference not in have)
    return out


def evaluate_group(benchmarks: Mapping[str, Benchmark], rankings: Mapping[Any, Sequence[Any]], *,
                   available: Iterable[str] | None = None, missing: Missing = "error",
                   source: str = "rankings") -> dict[str, float]:
    """Evaluate several benchmarks from one rankings mapping (query ids are unique across them:
    ``dress-0``, ``focus_object-0``); metrics are prefixed ``member/`` and averaged as ``average/``
    (FashionIQ: R@10 and R@50 over the three categories; GeneCIS: R@1..3 over the tasks)."""
    known = {q.id for b in benchmarks.values() for q in b.queries}
    unknown = [str(k) for k in rankings if str(k) not in known]
    if unknown:
        titles = ", ".join(b.title for b in benchmarks.values())
        raise CirkitError(f"{source}: unknown query id '{unknown[0]}' (not in {titles})")
    have = set(available) if available is not None else None
    out: dict[str, float] = {}
    per: dict[str, dict[str, float]] = {}
    for key, b in benchmarks.items():
        ids = {q.id for q in b.queries}
        part = {k: v for k, v in rankings.items() if str(k) in ids}
        per[key] = evaluate(b, part, available=have, missing=missing, source=source)
        out.update({f"{key}/{m}": v for m, v in per[key].items()})
    protocol = next(iter(benchmarks.values())).protocol
    keys = GROUP_KEYS.get(protocol)
    if keys and len(benchmarks) > 1:
        out.update({f"average/{k}": v for k, v in M.average_over(per, keys).items()})
    return out


# ---------------------------------------------------------------- prediction files

def _as_paths(predictions_path: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(predictions_path, (str, Path)):
        return [Path(predictions_path)]
    paths = [Path(p) for p in predictions_path]
    if not paths:
        raise CirkitError("score_predictions: no predictions file given")
    return paths


def _read_predictions(path: Path) -> dict:
    data = read_json(path)
    if not isinstance(data, dict):
        raise CirkitError(f"{path}: expected a JSON object {{query id: [ranked image names]}}, got {json_type(data)}")
    return data


def _score_cirr(b: Benchmark, paths: list[Path], missing: Missing) -> dict[str, Any]:
    files: dict[str, tuple[dict, Path]] = {}
    for path in paths:
        data = _read_predictions(path)
        if "metric" in data or "version" in data:
            kind = validate_cirr_submission(data, b, source=str(path),
                                            complete=missing == "error" or not b.has_ground_truth)
            rankings = {k: v for k, v in data.items() if k not in ("version", "metric")}
        else:
            kind, rankings = "rankings", data
        if kind in files:
            raise CirkitError(f"{path}: a second '{kind}' file (the first is {files[kind][1]})")
        files[kind] = (rankings, path)
    if not b.has_ground_truth:
        if "rankings" in files:
            rankings, path = files["rankings"]
            _normalize(b, rankings, str(path), "error")
        return _unscored(b, paths)
    out: dict[str, Any] = {}
    recall_src = files.get("recall") or files.get("rankings")
    subset_src = files.get("recall_subset") or files.get("rankings")
    if recall_src is not None:
        norm, absent = _normalize(b, recall_src[0], str(recall_src[1]), missing)
        out.update(M.cirr_metrics(b.queries, norm, recall=True, subset=False))
        if missing == "miss":
            out["queries_without_ranking"] = absent
    if subset_src is not None:
        norm, absent = _normalize(b, subset_src[0], str(subset_src[1]), missing)
        sub = M.cirr_metrics(b.queries, norm, recall=False, subset=True)
        out.update({k: v for k, v in sub.items() if k.startswith("R_subset") or k == "subset_incomplete"})
        if missing == "miss":
            out["queries_without_subset_ranking"] = absent
    if "R@5" in out and "R_subset@1" in out:
        out["Avg"] = (out["R@5"] + out["R_subset@1"]) / 2
    out["queries"] = len(b.queries)
    out["gallery_images"] = len(b.gallery)
    return out


def _unscored(b: Benchmark, paths: list[Path]) -> dict[str, Any]:
    return {"benchmark": b.name, "split": b.split, "queries": len(b.queries), "valid": True, "scored": False,
            "files": [str(p) for p in paths], "message": f"predictions are valid; {_no_ground_truth(b)}"}


def score_predictions(bench: str, annotations_dir: str | Path, predictions_path: str | Path | Sequence[str | Path],
                      split: str, *, missing: Missing = "error") -> dict[str, Any]:
    """Score a predictions file against the annotations under `annotations_dir` (no images, no model).

    Accepted files: CIRR submission files (``recall`` and/or ``recall_subset``: pass both paths in
    a list), a CIRCO submission, or a generic ``{query id: [ranked image names]}`` JSON (for
    ``fashioniq`` and ``genecis``/``all`` one file holds every category or task). Unknown query ids,
    repeated names and names outside the gallery are errors. Splits without public ground truth
    (CIRR test1, CIRCO test, FashionIQ test) are validated, and the result says scoring needs the
    evaluation server.
    """
    paths = _as_paths(predictions_path)
    group = load_group(bench, annotations_dir, split)
    members = list(group.values())
    first = members[0]
    if first.protocol == "cirr":
        return _score_cirr(first, paths, missing)
    if len(paths) != 1:
        raise CirkitError(f"{bench}: expected one predictions file, got {len(paths)}")
    path = paths[0]
    data = _read_predictions(path)
    if first.protocol == "circo":
        if not first.has_ground_truth:
            validate_circo_submission(data, first, source=str(path))
            return _unscored(first, paths)
        data = validate_circo_submission(data, first, source=str(path), top=None, complete=(missing == "error"))
    if not first.has_ground_truth:
        known = {q.id for b in members for q in b.queries}
        for k in data:
            if str(k) not in known:
                raise CirkitError(f"{path}: unknown query id '{k}' (not in {bench} {split})")
        for b in members:
            part = {k: v for k, v in data.items() if str(k) in {q.id for q in b.queries}}
            _normalize(b, part, str(path), "error")
        return _unscored(first, paths) | ({"benchmark": bench} if len(members) > 1 else {})
    if len(members) > 1 or bench in ("fashioniq", "genecis"):
        return evaluate_group(group, data, missing=missing, source=str(path))
    return evaluate(first, data, missing=missing, source=str(path))
