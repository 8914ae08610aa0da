"""Cold vs warm queries: `cirkit query --local` (a fresh process that imports and loads every model)
vs `cirkit query` through a running `cirkit serve` (models loaded once and kept).

Two model sets:
- toy: the shipped `toy` pipeline (toy BLIP, toy Qwen2, toy CLIP) over the toy gallery (540 images);
- small: real architectures with random weights (the FLOPs and load times of trained models):
  BLIP base captioner, a SmolLM-135M-shaped Llama (30 layers), open_clip ViT-B-32, over 64 images.

Every query is a fresh `cirkit` process with --no-cache and its own reference image, so both ways
compute every step; the warm time includes the client's own start (Python, the CLI) and is what a
user waits for. Cold and warm queries alternate, so both see the same machine load.

The client's share of a warm query is its wall time minus the time the server spent on it (from
the server's log); it is compared with the time of `cirkit --help` (Python, the CLI's imports),
measured in the same loop. --no-cold skips the cold queries.

    python speed/warm_queries.py --repeats 3
    python speed/warm_queries.py --sets toy --repeats 5 --no-cold
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SMALL_PIPELINE = """name: small
models:
  captioner: {{type: vlm, id: "{blip}"}}
  llm: {{type: llm, id: "{llm}"}}
  clip: {{type: clip, name: ViT-B-32, pretrained: "{clip}"}}
steps:
  - {{name: caption, kind: caption, model: captioner, prompt: short-caption, params: {{num_beams: {beams}, max_new_tokens: {caption_tokens}}}}}
  - {{name: rewrite, kind: rewrite, model: llm, prompt: cirevl-rewrite, params: {{max_new_tokens: {rewrite_tokens}}}}}
  - {{name: embed, kind: embed, model: clip}}
  - {{name: search, kind: search, params: {{k: 50}}}}
"""


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("CIRKIT_SERVER", None)
    env.update(extra)
    return env


def toy_set(tmp: Path) -> tuple[str, Path, list[Path]]:
    from cirkit.api import index_folder
    from cirkit.toy import benchmark as toy

    toy.write_benchmark(tmp / "toy")
    root = toy.images_root(tmp / "toy") / toy.FOLDER
    index_folder(root, tmp / "toy-index", pipeline="toy")
    return "toy", tmp / "toy-index", sorted(root.glob("*.png"))


def small_set(tmp: Path, args) -> tuple[str, Path, list[Path]]:
    from PIL import Image

    from cirkit.api import index_folder
    from small_models import build_small_blip, build_small_llm

    blip, llm = build_small_blip(tmp / "blip", args.caption_tokens), build_small_llm(tmp / "llm", args.rewrite_tokens)
    pipeline = tmp / "small.yaml"
    pipeline.write_text(SMALL_PIPELINE.format(blip=blip, llm=llm, clip=build_small_clip(tmp / "vit-b-32.safetensors"),
                                              beams=args.beams, caption_tokens=args.caption_tokens, rewrite_tokens=args.rewrite_tokens))
    gallery = tmp / "small-gallery"
    gallery.mkdir()
    for i in range(64):
        Image.new("RGB", (640, 480), ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)).save(gallery / f"{i:03d}.jpg")
    index_folder(gallery, tmp / "small-index", pipeline=pipeline)
    return str(pipeline), tmp / "small-index", sorted(gallery.glob("*.jpg"))


def build_small_clip(path: Path) -> Path:
    """open_clip ViT-B-32 with random weights, saved: every process (the index, the server, each cold
    query) must load the same weights, and open_clip draws new random ones each time without a checkpoint."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def query(pipeline: str, index: Path, image: Path, text: str, env: dict[str, str], *flags: str) -> tuple[float, dict]:
    start = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "cirkit", "query", "-p", pipeline, "-i", str(index), "--image", str(image), "-t", text,
         "--no-cache", "--json", *flags],
        capture_output=True, text=True, env=env,
    )
    seconds = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"query failed: {res.stderr.strip()}")
    return seconds, json.loads(res.stdout)


def cli_help(env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cirkit", "--help"], capture_output=True, env=env, check=True)
    return time.perf_counter() - start


def server_times(log: Path) -> list[float]:
    return [float(s) for s in re.findall(r"1 query \(.*\) in ([0-9.]+) s", log.read_text())]


def measure(name: str, pipeline: str, index: Path, images: list[Path], tmp: Path, repeats: int, cold_too: bool = True) -> dict:
    from cirkit.serve.client import free_port, wait_until_ready

    port = free_port()
    log = tmp / f"serve-{name}.err"
    start = time.perf_counter()
    with open(log, "wb") as err:
        server = subprocess.Popen([sys.executable, "-m", "cirkit", "serve", "-p", pipeline, "--port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=err, env=_env())
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", timeout=1800)
        startup = time.perf_counter() - start
        cold_env = _env(CIRKIT_DATA_DIR=str(tmp / f"data-{name}-cold"), CIRKIT_PORT=str(free_port()))
        warm_env = _env(CIRKIT_DATA_DIR=str(tmp / f"data-{name}-warm"), CIRKIT_PORT=str(port))
        cold, warm, client, helps, same = [], [], [], [], True
        query(pipeline, index, images[0], "a first query, not timed", warm_env)
        for r in range(repeats):
            image, text = images[(7 * r + 3) % len(images)], f"make it blue, take {r}"
            c, cold_run = query(pipeline, index, image, text, cold_env, "--local") if cold_too else (float("nan"), None)
            w, warm_run = query(pipeline, index, image, text, warm_env)
            h = cli_help(warm_env)
            cold.append(c)
            warm.append(w)
            client.append(w - server_times(log)[-1])
            helps.append(h)
            if cold_run is not None:
                same &= [x["path"] for x in cold_run["results"]] == [x["path"] for x in warm_run["results"]]
            print(f"  {name} #{r + 1}: cold {c:.2f} s, warm {w:.2f} s (client {client[-1]:.2f} s), cirkit --help {h:.2f} s", flush=True)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait()
    in_server = server_times(log)[1:]
    return {"name": name, "cold": statistics.median(cold), "warm": statistics.median(warm),
            "in_server": statistics.median(in_server) if in_server else float("nan"), "startup": startup,
            "same": same if cold_too else None, "client": statistics.median(client), "help": statistics.median(helps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sets", default="toy,small", help="comma-separated: toy, small")
    parser.add_argument("--caption-tokens", type=int, default=12, help="small set: caption length (tokens)")
    parser.add_argument("--rewrite-tokens", type=int, default=16, help="small set: rewrite length (tokens)")
    parser.add_argument("--beams", type=int, default=1, help="small set: caption beams")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold (--local) queries")
    args = parser.parse_args()

    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.sets.split(","):
            pipeline, index, images = toy_set(tmp) if name == "toy" else small_set(tmp, args)
            rows.append(measure(name, pipeline, index, images, tmp, args.repeats, cold_too=not args.no_cold))
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, cpu; load average {os.getloadavg()[0]:.1f}; "
          f"median of {args.repeats}; small = BLIP base ({args.beams} beam, {args.caption_tokens} tokens), "
          f"Llama 30x576 ({args.rewrite_tokens} tokens), ViT-B-32, random weights")
    print(f"{'models':>8} | {'cold s':>7} | {'warm s':>7} | {'warm/cold':>9} | {'in server s':>11} | {'client s':>8} | "
          f"{'--help s':>8} | {'client/help':>11} | {'serve start s':>13} | same results")
    for r in rows:
        same = "-" if r["same"] is None else "yes" if r["same"] else "NO"
        print(f"{r['name']:>8} | {r['cold']:7.2f} | {r['warm']:7.2f} | {r['warm'] / r['cold']:9.3f} | {r['in_server']:11.2f} | "
              f"{r['client']:8.2f} | {r['help']:8.2f} | {r['client'] / r['help']:11.2f} | {r['startup']:13.1f} | {same}")


if __name__ == "__main__":
    main()
