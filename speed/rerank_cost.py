"""Rerank cost per query for K = 10, 20, 50, and what batching across queries buys.

Model: SmolVLM-256M's architecture (Idefics3: SigLIP-base patch16/512 vision tower, pixel shuffle
x4 to 64 tokens per 512 px tile, SmolLM2-135M Llama text model with 30 layers, hidden 576, vocab
49,280) with random weights, built offline: the config, an Idefics3 processor with SmolVLM's chat
template and a tokenizer trained on the spot (tests/tiny_models.py) are saved with save_pretrained
and loaded back through cirkit's own loading code (`cirkit.engines.load_model` with a `vlm` model
entry, i.e. the transformers engine and `AutoModelForImageTextToText`). Idefics3 builds offline and
takes several images per prompt through its chat template, so there was no need to fall back to
a Qwen2-VL; it is also the smallest real multi-image VLM (Qwen2-VL-2B's vision tower alone is
675M parameters). At full depth the model has 256.5M parameters, like the trained one.

Two departures from the trained model, both options:
  * images are not split into tiles (`do_image_splitting=False`): each image is one 512 px tile
    (64 tokens) as SmolVLM does when splitting is turned off; its default splits a 640x480 image
    into 4x3 tiles plus a global one (13x the vision work). --image-splitting turns it back on.
  * the default depth is reduced (--vision-layers 1 of 12, --text-layers 3 of 30; --full-depth
    for the real ones). At full depth one pair costs ~15-35 s on a 2-core CPU (the vision tower
    is ~90% of it), so a single query at K = 50 takes over 10 minutes and the default run would
    take hours. Widths, tokens and batch shapes are the real ones, so per-layer costs and the
    batching ratios are those of the real model; seconds scale about linearly with depth.

Every answer is exactly --new-tokens tokens long (a trained judge says "Yes" or "No" and then
<end_of_utterance>), so all three ways do the same work. They run the real rerank step
(`cirkit.components.rerank.Rerank`, the built-in `rerank-yes-no` prompt: reference image first,
candidate second, P(yes) from first-token log-probabilities) over 640x480 JPEG candidates read
from disk, as in a pipeline:

  (a) all pairs of the Q queries in one call of the step, cut into batches of --batch-size (the
      step as it runs);
  (b) one query at a time (its K pairs, batches of --batch-size);
  (c) one pair at a time (batch_size 1).

Seconds are per query; the ratios (a)/(c) and (b)/(c) are measured within one run (below 1:
batching is faster). Timings on a shared machine are noisy: the load average is printed.

    python speed/rerank_cost.py --queries 2 --k 10 20 50
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # cirkit from this checkout; tests/tiny_models.py

FULL_VISION_LAYERS, FULL_TEXT_LAYERS = 12, 30

# SmolVLM's chat template (HuggingFaceTB/SmolVLM-256M-Instruct): images become <image>, which the
# processor expands to <fake_token_around_image><global-img><image>x64<fake_token_around_image>.
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|im_start|>", "<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"] + [
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)
]


def build_smolvlm(out_dir: Path, vision_layers: int, text_layers: int, image_splitting: bool) -> Path:
    """SmolVLM-256M's architecture (random weights) + Idefics3Processor, saved in `out_dir`."""
    import torch
    from tiny_models import build_tokenizer
    from transformers import (
        GenerationConfig,
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    tok = build_tokenizer(out_dir / "_tokenizer", chat_template=SMOLVLM_TEMPLATE, extra_special_tokens=SPECIAL_TOKENS)
    end = tok.convert_tokens_to_ids("<end_of_utterance>")
    config = Idefics3Config(
        vision_config={
            "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": vision_layers,
            "num_attention_heads": 12, "image_size": 512, "patch_size": 16,
        },
        text_config={
            "model_type": "llama", "vocab_size": 49280, "hidden_size": 576, "intermediate_size": 1536,
            "num_hidden_layers": text_layers, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
            "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
            "bos_token_id": tok.bos_token_id, "eos_token_id": end, "pad_token_id": tok.pad_token_id,
        },
        scale_factor=4,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Idefics3ForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=end, pad_token_id=tok.pad_token_id, do_sample=False
    )
    model.save_pretrained(out_dir)
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": 4 * 512}, max_image_size={"longest_edge": 512}, do_image_splitting=image_splitting,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], resample=1,
    )
    Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=64, chat_template=SMOLVLM_TEMPLATE).save_pretrained(out_dir)
    shutil.rmtree(out_dir / "_tokenizer", ignore_errors=True)
    return out_dir


def write_images(folder: Path, count: int, size: tuple[int, int] = (640, 480)) -> list[Path]:
    """`count` JPEGs of `size` with photo-like content (smooth colour fields plus grain)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        low = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
        pixels = np.asarray(low, dtype=np.float32) + rng.normal(0, 8, (size[1], size[0], 3))
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="See the module docstring for the model and the three ways."
    )
    parser.add_argument("--queries", type=int, default=2, help="queries Q (at least 2 tells (a) from (b); default 2)")
    parser.add_argument("--k", type=int, nargs="+", default=[10, 20, 50], help="candidates judged per query (default 10 20 50)")
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per model batch in (a) and (b) (default 32)")
    parser.add_argument("--new-tokens", type=int, default=2, help="answer length in tokens, forced (default 2)")
    parser.add_argument("--vision-layers", type=int, default=1, help=f"SigLIP layers (default 1; real: {FULL_VISION_LAYERS})")
    parser.add_argument("--text-layers", type=int, default=3, help=f"Llama layers (default 3; real: {FULL_TEXT_LAYERS})")
    parser.add_argument("--full-depth", action="store_true", help="the real depths (12 + 30 layers): ~15-35 s per pair on 2 cores")
    parser.add_argument("--image-splitting", action="store_true", help="split images into 512 px tiles as SmolVLM does by default")
    parser.add_argument("--model-dir", type=Path, help="cache folder for the built model (reused when present; default: a temp folder)")
    args = parser.parse_args()
    if args.full_depth:
        args.vision_layers, args.text_layers = FULL_VISION_LAYERS, FULL_TEXT_LAYERS
    if args.queries < 1 or args.batch_size < 1 or min(args.k) < 1:
        parser.error("--queries, --batch-size and --k must be positive")

    import torch
    from rich.console import Console
    from rich.table import Table

    from cirkit.components.rerank import Rerank, RerankParams
    from cirkit.engines import load_model
    from cirkit.images import load_image
    from cirkit.pipelines.spec import ModelSpec
    from cirkit.prompts import load_prompt

    console = Console()
    load_before, started = os.getloadavg(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cirkit-rerank-cost-") as tmp:
        tmp = Path(tmp)
        name = f"smolvlm-256m-random-v{args.vision_layers}-t{args.text_layers}{'-split' if args.image_splitting else ''}"
        model_dir = (args.model_dir or tmp) / name
        if not (model_dir / "model.safetensors").is_file():
            start = time.perf_counter()
            build_smolvlm(model_dir, args.vision_layers, args.text_layers, args.image_splitting)
            console.print(f"built {model_dir} in {time.perf_counter() - start:.0f} s")
        engine = load_model(ModelSpec(type="vlm", id=str(model_dir)))
        engine.model.generation_config.min_new_tokens = args.new_tokens  # every answer exactly --new-tokens long
        prompt = load_prompt("rerank-yes-no")

        k_max = max(args.k)
        refs = write_images(tmp / "queries", args.queries)
        gallery = write_images(tmp / "gallery", args.queries * k_max + 1)
        items = []
        for q, ref in enumerate(refs):
            files = gallery[q * k_max : (q + 1) * k_max]
            results = [
                {"rank": r + 1, "path": f.name, "file": str(f), "score": 0.3 - 0.001 * r} for r, f in enumerate(files)
            ]
            items.append({
                "image": load_image(ref),  # the runner loads the query image before the steps
                "modification": f"make it {['red', 'blue', 'green', 'black'][q % 4]} with longer sleeves",
                "description": f"a {['red', 'blue', 'green', 'black'][q % 4]} dress with long sleeves, photo {q}",
                "results": results,
            })

        def step(k: int, batch_size: int) -> Rerank:
            params = RerankParams(k=k, max_new_tokens=args.new_tokens, batch_size=batch_size)
            return Rerank(params, model=engine, prompts=[prompt])

        def timed(component: Rerank, batches: list[list[dict]]) -> tuple[float, list[float]]:
            start = time.perf_counter()
            outs = [r for batch in batches for r in component.run(batch)]
            seconds = time.perf_counter() - start
            for r in outs:
                if r.error or any(v["source"] != "logprobs" for v in r.outputs["verdicts"]):
                    raise SystemExit(f"rerank did not judge every pair: {r.error or r.outputs['verdicts']}")
            return seconds, [v["verifier"] for r in outs for v in r.outputs["verdicts"]]

        warm = [{**items[0], "results": items[0]["results"][:2]}]
        step(2, 2).run(warm)  # warm-up: first calls allocate and pick kernels
        step(2, 1).run(warm)

        rows = []
        for k in args.k:
            a, pa = timed(step(k, args.batch_size), [items])
            b, pb = timed(step(k, args.batch_size), [[item] for item in items])
            c, pc = timed(step(k, 1), [items])
            drift = max(abs(x - y) for p in (pa, pb) for x, y in zip(p, pc))
            rows.append((k, a, b, c, drift))
            console.print(f"K={k}: (a) {a:.1f} s, (b) {b:.1f} s, (c) {c:.1f} s for {args.queries} queries", highlight=False)
        described = engine.describe()
    load_after = os.getloadavg()

    q = args.queries
    depth = "full depth" if (args.vision_layers, args.text_layers) == (FULL_VISION_LAYERS, FULL_TEXT_LAYERS) else (
        f"depth reduced to {args.vision_layers}/{FULL_VISION_LAYERS} vision + {args.text_layers}/{FULL_TEXT_LAYERS} text layers"
    )
    table = Table(title=f"rerank cost per query: {q} queries, batch size {args.batch_size}, answers of {args.new_tokens} tokens")
    for column in ("K", "(a) s/query", "(b) s/query", "(c) s/query", "(c) s/pair", "(a)/(c)", "(b)/(c)", "max ΔP(yes)"):
        table.add_column(column, justify="right")
    for k, a, b, c, drift in rows:
        table.add_row(str(k), f"{a / q:.1f}", f"{b / q:.1f}", f"{c / q:.1f}", f"{c / (q * k):.2f}",
                      f"{a / c:.2f}", f"{b / c:.2f}", f"{drift:.0e}")
    console.print(table)
    console.print(
        f"(a) all pairs of the {q} queries in one call of the step, (b) one query at a time, (c) one pair at a time; "
        "max ΔP(yes): largest difference of a verifier score of (a) or (b) from (c).\n"
        f"SmolVLM-256M architecture (Idefics3), random weights, {depth}, "
        f"{'images split into 512 px tiles' if args.image_splitting else 'one 512 px tile per image'}; "
        f"2 images per pair (640x480 JPEGs); torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{described['device']}, {described['dtype']}; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; "
        f"{time.perf_counter() - started:.0f} s in all; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB",
        highlight=False,
    )


if __name__ == "__main__":
    main()
