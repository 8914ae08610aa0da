"""cirkit index vs clip-retrieval's `clip-inference`: images/s embedding the same folder with the same model.

The folder is the one of speed/indexing_speed.py (COCO-like JPEGs, drawn once and cached).
Both tools run ViT-B-32 from open_clip with random weights, in fp32 on the CPU, with the same batch
size and the same number of decoding processes:

- cirkit: `cirkit.api.index_folder` in this process (what `cirkit index` runs): CLIP vectors, cache
  shards, the manifest and a flat FAISS index.
- clip-retrieval: its inference entry point (`clip_retrieval.clip_inference.main.main`, what
  `clip-retrieval inference` runs), images only (`enable_text=False`), sequential distribution,
  writing its .npy embeddings and parquet metadata. Its index step (`clip-retrieval index`,
  autofaiss) is not timed, which favours it.

clip-retrieval pins old dependencies, so it gets its own virtual environment, made on first use with
`python -m venv` + `pip install clip-retrieval` (default: ~/.cache/cirkit-bench/clip-retrieval-venv).
clip-retrieval always loads pretrained weights (`open_clip:ViT-B-32` means the first pretrained tag
open_clip lists for ViT-B-32, fetched from the hub), which cannot be downloaded here. So inside that
venv the script runs a small wrapper that replaces `open_clip.create_model_and_transforms` with one
that passes `pretrained=None`, then calls clip-retrieval's own entry point unchanged: the same
architecture and FLOPs, random weights, nothing else patched. Each tool is timed from after its
imports (done before the clock starts) to its last file written: model loading and warm-up are in
both figures. The forward pass alone is measured in each environment too (same torch version is
not guaranteed), so each tool's end-to-end figure can be read against its own model speed.

    python speed/vs_clip_retrieval.py                      # 2,000 images
    python speed/vs_clip_retrieval.py --images 256 --repeats 2

If clip-retrieval cannot be installed or run, the script says why on one line and exits with 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexing_speed import make_folder  # noqa: E402

DEFAULT_VENV = Path("~/.cache/cirkit-bench/clip-retrieval-venv").expanduser()

WRAPPER = r'''
import json, sys, time
from pathlib import Path

args = json.loads(sys.argv[1])
import numpy as np
import open_clip
import torch

_create = open_clip.create_model_and_transforms


def create_random_weights(*a, **kw):
    kw["pretrained"] = None  # no hub here: the same architecture with random weights
    return _create(*a, **kw)


open_clip.create_model_and_transforms = create_random_weights

import clip_retrieval.clip_inference.worker  # noqa: F401  (imports before the clock, as for cirkit)
from clip_retrieval.clip_inference.main import main

start = time.perf_counter()
main(
    input_dataset=args["folder"], output_folder=args["out"], input_format="files",
    batch_size=args["batch_size"], num_prepro_workers=args["workers"],
    enable_text=False, enable_image=True, enable_metadata=False,
    clip_model="open_clip:" + args["model"], use_jit=False, distribution_strategy="sequential",
)
seconds = time.perf_counter() - start
count = sum(len(np.load(f)) for f in Path(args["out"], "img_emb").glob("*.npy"))

from all_clip import load_clip  # the model clip-retrieval used (cached by its loader)

model, _, _ = load_clip(clip_model="open_clip:" + args["model"], use_jit=False, warmup_batch_size=args["batch_size"])
pixels = torch.randn(args["batch_size"], 3, 224, 224)
with torch.no_grad():
    model.encode_image(pixels[:2])
    t = time.perf_counter()
    for _ in range(args["forward_batches"]):
        model.encode_image(pixels)
    forward = args["forward_batches"] * args["batch_size"] / (time.perf_counter() - t)
print("RESULT " + json.dumps({"seconds": seconds, "count": count, "forward": forward,
                              "torch": torch.__version__, "open_clip": open_clip.__version__}))
'''


def fail(message: str) -> None:
    print(f"clip-retrieval could not be compared: {message}")
    sys.exit(1)


def ensure_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    check = "import clip_retrieval.clip_inference.worker, all_clip"
    if python.is_file() and subprocess.run([python, "-c", check], capture_output=True).returncode == 0:
        return python
    print(f"installing clip-retrieval into {venv} (once)", file=sys.stderr)
    # setuptools < 80: its dependencies still import pkg_resources, which newer setuptools no longer ship
    for cmd in ([sys.executable, "-m", "venv", str(venv)],
                [str(python), "-m", "pip", "install", "--quiet", "clip-retrieval", "setuptools<80"],
                [str(python), "-c", check]):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            last = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
            fail(f"`{' '.join(cmd[-3:])}` failed: {last[-1] if last else done.returncode}")
    return python


def run_clip_retrieval(python: Path, folder: Path, out: Path, args, forward_batches: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    payload = {"folder": str(folder), "out": str(out), "batch_size": args.batch_size, "workers": args.workers,
               "model": args.model, "forward_batches": forward_batches}
    done = subprocess.run([str(python), "-c", WRAPPER, json.dumps(payload)], capture_output=True, text=True, env=env)
    result = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not result:
        last = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        fail(f"clip-retrieval inference exited with {done.returncode}: {last[-1] if last else 'no output'}")
    warmups = re.findall(r"done warming up in ([0-9.]+)s", done.stdout)  # clip-retrieval's own log line
    return {**json.loads(result[-1][len("RESULT "):]), "warmup": float(warmups[0]) if warmups else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model name (random weights)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="decoding processes, for both tools")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the two tools this many times")
    parser.add_argument("--dir", type=Path, default=None, help="where the images are drawn and cached")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    args = parser.parse_args()

    python = ensure_venv(args.venv)
    folder = make_folder((args.dir or Path(tempfile.gettempdir()) / "cirkit-bench" / f"coco-like-{args.images}")
                         .expanduser(), args.images)

    import torch

    from cirkit.api import index_folder
    from cirkit.engines.open_clip_engine import ClipModel

    load_before = os.getloadavg()
    cirkit_seconds = cr_seconds = 0.0
    cr = {}
    forward_batches = 4
    with tempfile.TemporaryDirectory(prefix="cirkit-vs-cr-") as tmp:
        for r in range(args.repeats):
            start = time.perf_counter()
            report = index_folder(folder, Path(tmp) / f"cirkit-{r}", clip=args.model, device="cpu",
                                  batch_size=args.batch_size, workers=args.workers, precision="fp32")
            cirkit_seconds += time.perf_counter() - start
            if report.count != args.images:
                fail(f"cirkit indexed {report.count} of {args.images} images")
            cr = run_clip_retrieval(python, folder, Path(tmp) / f"cr-{r}", args, forward_batches)
            cr_seconds += cr["seconds"]
            if cr["count"] != args.images:
                fail(f"clip-retrieval embedded {cr['count']} of {args.images} images")

    clip = ClipModel(args.model, None, device="cpu", precision="fp32")  # the forward pass alone, in this environment
    pixels = torch.randn(args.batch_size, 3, 224, 224)
    clip.encode_images(pixels[:2])
    start = time.perf_counter()
    for _ in range(forward_batches):
        clip.encode_images(pixels)
    cirkit_forward = forward_batches * args.batch_size / (time.perf_counter() - start)

    n = args.images * args.repeats
    cirkit_rate, cr_rate = n / cirkit_seconds, n / cr_seconds
    load_after = os.getloadavg()
    print(f"\n{args.model} (random weights), {args.images} JPEGs x {args.repeats}, batch {args.batch_size}, "
          f"{args.workers} decoding process(es), fp32, CPU ({os.cpu_count()} cores), torch {torch.__version__} "
          f"here, {cr['torch']} with open_clip {cr['open_clip']} in clip-retrieval's venv")
    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} (other jobs on the machine)\n")
    print(f"| {'tool':<34} | {'seconds':>8} | {'images/s':>8} | {'forward alone, images/s':>23} |")
    print(f"|{'-' * 36}|{'-' * 9}:|{'-' * 9}:|{'-' * 24}:|")
    print(f"| {'cirkit index (index_folder)':<34} | {cirkit_seconds:>8.1f} | {cirkit_rate:>8.2f} | {cirkit_forward:>23.2f} |")
    print(f"| {'clip-retrieval inference':<34} | {cr_seconds:>8.1f} | {cr_rate:>8.2f} | {cr['forward']:>23.2f} |")
    print(f"\nratio cirkit / clip-retrieval (images/s): {cirkit_rate / cr_rate:.3f}")
    if cr["warmup"] is not None:
        print(f"clip-retrieval's model warm-up (2 image and 2 text batches, inside its time, last run): {cr['warmup']:.1f} s")
    print("(the forward-alone column is a short measurement after the runs: it says whether both environments "
          "run the model at the same speed)")


if __name__ == "__main__":
    main()
