"""Rewriting many queries x templates: batched across queries vs one call at a time.

A small real LLM architecture (SmolLM-135M-like Llama: 30 layers, hidden 576, vocab 49,152) with
random weights has the same FLOPs as the trained model; every answer is forced to exactly
--new-tokens tokens, so both runs do the same work. Both go through cirkit's rewrite component
and transformers engine; only batch_size differs.

    python speed/rewrite_batching.py --queries 256 --templates 4
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

from small_models import build_small_llm  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--templates", type=int, default=4, help="paraphrased instructions per query (at most 5)")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import torch

    from cirkit.components.rewrite import Rewrite, RewriteParams
    from cirkit.engines import load_model
    from cirkit.pipelines.spec import ModelSpec
    from cirkit.prompts import load_prompt

    names = ["cirevl-rewrite", "cirevl-rewrite-para1", "cirevl-rewrite-para2", "cirevl-rewrite-para3", "cirevl-rewrite-short"]
    prompts = [load_prompt(n) for n in names[: args.templates]]
    colours = ["red", "blue", "green", "black", "white", "yellow", "purple", "orange"]
    items = [
        {"caption": f"a {colours[i % 8]} dress with short sleeves on a model, photo {i}", "modification": f"make it {colours[(i + 3) % 8]} and longer"}
        for i in range(args.queries)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_small_llm(Path(tmp) / "llm", args.new_tokens)
        engine = load_model(ModelSpec(type="llm", id=str(model_dir)))
        rows = []
        for batch_size in (1, args.batch_size):
            params = RewriteParams(max_new_tokens=args.new_tokens, batch_size=batch_size)
            component = Rewrite(params, model=engine, prompts=prompts)
            component.run(items[: min(2, len(items))])  # warm-up
            start = time.perf_counter()
            component.run(items)
            rows.append((batch_size, time.perf_counter() - start))
    generations = args.queries * args.templates
    print(f"rewrite: {args.queries} queries x {args.templates} templates = {generations} generations of {args.new_tokens} tokens")
    print(f"model: Llama 30 layers, hidden 576, vocab 49152 (random weights); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {engine.device}")
    print(f"{'batch size':>10} | {'seconds':>8} | {'generations/s':>13} | speed-up")
    base = rows[0][1]
    for batch_size, seconds in rows:
        print(f"{batch_size:>10} | {seconds:8.1f} | {generations / seconds:13.2f} | {base / seconds:.2f}x")


if __name__ == "__main__":
    main()
