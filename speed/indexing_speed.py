"""How close `cirkit index` comes to the model's own speed: end-to-end images/s vs the pure forward pass.

Makes a folder of COCO-like JPEGs (640x480 and the other common COCO sizes, textured so that JPEG
decoding costs what it costs on photos; drawn procedurally, cached in --dir), then measures in one
run, in the same process, with the same model, batch size and precision:

  (a) the forward pass alone, on pre-decoded, preprocessed tensors: `ClipModel.encode_images`,
      batch after batch, over as many images as the folder holds;
  (b) `cirkit.api.index_folder` (what `cirkit index` runs) on the folder, into a fresh directory:
      model loading, hashing, decoding in worker processes, the forward pass, cache shards and the
      FAISS index all included;

and prints images/s for each and the ratio (b)/(a). With --rounds R the folder is indexed in R
parts, alternating with R slices of (a), so that load from other jobs on the machine falls on both.
It also profiles decoding + preprocessing alone (one process, one torch thread), the model load
and the process CPU time, to show where the time goes.

The model has random weights (`pretrained=None`): the same FLOPs as trained weights, no download.

    python speed/indexing_speed.py                         # 2,000 images, ViT-B-32, defaults
    python speed/indexing_speed.py --images 256 --rounds 2 # a quick look
    python speed/indexing_speed.py --precision bf16 --workers 1 --batch-size 64
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PARTS = 8  # the folder is laid out in 8 subfolders, so --rounds can index it in 1, 2, 4 or 8 parts
SIZES = [(640, 480)] * 5 + [(480, 640)] * 2 + [(640, 427), (427, 640), (612, 612)]  # COCO's usual shapes


def make_folder(directory: Path, count: int) -> Path:
    """`count` textured JPEGs in PARTS subfolders (reused if already there)."""
    import numpy as np
    from PIL import Image, ImageFilter

    marker = directory / f".complete-{count}"
    if marker.is_file():
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    rng = np.random.default_rng(2024)
    print(f"drawing {count} JPEGs into {directory} (once; cached)", file=sys.stderr)
    for i in range(count):
        w, h = SIZES[i % len(SIZES)]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        pixels = np.empty((h, w, 3), np.float32)
        for c in range(3):  # smooth colour waves: sky, walls
            fx, fy = rng.uniform(0.002, 0.04, 2)
            pixels[..., c] = 128 + 90 * np.sin(xx * fx + yy * fy + rng.uniform(0, 6.3))
        for _ in range(8):  # objects: discs and boxes of flat colour
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(15, 160)
            mask = ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r) if rng.random() < 0.5 else (
                (abs(xx - cx) < r) & (abs(yy - cy) < r * rng.uniform(0.3, 1.5)))
            pixels[mask] = rng.uniform(0, 255, 3)
        pixels += rng.normal(0, 22, pixels.shape).astype(np.float32)  # texture and sensor noise
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
        folder = directory / f"part-{i % PARTS}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i:06d}.jpg", quality=90)
    marker.touch()
    return directory


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the decode workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model name (random weights)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: cirkit's (64 on CPU)")
    parser.add_argument("--workers", type=int, default=None, help="decode processes (default: cirkit's, 1 on CPU)")
    parser.add_argument("--precision", default="auto", help="auto, fp32, bf16, fp16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=1, choices=[1, 2, 4, 8],
                        help="index the folder in this many parts, alternating with slices of the forward pass")
    parser.add_argument("--dir", type=Path, default=None, help="where the images are drawn and cached")
    args = parser.parse_args()

    import torch

    from cirkit.api import index_folder
    from cirkit.engines.open_clip_engine import ClipModel
    from cirkit.images import iter_image_files, load_image

    cache = args.dir or Path(tempfile.gettempdir()) / "cirkit-bench" / f"coco-like-{args.images}"
    folder = make_folder(cache.expanduser(), args.images)
    parts = [folder / f"part-{p}" for p in range(PARTS)]
    groups = [parts[r::args.rounds] for r in range(args.rounds)]  # round r indexes these subfolders
    counts = [sum(len(iter_image_files(p)) for p in g) for g in groups]
    load_before = os.getloadavg()

    start = time.perf_counter()
    clip = ClipModel(args.model, None, device=args.device, precision=args.precision)
    load_seconds = time.perf_counter() - start
    batch_size = args.batch_size or clip.batch_size
    files = iter_image_files(folder)

    # where one image's CPU time goes outside the model: decode + preprocess, one process, one torch thread
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    sample = [clip.preprocess(load_image(f)) for f in files[:batch_size]]
    decode_ms = (time.perf_counter() - start) / len(sample) * 1000
    torch.set_num_threads(threads)
    pixels = torch.stack(sample)
    clip.encode_images(pixels[:2])  # warm-up

    def forward(n: int) -> float:
        start = time.perf_counter()
        for i in range(0, n, batch_size):
            clip.encode_images(pixels[: min(batch_size, n - i)])
        return time.perf_counter() - start

    def end_to_end(round_: int, out: Path) -> float:
        # one round indexes the images of its subfolders: a folder of links to them
        images = out.parent / f"images-{round_}"
        if args.rounds == 1:
            images = folder
        else:
            images.mkdir()
            for part in groups[round_]:
                (images / part.name).symlink_to(part, target_is_directory=True)
        start = time.perf_counter()
        report = index_folder(images, out, clip=args.model, device=args.device, batch_size=args.batch_size,
                              workers=args.workers, precision=args.precision)
        seconds = time.perf_counter() - start
        assert report.count == report.embedded == counts[round_], report
        return seconds

    fwd_seconds = e2e_seconds = fwd_cpu = e2e_cpu = 0.0
    with tempfile.TemporaryDirectory(prefix="cirkit-bench-") as tmp:
        for r in range(args.rounds):
            for n in (counts[r] // 2, None, counts[r] - counts[r] // 2):  # forward, index, forward
                before = cpu_seconds()
                if n is None:
                    e2e_seconds += end_to_end(r, Path(tmp) / f"index-{r}")
                    e2e_cpu += cpu_seconds() - before
                else:
                    fwd_seconds += forward(n)
                    fwd_cpu += cpu_seconds() - before
    total = sum(counts)
    fwd_rate, e2e_rate = total / fwd_seconds, total / e2e_seconds
    load_after = os.getloadavg()

    print(f"\n{args.model} (random weights), {total} JPEGs, batch {batch_size}, precision {clip.precision}, "
          f"workers {args.workers if args.workers is not None else 'default'}, device {args.device}, "
          f"torch threads {threads}, {os.cpu_count()} CPUs, rounds {args.rounds}")
    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} (other jobs on the machine)\n")
    rows = [
        ("(a) forward pass on pre-decoded tensors", total, fwd_seconds, f"{fwd_rate:.2f}"),
        ("(b) cirkit index end to end (index_folder)", total, e2e_seconds, f"{e2e_rate:.2f}"),
    ]
    print(f"| {'what':<44} | {'images':>6} | {'seconds':>8} | {'images/s':>8} |")
    print(f"|{'-' * 46}|{'-' * 8}:|{'-' * 9}:|{'-' * 9}:|")
    for what, n, seconds, rate in rows:
        print(f"| {what:<44} | {n:>6} | {seconds:>8.1f} | {rate:>8} |")
    print(f"\nratio (b)/(a): {e2e_rate / fwd_rate:.3f}")
    print("\nwhere the time goes:")
    fwd_ms, e2e_ms = fwd_cpu / total * 1000, e2e_cpu / total * 1000
    print(f"  (a) forward pass: {1000 / fwd_rate:.1f} ms per image (wall), {fwd_ms:.0f} core-ms per image "
          f"({fwd_cpu / fwd_seconds:.2f} cores busy on average)")
    print(f"  decode + preprocess alone (one process, one thread): {decode_ms:.1f} core-ms per image "
          f"({decode_ms / fwd_ms:.1%} of the forward pass's CPU time)")
    print(f"  (b) end to end: {1000 / e2e_rate:.1f} ms per image (wall), {e2e_ms:.0f} core-ms per image, "
          f"decode workers included ({e2e_cpu / e2e_seconds:.2f} cores busy on average)")
    print(f"  model load inside (b): {load_seconds:.1f} s per run ({args.rounds} in all, measured once before)")


if __name__ == "__main__":
    main()
