"""Where a query's time goes: inside model calls vs outside them (the orchestration: run store
writes, cache look-ups, template rendering, image loading, wiring), with the shipped toy models.

Timed as model calls: TransformersEngine.generate (caption, rewrite) and ClipModel.encode_texts
(embed); the gallery search (FAISS + result rows) is shown on its own. Everything else a query
takes is "outside". Models are loaded and warmed up first (as in `cirkit serve`); every query uses
a reference image not seen before, so nothing comes from the step cache, except in the "cached"
row, which repeats earlier queries (every step from the cache: the orchestration alone).

    python speed/orchestration_overhead.py                     # single queries and a batch
    python speed/orchestration_overhead.py --profile           # plus cProfile of the outside time
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from timing import SPENT, timed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--single", type=int, default=20, help="single queries, one run_queries call each")
    parser.add_argument("--batch", type=int, default=64, help="queries in the batch")
    parser.add_argument("--profile", action="store_true", help="cProfile the single queries; print the top functions")
    parser.add_argument("--no-compare", action="store_true",
                        help="skip the baseline row: single queries with the run store's writes fsynced (synchronous=FULL, "
                             "as before the store used synchronous=NORMAL)")
    args = parser.parse_args()

    import torch

    from cirkit.api import index_folder
    from cirkit.engines.open_clip_engine import ClipModel
    from cirkit.engines import ModelPool
    from cirkit.engines.transformers_engine import TransformersEngine
    from cirkit.gallery import GalleryIndex
    from cirkit.pipelines import load_pipeline
    from cirkit.pipelines.runner import Query, run_queries
    from cirkit.store import RunStore
    from cirkit.toy import benchmark as toy

    timed(TransformersEngine, "generate", "generate")
    timed(ClipModel, "encode_texts", "encode")
    timed(GalleryIndex, "search", "search")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        toy.write_benchmark(tmp / "toy")
        root = toy.images_root(tmp / "toy") / toy.FOLDER
        index_folder(root, tmp / "index", pipeline="toy")
        images = sorted(root.glob("*.png"))
        needed = 1 + 2 * args.single + args.batch
        if len(images) < needed:
            raise SystemExit(f"the toy gallery has {len(images)} images; --single + --batch must stay below it")
        pipeline = load_pipeline("toy")
        index = GalleryIndex.open(tmp / "index")
        store = RunStore(tmp / "data")
        models = ModelPool()
        texts = ["make it blue", "change the background to gray", "a square instead", "make it small and move it left"]

        def run(queries: list[Query]) -> float:
            start = time.perf_counter()
            run_queries(pipeline, queries, index=index, store=store, models=models, progress=False)
            return time.perf_counter() - start

        def measure(label: str, batches: list[list[Query]], profiler=None) -> None:
            SPENT.clear()
            wall = 0.0
            for batch in batches:
                if profiler:
                    profiler.enable()
                wall += run(batch)
                if profiler:
                    profiler.disable()
            n = sum(len(b) for b in batches)
            model = SPENT["generate"] + SPENT["encode"]
            outside = wall - model - SPENT["search"]
            rows.append((label, n, wall / n, model / n, SPENT["search"] / n, outside / n, outside / wall))

        run([Query(images[0], texts[0])])  # load and warm up every model
        single = [[Query(images[1 + i], texts[i % len(texts)])] for i in range(args.single)]
        profiler = cProfile.Profile() if args.profile else None
        measure("single queries", single, profiler)
        measure("single, all cached", single)
        if not args.no_compare:
            store.db.execute("PRAGMA synchronous=FULL")
            fresh = [[Query(images[1 + args.single + args.batch + i], texts[i % len(texts)])] for i in range(args.single)]
            measure("single, FULL sync", fresh)
            store.db.execute("PRAGMA synchronous=NORMAL")
        batch = [Query(images[1 + args.single + i], texts[i % len(texts)]) for i in range(args.batch)]
        measure(f"batch of {args.batch}", [batch])
        store.close()

    print(f"\ntoy models, torch {torch.__version__}, {torch.get_num_threads()} threads, cpu; load average {os.getloadavg()[0]:.1f}")
    print(f"{'':>20} | {'queries':>7} | {'ms/query':>8} | {'models ms':>9} | {'search ms':>9} | {'outside ms':>10} | outside")
    for label, n, wall, model, search, outside, fraction in rows:
        print(f"{label:>20} | {n:7d} | {wall * 1000:8.1f} | {model * 1000:9.1f} | {search * 1000:9.1f} | {outside * 1000:10.1f} | {fraction:6.1%}")
    if profiler:
        print("\ncProfile of the single queries (top 25 by own time):")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
