"""Gallery captioning with the toy captioner: the local engine vs `engine: ray` with 1 and 2 replicas.

Runs the `toy` pipeline's caption step (what `cirkit index --captions toy` runs per chunk of the
gallery) over N toy-world gallery images, in one process, with the same model and decoding:

  local        the transformers engine in this process (all of this machine's torch threads)
  local-1t     the same with one torch thread (what one Ray replica gets)
  ray-1, ray-2 `engine: ray`, processor transformers, on a local Ray instance of --cpus CPUs,
               with 1 and 2 replicas (one CPU and one torch thread each)

and prints images/s and the ratio of each to `local`. The Ray overhead is split in two: per call
(starting the replicas and loading the model: ray-1 on one image minus local-1t on one image) and
per request (the rest of the difference, per image). Then the per-request cost of the rows' trip
through Ray alone, without a model: the http processor (1 replica) against a local echo server that
answers at once, vs the openai engine calling the same server from this process, on --requests
requests (one in flight at a time in both). Each configuration is measured --repeats times
(the fastest, the one least disturbed by other jobs), alternating, so that load falls on all of them.

    python speed/ray_captioning.py                    # 64 images, 5 repeats
    python speed/ray_captioning.py --images 128 --repeats 1
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--requests", type=int, default=256, help="requests to the echo server")
    args = parser.parse_args()

    import ray
    import torch

    from cirkit.engines import ModelPool
    from cirkit.pipelines import load_pipeline
    from cirkit.pipelines.runner import run_step
    from cirkit.toy.benchmark import gallery_image
    from cirkit.toy.world import all_scenes

    scenes = all_scenes()
    images = [gallery_image(scenes[i % len(scenes)]) for i in range(args.images)]
    local = load_pipeline("toy")
    step = next(s for s in local.steps if s.kind == "caption")
    base = local.model_for(step).model_dump()

    def entry(replicas: int):
        spec = dict(base, engine="ray", options={"processor": "transformers", "replicas": replicas, "num_cpus": 1})
        return load_pipeline("toy", model_overrides={step.spec.model: spec})

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    threads = torch.get_num_threads()
    configs = {"local": (local, threads), "local-1t": (local, 1), "ray-1": (entry(1), threads), "ray-2": (entry(2), threads)}
    pool = ModelPool()

    def caption(name: str, count: int) -> tuple[float, list[str]]:
        pipeline, torch_threads = configs[name]
        spec = pipeline.model_for(step)
        pool.get(spec)  # loaded (local) or connected (ray) before the clock starts
        torch.set_num_threads(torch_threads)
        start = time.perf_counter()
        _, results = run_step(step, step.params, spec, pool, [{"image": im} for im in images[:count]])
        took = time.perf_counter() - start
        torch.set_num_threads(threads)
        errors = [r.error for r in results if r.error]
        if errors:
            raise SystemExit(f"{name}: {errors[0]}")
        return took, [r.outputs["caption"] for r in results]

    server = _echo_server()
    try:
        http = _http_overhead(server, args.requests, args.repeats)
        caption("local", 2)  # warm up
        times: dict[str, list[float]] = {name: [] for name in configs}
        single: dict[str, list[float]] = {"local-1t": [], "ray-1": []}
        captions = {}
        for _ in range(args.repeats):
            for name in configs:
                took, captions[name] = caption(name, args.images)
                times[name].append(took)
            for name in single:
                single[name].append(caption(name, 1)[0])
    finally:
        server.shutdown()
        ray.shutdown()

    same = all(captions[name] == captions["local"] for name in configs)
    best = {name: min(values) for name, values in times.items()}
    print(f"{args.images} toy gallery images, caption step of the toy pipeline (max_new_tokens "
          f"{step.params.max_new_tokens}), fastest of {args.repeats}; torch threads here: {threads}; "
          f"Ray: {args.cpus} CPUs, one per replica; load average {os.getloadavg()[0]:.1f}")
    for name, took in best.items():
        print(f"  {name:9s} {took:7.2f} s  {args.images / took:7.1f} images/s  ratio to local {best['local'] / took:5.2f}"
              f"  to local-1t {best['local-1t'] / took:5.2f}")
    per_call = min(single["ray-1"]) - min(single["local-1t"])
    per_request = (best["ray-1"] - best["local-1t"] - per_call) / max(1, args.images - 1)
    print(f"  Ray overhead: {per_call:.2f} s per call (replica start + model load), "
          f"{per_request * 1000:.1f} ms per request beyond that")
    print(f"  same captions as local: {'yes' if same else 'NO'}")
    local_s, ray_s, ray_one = http
    print(f"{args.requests} requests to an echo server, one in flight: openai engine here {local_s:.2f} s "
          f"({local_s / args.requests * 1000:.2f} ms each); engine: ray, http processor, 1 replica {ray_s:.2f} s "
          f"({ray_s / args.requests * 1000:.2f} ms each, {ray_one:.2f} s for one request); Ray adds "
          f"{(ray_s - ray_one - local_s) / max(1, args.requests - 1) * 1000:.2f} ms per request beyond its "
          f"{ray_one:.2f} s per call")


def _echo_server():
    """An OpenAI-compatible chat-completions server on 127.0.0.1 that answers at once (a thread of this process)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            text = body["messages"][-1]["content"]
            data = json.dumps({"model": "echo", "choices": [{"index": 0, "finish_reason": "stop",
                                                             "message": {"role": "assistant", "content": text}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _http_overhead(server, count: int, repeats: int) -> tuple[float, float, float]:
    """(openai engine here, ray http 1 replica, ray http on one request): fastest seconds of `repeats`."""
    from cirkit.engines import GenerationParams, GenerationRequest, load_model
    from cirkit.pipelines.spec import ModelSpec

    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    here = load_model(ModelSpec(type="llm", engine="openai", id="echo", base_url=url, max_concurrency=1))
    remote = load_model(ModelSpec(type="llm", engine="ray", id="echo", base_url=url, max_concurrency=1,
                                  options={"replicas": 1, "batch_size": count}))
    requests = [GenerationRequest([{"role": "user", "content": f"request {i}"}]) for i in range(count)]
    params = GenerationParams(max_new_tokens=4)

    def timed(engine, batch) -> float:
        start = time.perf_counter()
        out = engine.generate(batch, params)
        took = time.perf_counter() - start
        assert [r[0].text for r in out] == [r.messages[0]["content"] for r in batch]
        return took

    timed(here, requests[:4])
    results = [(timed(here, requests), timed(remote, requests), timed(remote, requests[:1])) for _ in range(repeats)]
    return tuple(min(r[k] for r in results) for k in range(3))


if __name__ == "__main__":
    main()
