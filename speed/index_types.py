"""Index types on synthetic CLIP-like vectors: recall@10 against flat, query latency, build time, memory.

    python speed/index_types.py                    # 1M x 768 (about 15-25 min on 2 busy cores)
    python speed/index_types.py --n 200000         # smaller, for a quick look
    python speed/index_types.py --types flat,hnsw --json results.json

The vectors are clustered and L2-normalized, d=768 by default: n/500 cluster centres on the sphere,
each vector a centre plus a variation in a shared 48-dim subspace plus isotropic noise (so
neighbours cross cluster borders and the within-cluster order depends on all dimensions, which is
what makes PQ codes lose recall). Queries come from the same distribution, not from the gallery.
The vectors are written to a .npy file and opened with mmap, as a gallery index does, and the
approximate types re-score their candidates from it (cirkit.gallery.ann.search, the code `cirkit query` runs).

Reported per type, with the params cirkit.gallery.ann.choose picks at this size:
  recall@10     |top 10 ∩ flat's top 10| / 10, mean over the batch of queries (re-scored, as served)
  raw@10        the same for the index's own top 10 without re-scoring (what re-scoring buys)
  build         seconds to build (and train) the FAISS index from the vectors
  batch         milliseconds per query when the whole batch is searched at once
  single        median milliseconds of one query searched alone
  bytes/vector  the FAISS index's size in memory / n; the approximate types also read the stored
                vectors (4*d bytes per vector, on disk, mmap) but only for their candidates
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cirkit.gallery import ann  # noqa: E402


def synthetic(path: Path, n: int, nq: int, dim: int, seed: int, per_cluster: int = 500, rank: int = 48,
              spread: float = 0.1, noise: float = 0.012) -> tuple[np.ndarray, np.ndarray]:
    """(gallery, queries): the gallery written to `path` block by block and opened with mmap."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // per_cluster), dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    basis = (rng.standard_normal((rank, dim)) / np.sqrt(dim)).astype(np.float32)

    def draw(m: int) -> np.ndarray:
        v = centres[rng.integers(0, len(centres), m)]
        v = v + (rng.standard_normal((m, rank), dtype=np.float32) * spread) @ basis
        v += rng.standard_normal((m, dim), dtype=np.float32) * noise
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    for start in range(0, n, 100_000):
        out[start : start + 100_000] = draw(min(100_000, n - start))
    out.flush()
    del out
    return np.load(path, mmap_mode="r"), draw(nq)


def recall(ids: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(ids, truth)]))


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="gallery vectors (default 1M)")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=1000, help="queries in the batch (recall, batch latency)")
    parser.add_argument("--single", type=int, default=100, help="queries timed one at a time")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--types", default="flat,hnsw,ivfpq")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", help="folder for the vectors file (default: a temporary folder)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    import faiss

    types = args.types.split(",")
    print(f"n={args.n} d={args.dim} queries={args.queries} single={args.single} k={args.k} "
          f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, {os.cpu_count()} cores, load {load()}",
          flush=True)
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        t = time.perf_counter()
        vectors, queries = synthetic(Path(tmp) / "vectors.npy", args.n, args.queries, args.dim, args.seed)
        print(f"vectors generated in {time.perf_counter() - t:.1f} s", flush=True)
        rows, truth = [], None
        for kind in ["flat", *[t for t in types if t != "flat"]]:  # flat first: the ground truth
            spec = ann.choose(kind, args.n, args.dim)
            print(f"{kind}: {ann.describe(spec)}; building ...", flush=True)
            t = time.perf_counter()
            index = ann.build(vectors, spec)
            build_s = time.perf_counter() - t
            t = time.perf_counter()
            scores, ids = ann.search(index, vectors, spec, queries, args.k)
            batch_ms = (time.perf_counter() - t) * 1000 / len(queries)
            singles = []
            for q in queries[: args.single]:
                t = time.perf_counter()
                ann.search(index, vectors, spec, q[None], args.k)
                singles.append((time.perf_counter() - t) * 1000)
            if truth is None:
                truth = ids
            raw = recall(index.search(np.ascontiguousarray(queries), args.k)[1], truth, args.k)
            row = {
                "type": kind,
                "params": spec.params,
                f"recall@{args.k}": recall(ids, truth, args.k),
                f"raw@{args.k}": raw,
                "build_s": build_s,
                "batch_ms_per_query": batch_ms,
                "single_ms_median": statistics.median(singles),
                "bytes_per_vector": ann.memory_bytes(index) / args.n,
                "load": load(),
            }
            rows.append(row)
            print(f"  recall@{args.k} {row[f'recall@{args.k}']:.3f}, build {build_s:.1f} s, batch {batch_ms:.2f} ms/query, "
                  f"single {row['single_ms_median']:.2f} ms, {row['bytes_per_vector']:.0f} B/vector (load {row['load']})",
                  flush=True)
            del index
            if kind not in types:
                rows.pop()

    print()
    print(f"| type | params | recall@{args.k} | raw@{args.k} (no re-scoring) | build (s) | batch (ms/query) | "
          "single query (ms, median) | bytes/vector in memory |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
        print(f"| {r['type']} | {params} | {r[f'recall@{args.k}']:.3f} | {r[f'raw@{args.k}']:.3f} | {r['build_s']:.1f} | "
              f"{r['batch_ms_per_query']:.2f} | {r['single_ms_median']:.2f} | {r['bytes_per_vector']:.0f} |")
    print(f"\nn={args.n}, d={args.dim}, {args.queries} queries in the batch, {args.single} timed alone; "
          f"load average at the end: {load()} on {os.cpu_count()} cores")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
