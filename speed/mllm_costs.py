"""Model calls and seconds per query of the multimodal-LLM built-ins, batched across queries vs one query at a time.

`osrcir`, `imagescope`, `square` and `wiser` run with their own steps and parameters; small real
architectures with random weights stand in for their models (`--model`-style overrides, no
download, the same code paths):

  * every multimodal LLM, judge and verifier (Qwen2-VL-7B / Qwen2.5-VL-7B in the files): Qwen2-VL's
    architecture cut to 2 vision + 4 text layers at width 256 (speed/small_models.py
    build_small_qwen2vl), with Qwen2-VL's processor settings, so an image costs as many tokens as
    with the real model (99 for a 320x240 image, 576 for square's 672x672 grid);
  * every text LLM (Qwen2.5-7B; wiser's `critic`, gpt-4o on the openai engine in the file, runs on
    transformers here): a SmolLM-135M-shaped Llama (30 layers, hidden 576);
  * wiser's captioner (BLIP-2 flan-t5-xxl): BLIP base;
  * wiser's image editor (Qwen-Image-Edit): the tiny random InstructPix2Pix of the tests
    (tests/tiny_diffusers.py); its `steps: 50, size: 1024` become --edit-steps and --edit-size in a
    copy of the pipeline text - the only parameters changed;
  * CLIP: open_clip ViT-B-32.

A random model seldom writes its end token, so most answers run to their step's max_new_tokens (512
for a reasoning, 1000 for wiser's rewrites), longer than a trained model's; --answer-tokens N makes
every answer exactly min(N, max_new_tokens) tokens long, to price shorter answers.

Each method runs the same --queries (reference images no other method saw, each query its own
modification) twice, each time in a run store of its own with the step cache off: (a) all queries
as one batch through run_queries, (b) one at a time (one run_queries call each). Decoding is greedy
(as the files ask, temperature 0) except wiser's critic (temperature 1, seeded), so both ways do
the same work, except that a batch decodes until its longest answer ends. Reported per query:
engine calls (TransformersEngine.generate and DiffusersEditor.edit) in (a) and in (b), the requests
in them, tokens written, seconds in (a) and in (b), the share of (a) inside model calls (generate,
edit and CLIP's encoders), and the ratio (b)/(a), measured in the same run. Models are loaded before the clock starts;
wiser's gallery captions are made beforehand and not counted; one warm-up query (answers of one
token, a store of its own) runs before (a) and (b).

On a CPU shared with other jobs, use --threads 1: with 2 threads each matrix product of more than
one row waits for a descheduled thread (about 15 ms instead of 0.05 ms for a 2x256 by 256x1024
product on the 2-core development machine), which makes every batch far slower than its rows run
one by one and turns the comparison upside down.

    python speed/mllm_costs.py --queries 2 --gallery 24 --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from timing import CALLS, SPENT, timed  # noqa: E402

METHODS = ["osrcir", "imagescope", "square", "wiser"]
MODIFICATIONS = [
    "make it red and smaller", "show two of them on a wooden table", "make it blue with white stripes",
    "remove the background and add a shadow", "make it darker with a small logo", "show it from the side at night",
]
REQUESTS: dict[str, int] = defaultdict(int)
NAMES: dict[str, str] = {}  # model directory -> short name in the output


def counted(cls, name: str) -> None:
    """Wrap cls.name (generate or edit) so that each call adds its requests under the model's short name."""
    real = getattr(cls, name)

    def wrapper(self, requests, *args, **kwargs):
        label = NAMES.get(str(self.model_id), str(self.model_id))
        CALLS[f"{label} calls"] += 1
        REQUESTS[label] += len(requests)
        return real(self, requests, *args, **kwargs)

    setattr(cls, name, wrapper)


CAP = {"tokens": 0}  # 0: each step's own max_new_tokens


def cap_answers() -> None:
    """While CAP["tokens"] is set, every generation has at most that many new tokens, and exactly as many as its limit."""
    from transformers.generation.utils import GenerationMixin

    real = GenerationMixin.generate

    def generate(self, *args, **kwargs):
        if CAP["tokens"] and "max_new_tokens" in kwargs:
            kwargs["max_new_tokens"] = min(kwargs["max_new_tokens"], CAP["tokens"])
            kwargs["min_new_tokens"] = kwargs["max_new_tokens"]
        return real(self, *args, **kwargs)

    GenerationMixin.generate = generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=2, help="queries per method and per way (default 2)")
    parser.add_argument("--gallery", type=int, default=24, help="gallery images (default 24)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--answer-tokens", type=int, default=0,
                        help="every answer exactly min(this, the step's max_new_tokens) tokens (default 0: no cap)")
    parser.add_argument("--edit-steps", type=int, default=10, help="wiser's image-edit denoising steps (file: 50)")
    parser.add_argument("--edit-size", type=int, default=256, help="wiser's image-edit long side in pixels (file: 1024)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0: torch's own choice)")
    args = parser.parse_args()
    methods = args.methods.split(",")
    if unknown := set(methods) - set(METHODS):
        parser.error(f"--methods: not one of {', '.join(METHODS)}: {', '.join(sorted(unknown))}")

    import torch
    import yaml
    from PIL import Image

    if args.threads:
        torch.set_num_threads(args.threads)

    from cirkit.api import index_folder
    from cirkit.engines import ModelPool
    from cirkit.engines.base import metered
    from cirkit.engines.diffusers_engine import DiffusersEditor
    from cirkit.engines.open_clip_engine import ClipModel
    from cirkit.engines.transformers_engine import TransformersEngine
    from cirkit.gallery import GalleryIndex
    from cirkit.pipelines import load_pipeline
    from cirkit.pipelines.gallery_captions import caption_gallery
    from cirkit.pipelines.runner import Query, run_queries
    from cirkit.pipelines.spec import builtin_path
    from cirkit.store import RunStore
    from small_models import build_small_blip, build_small_llm, build_small_qwen2vl
    from tiny_diffusers import build_tiny_instruct_pix2pix

    counted(TransformersEngine, "generate")
    counted(DiffusersEditor, "edit")
    timed(TransformersEngine, "generate", "generate")
    timed(DiffusersEditor, "edit", "edit")
    timed(ClipModel, "encode_texts", "clip")
    timed(ClipModel, "encode_images", "clip")
    cap_answers()

    started, load_before = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cirkit-mllm-costs-") as tmp:
        tmp = Path(tmp)
        built = {
            "qwen2-vl": build_small_qwen2vl(tmp / "qwen2-vl"),
            "llm": build_small_llm(tmp / "llm", new_tokens=1),
            "blip": build_small_blip(tmp / "blip", new_tokens=1),
            "editor": build_tiny_instruct_pix2pix(tmp / "editor"),
        }
        NAMES.update({str(path): name for name, path in built.items()})
        by_type = {
            "vlm": {"id": str(built["qwen2-vl"])}, "llm": {"id": str(built["llm"])},
            "image_editor": {"id": str(built["editor"])}, "clip": {"name": "ViT-B-32"},
        }
        (tmp / "gallery").mkdir()
        for i in range(args.gallery):
            Image.new("RGB", (320, 240), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)).save(tmp / "gallery" / f"{i:04d}.jpg")
        (tmp / "references").mkdir()
        fresh = iter(range(10**6))

        def references(count: int) -> list[Path]:
            paths = []
            for _ in range(count):
                i = next(fresh)
                path = tmp / "references" / f"{i:04d}.jpg"
                Image.new("RGB", (320, 240), ((71 * i + 13) % 256, (29 * i + 101) % 256, (17 * i + 59) % 256)).save(path)
                paths.append(path)
            return paths

        models = ModelPool()
        index_dir = tmp / "index"
        index_folder(tmp / "gallery", index_dir, pipeline="osrcir", model_overrides={"clip": by_type["clip"]})
        rows = []
        for name in methods:
            text = builtin_path(name).read_text()
            source = name
            if name == "wiser":  # only the image editor's steps and size change
                shipped = "steps: 50, true_cfg_scale: 4.0, size: 1024,"
                assert text.count(shipped) == 2, "wiser's edit params changed: update this script"
                source = tmp / "wiser.yaml"
                source.write_text(text.replace(shipped, f"steps: {args.edit_steps}, true_cfg_scale: 4.0, size: {args.edit_size},"))
            entries = yaml.safe_load(text)["models"]
            overrides = {key: {"type": entry["type"], **by_type[entry["type"]]} for key, entry in entries.items()}
            if name == "wiser":
                overrides["captioner"] = {"type": "vlm", "id": str(built["blip"])}
            pipeline = load_pipeline(source, model_overrides=overrides)
            for spec in pipeline.models.values():
                models.get(spec)  # loaded before the clock starts
            if any(s.kind == "feedback" or getattr(s.params, "gallery_captions", 0) for s in pipeline.steps):
                caption_gallery(index_dir, pipeline, models, progress=False)
            # warm-up: one query, answers of one token, in a store of its own (first calls allocate and pick kernels)
            CAP["tokens"] = 1
            run_queries(pipeline, [Query(references(1)[0], MODIFICATIONS[-1])], index=GalleryIndex.open(index_dir),
                        store=RunStore(tmp / f"data-{name}-warm-up"), models=models, progress=False, raise_on_failure=True, use_cache=False)
            CAP["tokens"] = args.answer_tokens
            measured = {}
            # the same queries both ways (greedy answers: the same work), a new run store each way and the cache off
            queries = [Query(path, MODIFICATIONS[i % len(MODIFICATIONS)]) for i, path in enumerate(references(args.queries))]
            for way in ("batched", "one at a time"):
                batches = [queries] if way == "batched" else [[q] for q in queries]
                store = RunStore(tmp / f"data-{name}-{way.replace(' ', '-')}")
                SPENT.clear()
                CALLS.clear()
                REQUESTS.clear()
                start = time.perf_counter()
                with metered() as usage:
                    for batch in batches:
                        run_queries(pipeline, batch, index=GalleryIndex.open(index_dir), store=store, models=models,
                                    progress=False, raise_on_failure=True, use_cache=False)
                wall = time.perf_counter() - start
                measured[way] = {
                    "s": wall / args.queries, "inside": sum(SPENT.values()) / args.queries, "tokens": usage.output / args.queries,
                    "calls": {k.removesuffix(" calls"): v for k, v in CALLS.items() if k.endswith(" calls")},
                    "requests": dict(REQUESTS),
                }
                print(f"{name}, {way}: {wall / args.queries:.2f} s per query, "
                      + ", ".join(f"{m} {c} calls / {REQUESTS[m]} requests" for m, c in measured[way]["calls"].items())
                      + f" for {args.queries} queries", flush=True)
            rows.append((name, measured))
    load_after = os.getloadavg()

    q = args.queries

    def per_query(counts: dict[str, int]) -> str:
        return ", ".join(f"{m} {v / q:g}" for m, v in sorted(counts.items()))

    print(f"\n| method | engine calls per query, batched | engine calls per query, one at a time | requests per query | "
          f"tokens written per query | s per query, batched (in model calls) | s per query, one at a time | one at a time / batched |")
    print("|---|---|---|---|---|---|---|---|")
    for name, m in rows:
        a, b = m["batched"], m["one at a time"]
        requests = per_query(a["requests"]) + ("" if a["requests"] == b["requests"] else f" (one at a time: {per_query(b['requests'])})")
        print(f"| `{name}` | {per_query(a['calls'])} | {per_query(b['calls'])} | {requests} | {a['tokens']:.0f} | "
              f"{a['s']:.2f} ({100 * a['inside'] / a['s']:.0f}%) | {b['s']:.2f} | {b['s'] / a['s']:.2f} |")
    print(f"\n{q} queries per way, gallery of {args.gallery}; answers "
          + (f"capped at {args.answer_tokens} tokens" if args.answer_tokens else "as long as each step's max_new_tokens allows")
          + f"; wiser's editor at steps {args.edit_steps}, size {args.edit_size} (file: 50, 1024); "
          f"torch {torch.__version__}, threads: {torch.get_num_threads()}; load average {load_before[0]:.1f} before, "
          f"{load_after[0]:.1f} after; {time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
