"""`runs edit` + re-run from the rewrite step vs a full run of the same query.

Small real architectures with random weights (same FLOPs as trained ones): BLIP base captioner
(beam search 5, 30 tokens), SmolLM-135M-like LLM (cirevl-rewrite prompt, 32 tokens), open_clip
ViT-B-32, over a gallery of 64 images. Models are loaded once and stay warm; each query uses a
fresh reference image so nothing comes from the cache except what the re-run copies.

    python speed/rerun_from_rewrite.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from small_models import build_small_blip, build_small_llm  # noqa: E402

PIPELINE = """name: bench
models:
  captioner: {{type: vlm, id: "{blip}"}}
  llm: {{type: llm, id: "{llm}"}}
  clip: {{type: clip, name: ViT-B-32}}
steps:
  - {{name: caption, kind: caption, model: captioner, prompt: short-caption, params: {{num_beams: 5, max_new_tokens: 30}}}}
  - {{name: rewrite, kind: rewrite, model: llm, prompt: cirevl-rewrite, params: {{max_new_tokens: 32}}}}
  - {{name: embed, kind: embed, model: clip}}
  - {{name: search, kind: search, params: {{k: 50}}}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    from PIL import Image

    from cirkit.api import index_folder
    from cirkit.engines import ModelPool
    from cirkit.gallery import GalleryIndex
    from cirkit.pipelines import load_pipeline
    from cirkit.pipelines.runner import Query, run_queries
    from cirkit.revise import Revision, revise
    from cirkit.store import RunStore

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        blip, llm = build_small_blip(tmp / "blip", 30), build_small_llm(tmp / "llm", 32)
        pipeline_file = tmp / "bench.yaml"
        pipeline_file.write_text(PIPELINE.format(blip=blip, llm=llm))
        gallery = tmp / "gallery"
        gallery.mkdir()
        for i in range(64 + args.repeats + 1):
            Image.new("RGB", (640, 480), ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)).save(gallery / f"{i:03d}.jpg")
        index_folder(gallery, tmp / "index", pipeline=pipeline_file)
        pipeline = load_pipeline(pipeline_file)
        index = GalleryIndex.open(tmp / "index")
        store = RunStore(tmp / "data")
        models = ModelPool()
        run_queries(pipeline, [Query(gallery / "000.jpg", "make it blue")], index=index, store=store, models=models, progress=False)  # warm-up

        full, rerun = [], []
        for r in range(args.repeats):
            query = Query(gallery / f"{64 + r:03d}.jpg", "make it blue and smaller")
            start = time.perf_counter()
            (run_id,) = run_queries(pipeline, [query], index=index, store=store, models=models, progress=False)
            full.append(time.perf_counter() - start)
            start = time.perf_counter()
            revise(store, [Revision(run_id, "caption", f"a red circle, take {r}")], models=models)
            rerun.append(time.perf_counter() - start)
    f, e = statistics.median(full), statistics.median(rerun)
    print(f"models: BLIP base (beam 5, 30 tokens), Llama 30x576 (32 tokens), ViT-B-32; random weights; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu")
    print(f"{'':>28} | median seconds of {args.repeats}")
    print(f"{'full run':>28} | {f:8.2f}")
    print(f"{'edit caption + re-run':>28} | {e:8.2f}")
    print(f"ratio (re-run / full): {e / f:.2f}")


if __name__ == "__main__":
    main()
