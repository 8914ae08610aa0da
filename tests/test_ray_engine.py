"""`engine: ray`: generation through Ray Data on a real local Ray instance, against real servers and models.

One Ray instance (2 CPUs, a small object store) serves the module. The http processor talks to
`transformers serve` (tests/conftest.py) and to small scripted servers on 127.0.0.1; the transformers
processor loads the toy models in its replicas. Addresses that do not answer are tried in a fresh
process, where no Ray is running. The vLLM processor needs a GPU and vLLM: marked `gpu`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from cirkit.engines import GenerationParams, GenerationRequest, load_model
from cirkit.errors import CirkitError, PartialGenerationError
from cirkit.pipelines.spec import ModelSpec
from conftest import make_gallery
from test_engines_remote import FakeServer, completion, echo, last_user_text

REPO = Path(__file__).resolve().parents[1]
TOY_MODELS = REPO / "cirkit" / "toy" / "models"
LIMIT = 12  # toy queries per eval


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(autouse=True)
def _no_proxy_for_localhost(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.fixture(scope="module")
def ray_instance():
    import logging

    import ray

    ray.init(num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR, runtime_env={"env_vars": {"NO_PROXY": "127.0.0.1,localhost"}})
    try:
        yield ray
    finally:
        ray.shutdown()


def ray_spec(**fields) -> ModelSpec:
    return ModelSpec(**{"type": "llm", "engine": "ray", **fields})


def replica_processes() -> list:
    """This process's Ray actors that hold a ray-engine replica."""
    import psutil

    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if any("_Replica" in part for part in proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            pass
    return found


# ------------------------------------------------------------------ the model entry


@pytest.mark.parametrize("options, message", [
    ({"processor": "grpc"}, "processor must be one of http, vllm, transformers"),
    ({"replicas": 0}, "replicas must be a whole number >= 1"),
    ({"address": "not an address"}, "expected auto, HOST:PORT or ray://HOST:PORT"),
    ({"colour": "red"}, "unknown option(s) colour"),
    ({"processor": "transformers", "extra_body": {"top_k": 2}}, "extra_body are options of processor http"),
    ({"processor": "http"}, "needs 'base_url'"),
    ({"engine_kwargs": {"max_model_len": 4}, "processor": "transformers"}, "engine_kwargs is a mapping of vLLM engine arguments"),
])
def test_a_bad_entry_is_refused_in_one_line_before_anything_runs(options, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ray_spec(id="some/model", options=options)


def test_a_bad_entry_on_the_command_line_exits_with_one_line(cli, toy_world):
    res = cli("eval", "cirr", "--data", toy_world, "--split", "val", "-p", "toy",
              "--model", "llm={type: llm, engine: ray, id: x, options: {processor: grpc}}")
    assert res.exit_code != 0
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "processor must be one of http, vllm, transformers" in lines[0]
    assert "Traceback" not in res.stderr + res.stdout


def test_the_entry_defaults_to_http_with_a_base_url_and_to_vllm_without():
    from cirkit.engines.ray_engine import ray_options

    assert ray_options(ray_spec(id="m", base_url="http://127.0.0.1:1/v1")).processor == "http"
    assert ray_options(ray_spec(id="m")).processor == "vllm"


# ------------------------------------------------------------------ http: order, samples, failures


def test_http_rows_come_back_in_request_order_with_samples(ray_instance):
    def slow_echo(number, body):
        text = last_user_text(body)
        time.sleep(0.3 if text.endswith(("0", "3")) else 0.0)  # some rows finish late
        return echo(number, body)

    with FakeServer(slow_echo) as server:
        engine = load_model(ray_spec(id="fake", base_url=server.url, max_concurrency=2,
                                     options={"replicas": 2, "batch_size": 2}))
        prompts = [f"prompt {i}" for i in range(7)]
        seen: list[int] = []
        out = engine.generate([GenerationRequest(_user(p)) for p in prompts],
                              GenerationParams(n=2, temperature=0.7, max_new_tokens=4), on_batch=seen.append)
    assert [[g.text for g in r] for r in out] == [[f"echo 0: {p}", f"echo 1: {p}"] for p in prompts]
    assert sum(seen) == len(prompts)
    info = engine.describe()
    assert (info["engine"], info["processor"], info["base_url"], info["served_model"]) == ("ray", "http", server.url, "fake-model")
    assert all(b["temperature"] == 0.7 and b["max_tokens"] == 4 for b in server.bodies)


def test_several_servers_share_the_rows(ray_instance):
    with FakeServer(lambda n, b: completion(f"a: {last_user_text(b)}")) as a, \
            FakeServer(lambda n, b: completion(f"b: {last_user_text(b)}")) as b:
        engine = load_model(ray_spec(id="fake", base_url=a.url, options={"base_urls": [b.url], "batch_size": 3}))
        out = engine.generate([GenerationRequest(_user(f"p{i}")) for i in range(6)], GenerationParams(max_new_tokens=4))
    assert [r[0].text for r in out] == ["a: p0", "b: p1", "a: p2", "b: p3", "a: p4", "b: p5"]
    assert (len(a.bodies), len(b.bodies)) == (3, 3)


def test_failed_rows_keep_the_answered_ones(ray_instance):
    def refuse_bad(number, body):
        if "bad" in last_user_text(body):
            return 400, {"Content-Type": "application/json"}, json.dumps({"error": {"message": "prompt too long"}}).encode()
        return echo(number, body)

    prompts = ["ok 0", "ok 1", "ok 2", "bad 3", "ok 4", "ok 5"]
    with FakeServer(refuse_bad) as server:
        engine = load_model(ray_spec(id="fake", base_url=server.url, max_concurrency=1,
                                     options={"replicas": 1, "batch_size": 1}))
        with pytest.raises(PartialGenerationError) as caught:
            engine.generate([GenerationRequest(_user(p)) for p in prompts], GenerationParams(max_new_tokens=4))
    results = caught.value.results
    assert [r[0].text for r in results[:3]] == ["echo 0: ok 0", "echo 0: ok 1", "echo 0: ok 2"]
    assert results[3] is None
    message = str(caught.value)
    assert "HTTP 400: prompt too long" in message and f"of {len(prompts)} requests answered" in message
    assert "\n" not in message


def test_a_server_that_is_down_fails_with_one_line(ray_instance):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = load_model(ray_spec(id="fake", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0))
    with pytest.raises(CirkitError) as caught:
        engine.generate([GenerationRequest(_user("hello"))], GenerationParams(max_new_tokens=4))
    assert not isinstance(caught.value, PartialGenerationError)
    assert f"cannot reach the server at http://127.0.0.1:{port}/v1" in str(caught.value)


def test_beam_search_is_refused(ray_instance):
    engine = load_model(ray_spec(id="fake", base_url="http://127.0.0.1:9/v1"))
    with pytest.raises(CirkitError, match="cannot do beam search"):
        engine.generate([GenerationRequest(_user("x"))], GenerationParams(num_beams=2))


# ------------------------------------------------------------------ same results as the local engines


def test_http_on_transformers_serve_matches_in_process(ray_instance, tiny_models, transformers_server):
    engine = load_model(ray_spec(id=str(tiny_models.llm), base_url=transformers_server, options={"replicas": 2, "batch_size": 2}))
    local = load_model(ModelSpec(type="llm", id=str(tiny_models.llm)))
    requests = [GenerationRequest(_user(p)) for p in ("a red dress", "make it green", "a small blue circle", "bigger")]
    params = GenerationParams(max_new_tokens=6)
    assert [[g.text for g in r] for r in engine.generate(requests, params)] == \
        [[g.text for g in r] for r in local.generate(requests, params)]


@pytest.fixture(scope="module")
def toy_world(tmp_path_factory) -> Path:
    from cirkit.toy import benchmark as toy

    root = tmp_path_factory.mktemp("toy-world")
    toy.write_benchmark(root)
    return root


def toy_eval(toy_world: Path, data_dir: Path, overrides: dict | None = None):
    """The toy pipeline on the first LIMIT toy queries: (metrics, {query id: (caption, description, ranking)}, failed)."""
    from cirkit.experiments import run_experiment
    from cirkit.store import RunStore

    store = RunStore(data_dir)
    exp = run_experiment("cirr", toy_world, "val", pipeline="toy", store=store, limit=LIMIT, progress=False,
                         model_overrides=overrides)
    outputs = {}
    for row in store.experiment(exp.id)["runs"]:
        run = store.get(row["run_id"])
        if run.status == "ok":
            outputs[row["query_id"]] = (run.step("caption").outputs["caption"], run.step("rewrite").outputs["description"],
                                        [hit["path"] for hit in run.results])
    return exp.metrics, outputs, exp.failed_runs


def toy_entry(kind: str, **options) -> dict:
    model = "captioner" if kind == "vlm" else "llm"
    return {"type": kind, "engine": "ray", "id": str(TOY_MODELS / model), "dtype": "float32", "options": options}


@pytest.fixture(scope="module")
def local_toy_eval(toy_world, tmp_path_factory):
    return toy_eval(toy_world, tmp_path_factory.mktemp("local-eval"))


def test_toy_eval_on_ray_equals_the_local_one(ray_instance, toy_world, local_toy_eval, tmp_path):
    overrides = {
        "captioner": toy_entry("vlm", processor="transformers", replicas=2, num_cpus=1),
        "llm": toy_entry("llm", processor="transformers", replicas=1, batch_size=4),
    }
    metrics, outputs, failed = toy_eval(toy_world, tmp_path, overrides)
    local_metrics, local_outputs, local_failed = local_toy_eval
    assert (failed, local_failed) == (0, 0)
    assert len(outputs) == LIMIT
    assert outputs == local_outputs  # captions, descriptions and rankings
    assert metrics == local_metrics


def test_a_killed_replica_is_survived_by_running_again(ray_instance, toy_world, local_toy_eval, transformers_server, tmp_path):
    """The rewrite step on the http processor, through a relay to `transformers serve` that kills the
    replica sending its 5th request. The second run sends only what the first did not get back."""
    killed = threading.Event()

    def relay(number, body):
        if number == 5 and not killed.is_set():
            for proc in replica_processes():
                os.kill(proc.pid, signal.SIGKILL)
            killed.set()
            return None
        answer = httpx.post(f"{transformers_server}/chat/completions", json=body, timeout=120)
        return answer.status_code, {"Content-Type": "application/json"}, answer.content

    with FakeServer(relay) as server:
        entry = {"type": "llm", "engine": "ray", "id": str(TOY_MODELS / "llm"), "base_url": server.url,
                 "max_concurrency": 1, "max_retries": 0, "options": {"replicas": 1, "batch_size": 2}}
        first_metrics, first, first_failed = toy_eval(toy_world, tmp_path, {"llm": entry})
        assert killed.is_set() and first_failed > 0 and len(first) < LIMIT
        sent_first = len(server.bodies)
        metrics, outputs, failed = toy_eval(toy_world, tmp_path, {"llm": entry})
        sent_again = len(server.bodies) - sent_first
    assert failed == 0
    assert sent_again == first_failed  # only the rewrites that never came back
    local_metrics, local_outputs, _ = local_toy_eval
    assert outputs == local_outputs
    assert metrics == local_metrics


# ------------------------------------------------------------------ gallery captioning


def test_gallery_captions_on_ray_equal_the_local_ones(ray_instance, cli, tmp_path):
    from cirkit.gallery.captions import DIRECTORY, read_captions

    images = make_gallery(tmp_path / "images", 6, size=(64, 64))
    entry = json.dumps(toy_entry("vlm", processor="transformers", replicas=2))
    captions = {}
    for name, extra in (("local", []), ("ray", ["--model", f"captioner={entry}"])):
        out = tmp_path / name
        res = cli("index", images, "--out", out, "--pipeline", "toy", "--captions", "toy", *extra)
        assert res.exit_code == 0, res.stderr
        assert "captioned 6 gallery images (0 reused, 0 failed)" in res.stdout
        (found,) = (out / DIRECTORY).glob("*.jsonl")
        captions[name] = read_captions(found)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest
    assert captions["ray"] == captions["local"] and len(captions["ray"]) == 6


# ------------------------------------------------------------------ addresses that do not answer


def run_cirkit(args: list, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CIRKIT_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "cirkit", *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=180)


def test_an_address_that_does_not_answer_fails_in_seconds(tmp_path):
    from cirkit.engines import ray_cluster

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts, never answers
    port = silent.getsockname()[1]
    images = make_gallery(tmp_path / "images", 2)
    entry = json.dumps(toy_entry("vlm", processor="transformers", address=f"127.0.0.1:{port}"))
    try:
        start = time.monotonic()
        res = run_cirkit(["index", images, "--out", tmp_path / "idx", "--pipeline", "toy", "--captions", "toy",
                          "--model", f"captioner={entry}"], tmp_path)
        took = time.monotonic() - start
    finally:
        silent.close()
    message = f"the Ray cluster at 127.0.0.1:{port} does not answer (silent for {ray_cluster.PROBE_SECONDS:g} s)"
    assert message in res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert took < 60


# ------------------------------------------------------------------ vLLM on Ray Data (GPU)


@pytest.mark.gpu
def test_vllm_processor_matches_the_in_process_vllm_engine(ray_instance, tiny_models):
    pytest.importorskip("vllm")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    requests = [GenerationRequest(_user(p)) for p in ("a red dress", "make it green", "bigger")]
    params = GenerationParams(max_new_tokens=6)
    engine = load_model(ray_spec(id=str(tiny_models.llm), options={"processor": "vllm", "replicas": 1,
                                                                    "engine_kwargs": {"max_model_len": 256}}))
    local = load_model(ModelSpec(type="llm", engine="vllm", id=str(tiny_models.llm), options={"max_model_len": 256}))
    assert [[g.text for g in r] for r in engine.generate(requests, params)] == \
        [[g.text for g in r] for r in local.generate(requests, params)]


# ------------------------------------------------------------------ rerank judging


def test_rerank_judging_on_ray_equals_the_local_one(ray_instance, tiny_models, tiny_judge, gallery, gallery_index, tmp_path):
    """The judge's yes/no log-probabilities (two images per request) come back through the rows as they are."""
    from cirkit.api import query_many
    from cirkit.pipelines.runner import Query
    from test_rerank import _rerank_pipeline

    queries = [Query(gallery / "img0007.jpg", "make it darker", "q1"), Query(gallery / "img0004.jpg", "make it green", "q2")]
    verdicts = {}
    for name, engine in (("local", ""), ("ray", ", engine: ray, options: {processor: transformers, replicas: 2, batch_size: 4}")):
        (tmp_path / name).mkdir()
        path = _rerank_pipeline(tmp_path / name, tiny_models, tiny_judge, engine=engine)
        runs = query_many(queries, gallery_index, pipeline=path, k=20, data_dir=tmp_path / name / "data")
        assert [r["status"] for r in runs] == ["ok", "ok"]
        verdicts[name] = [(r["steps"][-1]["raw"], r["steps"][-1]["outputs"]["verdicts"], r["results"]) for r in runs]
    assert verdicts["ray"] == verdicts["local"]
    assert all(v["source"] == "logprobs" for _, found, _ in verdicts["ray"] for v in found)
