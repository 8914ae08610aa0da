"""Nearest-neighbour index types for the gallery: exact (flat) and approximate (HNSW, IVF-PQ).

The gallery stores its L2-normalized float32 vectors beside the FAISS index (vectors-<digest>.npy,
opened with mmap), so an approximate index only has to find candidates: the top
max(k * RESCORE_FACTOR, rescore_depth) of them are re-scored exactly from the stored vectors, and
the scores a search returns are exact cosines, the same numbers a flat index gives.

Types:
  flat   IndexFlatIP: exact inner product; 4*d bytes per vector; the default below AUTO_FLAT_MAX.
  hnsw   IndexHNSWFlat: a graph over the full vectors; fast and accurate, no training, but it holds
         the full vectors plus ~2*M links per vector in memory and builds slowly on few cores.
  ivfpq  IndexIVFPQ: nlist k-means lists, each vector stored as pq_m bytes (8-bit product
         quantization of its residual); ~pq_m + 8 bytes per vector in memory. Needs training
         (on a deterministic sample: a rebuild gives the same index) and at least IVFPQ_MIN vectors.
  auto   flat below AUTO_FLAT_MAX vectors, ivfpq from there: at that size a flat index is 3 GB per
         million 768-d vectors and scans them all per query; IVF-PQ keeps ~100 bytes per vector
         in memory (the full vectors stay on disk, read only for the candidates) and trains and
         builds in minutes on a few cores, where HNSW needs the full vectors in memory and a long
         single-machine build.

A spec is (type, params); `choose` fills the params by gallery size, `build` constructs the FAISS
index, `configure` applies the search-time params to an index read from disk, `search` searches
and re-scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cirkit.errors import CirkitError

INDEX_TYPES = ("auto", "flat", "hnsw", "ivfpq")
AUTO_FLAT_MAX = 1_000_000  # auto: exact below this many vectors, ivfpq from here on
IVFPQ_MIN = 10_000  # 8-bit PQ codebooks have 256 centroids; FAISS wants >= 39 training points per centroid
RESCORE_FACTOR = 4  # approximate types re-score at least k * RESCORE_FACTOR candidates ...
RESCORE_DEPTH = 100  # ... and at least this many (a param: rescore_depth)
TRAIN_SEED = 1234

# the params each type takes (all may be given as overrides; the others are chosen by size)
PARAMS = {
    "flat": (),
    "hnsw": ("M", "ef_construction", "ef_search", "rescore_depth"),
    "ivfpq": ("nlist", "nprobe", "pq_m", "pq_bits", "train_size", "seed", "rescore_depth"),
}


@dataclass(frozen=True)
class IndexSpec:
    type: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return self.type == "flat"


def choose(requested: str, n: int, dim: int, overrides: dict[str, Any] | None = None) -> IndexSpec:
    """The index type and its params for `n` vectors of `dim` dims; `requested` is one of INDEX_TYPES."""
    overrides = dict(overrides or {})
    if requested not in INDEX_TYPES:
        raise CirkitError(f"unknown index type '{requested}': choose one of {', '.join(INDEX_TYPES)}")
    kind = requested
    if kind == "auto":
        kind = "flat" if n < AUTO_FLAT_MAX else "ivfpq"
    unknown = sorted(set(overrides) - set(PARAMS[kind]))
    if unknown:
        allowed = ", ".join(PARAMS[kind]) or "none"
        raise CirkitError(f"unknown parameter(s) {', '.join(unknown)} for index type {kind} (it takes: {allowed})")
    if kind == "flat":
        return IndexSpec("flat", {})
    if kind == "hnsw":
        params = {
            "M": 16 if n < 200_000 else 32,
            "ef_construction": 40,
            "ef_search": 128,
            "rescore_depth": RESCORE_DEPTH,
        }
    else:
        if n < IVFPQ_MIN:
            raise CirkitError(
                f"index type ivfpq needs at least {IVFPQ_MIN} vectors to train and this gallery has {n}: "
                "use --index-type flat (exact, and fast at this size) or hnsw"
            )
        # lists: ~2*sqrt(n), a power of two, with >= 39 training points each (no FAISS warnings)
        nlist = min(2 ** round(math.log2(2 * math.sqrt(n))), 2 ** int(math.log2(n // 39)), 65536)
        nlist = int(overrides.get("nlist", nlist))
        params = {
            "nlist": nlist,
            "nprobe": max(8, nlist // 32),
            "pq_m": _pq_m(dim),
            "pq_bits": 8,
            "train_size": min(n, max(64 * nlist, 256 * 40)),
            "seed": TRAIN_SEED,
            "rescore_depth": RESCORE_DEPTH,
        }
    params.update(overrides)
    _check_params(kind, params, n, dim)
    return IndexSpec(kind, params)


def _pq_m(dim: int) -> int:
    """Sub-quantizers: ~8 dims each (96 bytes for 768-d), a divisor of dim."""
    target = max(1, dim // 8)
    return max(m for m in range(1, target + 1) if dim % m == 0)


def _check_params(kind: str, params: dict[str, Any], n: int, dim: int) -> None:
    for key, value in params.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CirkitError(f"index parameter {key} must be a positive integer, not {value!r}")
    if kind == "ivfpq":
        if dim % params["pq_m"]:
            raise CirkitError(f"index parameter pq_m={params['pq_m']} must divide the vector dimension {dim}")
        if params["pq_bits"] > 16:
            raise CirkitError("index parameter pq_bits must be at most 16")
        if params["train_size"] > n:
            params["train_size"] = n
        needed = max(39 * params["nlist"], 39 * 2 ** params["pq_bits"])
        if params["train_size"] < needed:
            raise CirkitError(
                f"ivfpq with nlist={params['nlist']} and pq_bits={params['pq_bits']} needs at least {needed} training "
                f"vectors, and has {params['train_size']}: lower nlist, or use --index-type flat or hnsw"
            )
        params["nprobe"] = min(params["nprobe"], params["nlist"])


def from_manifest(manifest: dict[str, Any]) -> IndexSpec:
    """The spec an index directory was built with; manifests from before index types are flat."""
    kind = manifest.get("index_type", "flat")
    if kind not in PARAMS:
        raise CirkitError(f"unknown index type '{kind}' in the manifest: re-run `cirkit index`")
    return IndexSpec(kind, dict(manifest.get("index_params") or {}))


def describe(spec: IndexSpec) -> str:
    """One line for the `cirkit index` output."""
    if spec.exact:
        return "flat (exact inner product)"
    shown = ", ".join(f"{k}={v}" for k, v in spec.params.items() if k != "rescore_depth")
    return (
        f"{spec.type} ({shown}); exact re-scoring of the top "
        f"max({RESCORE_FACTOR}*k, {spec.params['rescore_depth']}) candidates"
    )


def build(vectors: np.ndarray, spec: IndexSpec) -> Any:
    """A FAISS index of `spec`'s type over `vectors` (n x d, L2-normalized float32), row i = id i."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    p = spec.params
    if spec.type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif spec.type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, p["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = p["ef_construction"]
    elif spec.type == "ivfpq":
        index = _train_ivfpq(vectors, p)
    else:
        raise CirkitError(f"unknown index type '{spec.type}'")
    for start in range(0, n, 65536):  # in blocks: bounded temporary memory for big galleries
        index.add(vectors[start : start + 65536])
    configure(index, spec)
    return index


def _train_ivfpq(vectors: np.ndarray, p: dict[str, Any]) -> Any:
    """k-means lists and PQ codebooks trained on a fixed sample (same vectors, same index)."""
    import faiss

    n, dim = vectors.shape
    rows = np.sort(np.random.default_rng(p["seed"]).choice(n, size=p["train_size"], replace=False))
    sample = np.ascontiguousarray(vectors[rows])
    clustering = faiss.Clustering(dim, p["nlist"])
    clustering.niter = 20
    clustering.seed = p["seed"]
    clustering.spherical = True  # inner-product lists: unit-norm centroids
    clustering.max_points_per_centroid = 1 << 30  # the sample is already chosen: no second subsampling
    quantizer = faiss.IndexFlatIP(dim)
    clustering.train(sample, quantizer)
    centroids = faiss.vector_to_array(clustering.centroids).reshape(p["nlist"], dim)
    quantizer.reset()
    quantizer.add(centroids)
    index = faiss.IndexIVFPQ(quantizer, dim, p["nlist"], p["pq_m"], p["pq_bits"], faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = p["seed"]
    index.pq.cp.seed = p["seed"]
    # The codebooks are many small 8-dim k-means: threads only add synchronisation (10x slower on
    # a busy machine); one thread also makes them independent of the thread count.
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index.train(sample)  # the quantizer holds nlist centroids: only the PQ codebooks are trained here
    finally:
        faiss.omp_set_num_threads(threads)
    return index


def configure(index: Any, spec: IndexSpec) -> None:
    """Apply the search-time params (an index read from disk keeps only some of them)."""
    import faiss

    if spec.type == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = spec.params["ef_search"]
    elif spec.type == "ivfpq":
        faiss.extract_index_ivf(index).nprobe = spec.params["nprobe"]


def search(
    index: Any, vectors: np.ndarray, spec: IndexSpec, queries: np.ndarray, k: int, rescore_depth: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids), each (len(queries) x k), best first; id -1 (score -inf) where there are fewer.

    Flat: FAISS's exact scores. Approximate types: the top max(k * RESCORE_FACTOR, rescore_depth)
    candidates re-scored from `vectors` (exact cosines), ties broken by id as a flat index does.
    """
    import faiss

    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    n = index.ntotal
    k = min(k, n)
    if k <= 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    if spec.exact:
        return index.search(queries, k)
    depth = min(n, max(k * RESCORE_FACTOR, rescore_depth or spec.params.get("rescore_depth", RESCORE_DEPTH)))
    if spec.type == "hnsw":
        ef = max(spec.params["ef_search"], depth)
        _, ids = index.search(queries, depth, params=faiss.SearchParametersHNSW(efSearch=ef))
    else:
        nprobe, nlist = spec.params["nprobe"], spec.params["nlist"]
        _, ids = index.search(queries, depth, params=faiss.SearchParametersIVF(nprobe=nprobe))
        short = np.flatnonzero((ids >= 0).sum(axis=1) < k)
        while len(short) and nprobe < nlist:  # the probed lists held fewer than k vectors: probe more
            nprobe = min(nlist, nprobe * 4)
            _, more = index.search(queries[short], depth, params=faiss.SearchParametersIVF(nprobe=nprobe))
            ids[short] = more
            short = short[(more >= 0).sum(axis=1) < k]
    return rescore(vectors, queries, ids, k)


def rescore(vectors: np.ndarray, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top k of each query's candidate ids by exact inner product with the stored vectors."""
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    ids = np.full((len(queries), k), -1, dtype=np.int64)
    for row, (query, cand) in enumerate(zip(queries, candidates)):
        cand = np.unique(cand[cand >= 0])  # sorted: rows read from the memory-mapped file in order
        if not len(cand):
            continue
        exact = np.asarray(vectors[cand], dtype=np.float32) @ query
        order = np.lexsort((cand, -exact))[:k]  # by score, then by id
        scores[row, : len(order)] = exact[order]
        ids[row, : len(order)] = cand[order]
    return scores, ids


def memory_bytes(index: Any) -> int:
    """Bytes the index holds in memory (its serialized size; the stored vectors it re-scores from stay on disk)."""
    import faiss

    return int(faiss.serialize_index(index).size)
