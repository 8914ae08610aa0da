"""Cost per query of each built-in method, and the share of it spent outside model calls.

Small real architectures with random weights stand in for the real models (the same FLOPs, no
download): BLIP base as the captioner, a SmolLM-135M-shaped Llama as the LLM, open_clip ViT-B-32 as
CLIP; each built-in keeps its own steps and parameters (`--model` overrides swap only the models).
Time inside model calls is TransformersEngine.generate plus ClipModel's encoders; the rest of a
query (run store, cache, templates, images, wiring, search and fusion arithmetic) is "outside".
Every query uses a reference image not seen before and each method its own run store, so nothing
comes from the step cache. Gallery captions, for the methods that score with them, are made once
beforehand and not counted.

    python speed/method_costs.py --queries 2 --gallery 48
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from timing import CALLS, SPENT, timed  # noqa: E402

METHODS = ["cirevl", "cirevl-ensemble", "cirevl-pdv", "ldre", "ldre-pdv", "seize", "weimocir", "genqr-feedback"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=2, help="queries per method, run as one batch")
    parser.add_argument("--gallery", type=int, default=48, help="gallery images")
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()

    import yaml
    from PIL import Image

    from cirkit.api import index_folder
    from cirkit.engines import ModelPool
    from cirkit.engines.open_clip_engine import ClipModel
    from cirkit.engines.transformers_engine import TransformersEngine
    from cirkit.gallery import GalleryIndex
    from cirkit.pipelines import load_pipeline
    from cirkit.pipelines.gallery_captions import caption_gallery
    from cirkit.pipelines.runner import Query, run_queries
    from cirkit.pipelines.spec import builtin_path
    from cirkit.store import RunStore
    from small_models import build_small_blip, build_small_llm

    timed(TransformersEngine, "generate", "generate")
    timed(ClipModel, "encode_texts", "clip")
    timed(ClipModel, "encode_images", "clip")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        blip = build_small_blip(tmp / "blip", new_tokens=20)
        llm = build_small_llm(tmp / "llm", new_tokens=24)
        (tmp / "gallery").mkdir()
        for i in range(args.gallery + args.queries * len(METHODS)):
            Image.new("RGB", (320, 240), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)).save(tmp / "gallery" / f"{i:04d}.jpg")
        images = sorted((tmp / "gallery").glob("*.jpg"))
        by_type = {"vlm": {"id": str(blip)}, "llm": {"id": str(llm)}, "clip": {"name": "ViT-B-32"}}
        models = ModelPool()
        rows, next_image = [], args.gallery
        for name in args.methods.split(","):
            entries = yaml.safe_load(builtin_path(name).read_text())["models"]
            overrides = {key: {"type": entry["type"], **by_type[entry["type"]]} for key, entry in entries.items()}
            pipeline = load_pipeline(name, model_overrides=overrides)
            index_dir = tmp / "index"
            if not index_dir.exists():  # one gallery index for every method: the same CLIP
                clip_only = {key: value for key, value in overrides.items() if value["type"] == "clip"}
                index_folder(tmp / "gallery", index_dir, pipeline=name, model_overrides=clip_only)
            if any(s.kind == "feedback" or getattr(s.params, "gallery_captions", 0) for s in pipeline.steps):
                caption_gallery(index_dir, pipeline, models, progress=False)
            queries = [Query(images[next_image + i], "make it red and smaller") for i in range(args.queries)]
            next_image += args.queries
            SPENT.clear()
            CALLS.clear()
            start = time.perf_counter()
            store = RunStore(tmp / f"data-{name}")  # a store per method: no step comes from another method's cache
            run_queries(pipeline, queries, index=GalleryIndex.open(index_dir), store=store, models=models,
                        progress=False, raise_on_failure=True)
            wall = (time.perf_counter() - start) / args.queries
            inside = sum(SPENT.values()) / args.queries
            rows.append((name, wall, inside, dict(CALLS)))
            print(f"{name}: {wall:.2f} s per query, {inside:.2f} s in model calls, outside {100 * (wall - inside) / wall:.1f}%", flush=True)
    print("\n| method | s per query | in model calls | outside model calls | engine calls per batch |")
    print("|---|---|---|---|---|")
    for name, wall, inside, calls in rows:
        print(f"| `{name}` | {wall:.2f} | {inside:.2f} | {wall - inside:.2f} ({100 * (wall - inside) / wall:.1f}%) | "
              + ", ".join(f"{k} {v}" for k, v in sorted(calls.items())) + " |")


if __name__ == "__main__":
    main()
