"""Engines that reach models elsewhere: an OpenAI-compatible server, LangChain chat models, vLLM.

The openai engine runs against a real `transformers serve` on the tiny local models, and against small
real HTTP servers (http.server, 127.0.0.1 only) that misbehave on purpose: 503s, 429 with Retry-After,
silence, garbage, 4xx, and dying mid-batch. Every server binds 127.0.0.1, every wait is bounded.
"""

from __future__ import annotations

import base64
import io
import json
import math
import random
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from PIL import Image

from cirkit.engines import GenerationParams, GenerationRequest, load_model
from cirkit.errors import CirkitError
from cirkit.pipelines.spec import ModelSpec
from conftest import free_port as _free_port

def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(autouse=True)
def _no_proxy_for_localhost(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


# ---------------------------------------------------------------------------------------------------
# A real `transformers serve` on the tiny models
# ---------------------------------------------------------------------------------------------------


def test_openai_engine_on_transformers_serve_matches_in_process(tiny_models, transformers_server):
    served = load_model(
        ModelSpec(type="llm", engine="openai", base_url=transformers_server, id=str(tiny_models.llm), max_concurrency=2)
    )
    local = load_model(ModelSpec(type="llm", id=str(tiny_models.llm)))
    prompts = ["a red dress", "a small blue circle on a white background and more words", "make it green"]
    params = GenerationParams(max_new_tokens=6)
    seen: list[int] = []
    remote = served.generate([GenerationRequest(_user(p)) for p in prompts], params, on_batch=seen.append)
    here = local.generate([GenerationRequest(_user(p)) for p in prompts], params)
    assert [[g.text for g in r] for r in remote] == [[g.text for g in r] for r in here]
    assert all(len(r) == 1 and r[0].text and r[0].finish_reason == "length" for r in remote)
    assert sum(seen) == len(prompts)
    info = served.describe()
    assert info["engine"] == "openai" and info["base_url"] == transformers_server
    assert info["model"] == str(tiny_models.llm) and info["served_model"] == str(tiny_models.llm)


def test_openai_engine_captions_images_through_transformers_serve(tiny_models, transformers_server):
    served = load_model(ModelSpec(type="vlm", engine="openai", base_url=transformers_server, id=str(tiny_models.qwen2vl)))
    local = load_model(ModelSpec(type="vlm", id=str(tiny_models.qwen2vl)))
    images = [Image.new("RGB", (64, 48), (200, 30, 30)), Image.new("RGB", (30, 30), (20, 40, 220))]
    requests = [GenerationRequest(_user("Describe the image."), image=im) for im in images]
    params = GenerationParams(max_new_tokens=5)
    remote = served.generate(requests, params)
    assert [[g.text for g in r] for r in remote] == [[g.text for g in r] for r in local.generate(requests, params)]
    assert all(r[0].text for r in remote)
    assert remote[0][0].text != remote[1][0].text  # same text, other image: the image reaches the model


def test_samples_fall_back_to_seeded_requests_when_the_server_ignores_n(tiny_models, transformers_server):
    """`transformers serve` answers one choice whatever `n` is: the engine asks once per sample, seed + i."""
    # The tiny model's generation config says do_sample=False, and `transformers serve` only switches
    # sampling off (temperature 0), never on: a request-level generation config switches it on.
    config = json.loads((Path(tiny_models.llm) / "generation_config.json").read_text())
    sampling = json.dumps({**config, "do_sample": True})
    spec = ModelSpec(
        type="llm",
        engine="openai",
        base_url=transformers_server,
        id=str(tiny_models.llm),
        max_concurrency=1,
        options={"extra_body": {"generation_config": sampling}},
    )
    engine = load_model(spec)
    params = GenerationParams(max_new_tokens=6, n=3, temperature=1.0, seed=11)
    requests = [GenerationRequest(_user("a red dress")), GenerationRequest(_user("make it green"))]
    first = engine.generate(requests, params)
    assert engine._n_native is False
    assert [len(r) for r in first] == [3, 3]
    assert all(len({g.text for g in r}) > 1 for r in first)  # different seeds, different samples
    again = engine.generate(requests, params)
    assert [[g.text for g in r] for r in again] == [[g.text for g in r] for r in first]


# ---------------------------------------------------------------------------------------------------
# Small real HTTP servers that misbehave on purpose
# ---------------------------------------------------------------------------------------------------

Behaviour = Callable[[int, dict], "tuple[int, dict[str, str], bytes] | None"]


def completion(*texts: str, finish: str = "stop", model: str = "fake-model") -> tuple[int, dict[str, str], bytes]:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": finish} for i, t in enumerate(texts)
        ],
    }
    return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()


def last_user_text(body: dict) -> str:
    content = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    if isinstance(content, str):
        return content
    return " ".join(p["text"] for p in content if p["type"] == "text")


def echo(n: int, body: dict):
    texts = [f"echo {i}: {last_user_text(body)}" for i in range(body.get("n", 1))]
    return completion(*texts)


class FakeServer:
    """A real HTTP server on 127.0.0.1 whose answers come from `behave(request_number, body)`.

    `behave` returns (status, headers, body), or None to close the connection without an answer.
    """

    def __init__(self, behave: Behaviour, port: int = 0):
        self.behave = behave
        self.bodies: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.release = threading.Event()  # set at the end: handlers that hang stop hanging
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with fake.lock:
                    fake.bodies.append(json.loads(raw))
                    fake.headers.append(dict(self.headers))
                    number = len(fake.bodies)
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    answer = fake.behave(number, fake.bodies[-1])
                finally:
                    with fake.lock:
                        fake.in_flight -= 1
                if answer is None:
                    self.close_connection = True
                    return
                status, headers, data = answer
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout)
                    pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.closed = False
        self.close_lock = threading.Lock()

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def close(self) -> None:
        """Stop listening: later connections are refused."""
        with self.close_lock:
            if not self.closed:
                self.closed = True
                self.server.shutdown()
                self.server.server_close()

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.close()
        self.thread.join(timeout=5)

    @property
    def count(self) -> int:
        return len(self.bodies)


def engine_for(url: str, **fields: Any):
    options = {"backoff": 0.01, "max_backoff": 0.05, **fields.pop("options", {})}
    fields.setdefault("max_retries", 3)
    fields.setdefault("timeout", 5.0)
    return load_model(ModelSpec(type="llm", engine="openai", base_url=url, id="fake-model", options=options, **fields))


def test_requests_keep_their_order_under_bounded_concurrency():
    def slow_echo(n, body):
        time.sleep(random.uniform(0.0, 0.05))
        return echo(n, body)

    with FakeServer(slow_echo) as server:
        engine = engine_for(server.url, max_concurrency=4)
        prompts = [f"prompt number {i}" for i in range(16)]
        seen: list[int] = []
        out = engine.generate([GenerationRequest(_user(p)) for p in prompts], GenerationParams(), on_batch=seen.append)
    assert [r[0].text for r in out] == [f"echo 0: {p}" for p in prompts]
    assert sum(seen) == 16 and server.count == 16
    assert 1 < server.max_in_flight <= 4
    assert engine.describe()["served_model"] == "fake-model"


def test_request_body_carries_decoding_parameters_image_and_api_key(monkeypatch):
    monkeypatch.setenv("CIRKIT_TEST_KEY", "sk-test-123")
    with FakeServer(echo) as server:
        engine = engine_for(server.url, api_key_env="CIRKIT_TEST_KEY", options={"extra_body": {"top_k": 20}})
        params = GenerationParams(max_new_tokens=7, temperature=0.7, top_p=0.9, n=2, seed=5)
        image = Image.new("RGB", (20, 10), (10, 200, 30))
        messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Describe the image."}]
        out = engine.generate([GenerationRequest(messages, image=image)], params)
    assert [g.text for g in out[0]] == ["echo 0: Describe the image.", "echo 1: Describe the image."]
    assert server.count == 1  # the server honours n: one request for both samples
    body = server.bodies[0]
    assert body["model"] == "fake-model" and body["n"] == 2 and body["seed"] == 5
    assert body["temperature"] == 0.7 and body["top_p"] == 0.9 and body["max_tokens"] == 7 and body["top_k"] == 20
    assert server.headers[0]["Authorization"] == "Bearer sk-test-123"
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    parts = body["messages"][1]["content"]
    assert [p["type"] for p in parts] == ["image_url", "text"]
    url = parts[0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.size == (20, 10) and decoded.convert("RGB").getpixel((3, 3)) == (10, 200, 30)


def test_first_token_logprobs_and_several_images_per_prompt():
    def behave(n, body):
        status, headers, raw = completion("Yes")
        answer = json.loads(raw)
        top = [{"token": " Yes", "logprob": -0.1}, {"token": "yes", "logprob": -2.0}, {"token": "No", "logprob": -3.0}]
        answer["choices"][0]["logprobs"] = {"content": [{"token": " Yes", "logprob": -0.1, "top_logprobs": top}]}
        return status, headers, json.dumps(answer).encode()

    images = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    with FakeServer(behave) as server:
        engine = engine_for(server.url)
        request = GenerationRequest(_user("Same?"), image=images[0], more_images=[images[1]])
        (answer,) = engine.generate([request], GenerationParams(max_new_tokens=1), logprobs_of=("yes", "no"))
        engine.generate([GenerationRequest(_user("Same?"))], GenerationParams(max_new_tokens=1))
    body = server.bodies[0]
    assert body["logprobs"] is True and body["top_logprobs"] == 20
    assert "logprobs" not in server.bodies[1]  # asked for only when wanted
    assert [p["type"] for p in body["messages"][0]["content"]] == ["image_url", "image_url", "text"]
    # spacing and case variants of a word are summed
    assert answer[0].logprobs["yes"] == pytest.approx(math.log(math.exp(-0.1) + math.exp(-2.0)))
    assert answer[0].logprobs["no"] == pytest.approx(-3.0)


def test_jpeg_images_and_finish_reasons():
    answers = {1: ("length", "cut"), 2: ("content_filter", "filtered")}

    def behave(n, body):
        finish, text = answers[n]
        return completion(text, finish=finish)

    with FakeServer(behave) as server:
        engine = engine_for(server.url, max_concurrency=1, options={"image_format": "jpeg"})
        image = Image.new("RGB", (16, 16), (255, 0, 0))
        out = engine.generate([GenerationRequest(_user("a"), image=image), GenerationRequest(_user("b"))], GenerationParams())
    assert [(r[0].text, r[0].finish_reason) for r in out] == [("cut", "length"), ("filtered", "stop")]
    assert server.bodies[0]["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert isinstance(server.bodies[1]["messages"][0]["content"], str)


def test_retries_on_503_then_succeeds():
    def behave(n, body):
        if n <= 2:
            return 503, {"Content-Type": "application/json"}, b'{"error": {"message": "overloaded"}}'
        return echo(n, body)

    with FakeServer(behave) as server:
        out = engine_for(server.url).generate([GenerationRequest(_user("hello"))], GenerationParams())
    assert out[0][0].text == "echo 0: hello"
    assert server.count == 3


def test_429_retry_after_is_honoured():
    def behave(n, body):
        if n == 1:
            return 429, {"Retry-After": "1"}, b'{"error": {"message": "slow down"}}'
        return echo(n, body)

    with FakeServer(behave) as server:
        engine = engine_for(server.url)  # backoff 0.01s: only Retry-After can make it wait a second
        start = time.monotonic()
        out = engine.generate([GenerationRequest(_user("hi"))], GenerationParams())
        waited = time.monotonic() - start
    assert out[0][0].text == "echo 0: hi" and server.count == 2
    assert 0.9 <= waited < 5


def test_a_server_that_never_answers_times_out_after_max_retries():
    with FakeServer(lambda n, body: server.release.wait(5) and None) as server:
        engine = engine_for(server.url, timeout=0.3, max_retries=2)
        start = time.monotonic()
        with pytest.raises(CirkitError, match=r"did not answer within 0.3s.*3 attempts"):
            engine.generate([GenerationRequest(_user("hi"))], GenerationParams())
        assert time.monotonic() - start < 4
        assert server.count == 3


def test_unreachable_server_names_the_url():
    url = f"http://127.0.0.1:{_free_port()}/v1"
    engine = engine_for(url, max_retries=1)
    with pytest.raises(CirkitError, match=f"cannot reach the server at {url}") as info:
        engine.generate([GenerationRequest(_user("hi"))], GenerationParams())
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "answer",
    [
        (200, {"Content-Type": "text/html"}, b"<html>I am a login page</html>"),
        (200, {"Content-Type": "application/json"}, b'{"result": "not a chat completion"}'),
        (200, {"Content-Type": "application/json"}, b'{"choices": []}'),
    ],
)
def test_garbage_answers_are_one_clear_error(answer):
    with FakeServer(lambda n, body: answer) as server:
        with pytest.raises(CirkitError, match="answered garbage"):
            engine_for(server.url).generate([GenerationRequest(_user("hi"))], GenerationParams())
        assert server.count == 1  # not retried


def test_4xx_carries_the_servers_message_and_is_not_retried():
    answer = (404, {"Content-Type": "application/json"}, b'{"error": {"message": "The model `nope` does not exist."}}')
    with FakeServer(lambda n, body: answer) as server:
        with pytest.raises(CirkitError, match=r"HTTP 404: The model `nope` does not exist\.") as info:
            engine_for(server.url).generate([GenerationRequest(_user("hi"))], GenerationParams())
        assert server.count == 1
    assert server.url in str(info.value)


def test_missing_api_key_variable_is_named(monkeypatch):
    monkeypatch.delenv("CIRKIT_MISSING_KEY", raising=False)
    with pytest.raises(CirkitError, match="CIRKIT_MISSING_KEY"):
        load_model(ModelSpec(type="llm", engine="openai", base_url="http://127.0.0.1:9/v1", id="m", api_key_env="CIRKIT_MISSING_KEY"))


def test_beam_search_is_refused():
    engine = engine_for("http://127.0.0.1:9/v1")
    with pytest.raises(CirkitError, match="num_beams"):
        engine.generate([GenerationRequest(_user("hi"))], GenerationParams(num_beams=3))


@pytest.mark.parametrize("concurrency", [1, 3])
def test_a_server_dying_mid_batch_keeps_the_answers_already_given(concurrency):
    from cirkit.errors import PartialGenerationError

    answered = 3

    def behave(n, body):
        if n <= answered:
            return echo(n, body)
        threading.Thread(target=server.close, daemon=True).start()  # stop listening
        return None  # and hang up on this one

    with FakeServer(behave) as server:
        engine = engine_for(server.url, max_concurrency=concurrency, max_retries=2)
        prompts = [f"p{i}" for i in range(8)]
        seen: list[int] = []
        start = time.monotonic()
        with pytest.raises(PartialGenerationError) as info:
            engine.generate([GenerationRequest(_user(p)) for p in prompts], GenerationParams(), on_batch=seen.append)
        assert time.monotonic() - start < 10
    error = info.value
    assert isinstance(error, CirkitError) and error.completed == answered and sum(seen) == answered
    assert len(error.results) == len(prompts)
    for prompt, result in zip(prompts, error.results):
        assert result is None or [g.text for g in result] == [f"echo 0: {prompt}"]
    if concurrency == 1:
        assert [r is not None for r in error.results] == [True] * answered + [False] * (len(prompts) - answered)
    assert f"{answered} of {len(prompts)} requests answered" in str(error)


# ---------------------------------------------------------------------------------------------------
# LangChain chat models
# ---------------------------------------------------------------------------------------------------

from langchain_core.language_models import BaseChatModel  # noqa: E402
from langchain_core.messages import AIMessage  # noqa: E402
from langchain_core.outputs import ChatGeneration, ChatResult  # noqa: E402


class RecordingChatModel(BaseChatModel):
    """Answers "<temperature>|<max_tokens>|<seed>|<last user text>" and records every conversation."""

    temperature: float = 0.5
    max_tokens: int | None = None
    seed: int | None = None
    fail_on: str | None = None
    calls: ClassVar[list] = []

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        RecordingChatModel.calls.append(messages)
        text = messages[-1].text
        if self.fail_on and self.fail_on in text:
            raise ValueError(f"cannot answer {text!r}")
        answer = f"{self.temperature}|{self.max_tokens}|{self.seed}|{text}"
        message = AIMessage(content=answer, response_metadata={"finish_reason": "length" if "long" in text else "stop"})
        return ChatResult(generations=[ChatGeneration(message=message)])

    @property
    def _llm_type(self) -> str:
        return "recording"


def _langchain(class_path: str, **fields: Any):
    return load_model(ModelSpec(type="llm", engine="langchain", class_path=class_path, **fields))


def test_langchain_outputs_keep_request_order():
    engine = _langchain("langchain_core.language_models.fake_chat_models:ParrotFakeChatModel", max_concurrency=4)
    prompts = [f"prompt {i}" for i in range(10)]
    seen: list[int] = []
    out = engine.generate([GenerationRequest(_user(p)) for p in prompts], GenerationParams(batch_size=3), on_batch=seen.append)
    assert [r[0].text for r in out] == prompts and sum(seen) == 10
    assert engine.describe()["engine"] == "langchain"


def test_langchain_n_samples_are_rounds_over_the_requests():
    responses = ["a", "b", "c", "d", "e", "f"]
    engine = _langchain(
        "langchain_core.language_models.fake_chat_models.FakeListChatModel",
        options={"responses": responses},
        max_concurrency=1,
    )
    out = engine.generate([GenerationRequest(_user(p)) for p in "xyz"], GenerationParams(n=2, temperature=1.0))
    assert [[g.text for g in r] for r in out] == [["a", "d"], ["b", "e"], ["c", "f"]]
    assert all(g.finish_reason == "stop" for r in out for g in r)
    assert engine.describe()["params"] == {"responses": responses}


def test_langchain_messages_images_and_decoding_fields():
    from langchain_core.messages import HumanMessage, SystemMessage

    RecordingChatModel.calls.clear()
    engine = _langchain(f"{__name__}:RecordingChatModel", options={"temperature": 0.1})
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "a long one"},
    ]
    image = Image.new("RGB", (12, 8), (1, 2, 3))
    params = GenerationParams(max_new_tokens=9, temperature=0.8, n=2, seed=4)
    out = engine.generate([GenerationRequest(messages, image=image)], params)
    assert [(g.text, g.finish_reason) for g in out[0]] == [("0.8|9|4|a long one", "length"), ("0.8|9|5|a long one", "length")]
    sent = RecordingChatModel.calls[0]
    assert [type(m).__name__ for m in sent] == ["SystemMessage", "HumanMessage", "AIMessage", "HumanMessage"]
    assert isinstance(sent[0], SystemMessage) and sent[0].content == "be brief"
    assert isinstance(sent[1], HumanMessage) and sent[1].text == "first"
    image_part, text_part = sent[1].content
    assert image_part["type"] == "image_url" and image_part["image_url"]["url"].startswith("data:image/png;base64,")
    assert text_part == {"type": "text", "text": "first"}
    assert sent[3].content == "a long one"
    assert engine.model.temperature == 0.1  # the step's values go to copies, the configured model is unchanged


def test_langchain_failure_keeps_the_answers_already_given():
    from cirkit.errors import PartialGenerationError

    engine = _langchain(f"{__name__}:RecordingChatModel", options={"fail_on": "bad"}, max_concurrency=1)
    prompts = ["ok 1", "ok 2", "ok 3", "bad 4", "ok 5"]
    with pytest.raises(PartialGenerationError, match="cannot answer 'bad 4'") as info:
        engine.generate([GenerationRequest(_user(p)) for p in prompts], GenerationParams(batch_size=1))
    assert [r is not None for r in info.value.results] == [True, True, True, False, False]
    with pytest.raises(CirkitError, match="cannot answer") as info:
        engine.generate([GenerationRequest(_user("bad"))], GenerationParams())
    assert not isinstance(info.value, PartialGenerationError)


@pytest.mark.parametrize(
    "class_path, message",
    [
        ("collections:OrderedDict", "not a LangChain chat model"),
        ("no_such_package_xyz.models:Chat", "cannot import no_such_package_xyz.models"),
        ("langchain_core.language_models:NoSuchModel", "has no 'NoSuchModel'"),
    ],
)
def test_langchain_bad_class_paths(class_path, message):
    with pytest.raises(CirkitError, match=message):
        _langchain(class_path)


def test_langchain_bad_options_and_beams():
    with pytest.raises(CirkitError, match="cannot create"):
        _langchain("langchain_core.language_models.fake_chat_models:FakeListChatModel", options={"responses": 3})
    engine = _langchain("langchain_core.language_models.fake_chat_models:ParrotFakeChatModel")
    with pytest.raises(CirkitError, match="num_beams"):
        engine.generate([GenerationRequest(_user("x"))], GenerationParams(num_beams=2))


# ---------------------------------------------------------------------------------------------------
# vLLM (GPU only)
# ---------------------------------------------------------------------------------------------------


def test_vllm_engine_without_vllm_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    with pytest.raises(CirkitError, match=r"pip install cirkit\[vllm\]"):
        load_model(ModelSpec(type="llm", engine="vllm", id="some/model"))


def _vllm_gpu() -> bool:
    import importlib.util

    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


needs_vllm_gpu = pytest.mark.skipif(not _vllm_gpu(), reason="needs a CUDA GPU and vllm (pip install cirkit[vllm])")


VLLM_OPTIONS = {"enforce_eager": True, "gpu_memory_utilization": 0.2, "max_model_len": 512, "max_num_seqs": 8}


@pytest.fixture(scope="module")
def vllm_llm(tiny_models):
    return load_model(ModelSpec(type="llm", engine="vllm", id=str(tiny_models.llm), dtype="float32", options=VLLM_OPTIONS))


@pytest.mark.gpu
@needs_vllm_gpu
def test_vllm_greedy_generation_keeps_order(vllm_llm, tiny_models):
    prompts = ["a red dress", "a small blue circle on a white background", "make it green"]
    params = GenerationParams(max_new_tokens=6)
    seen: list[int] = []
    out = vllm_llm.generate([GenerationRequest(_user(p)) for p in prompts], params, on_batch=seen.append)
    single = [vllm_llm.generate([GenerationRequest(_user(p))], params)[0] for p in prompts]
    assert [[g.text for g in r] for r in out] == [[g.text for g in r] for r in single]
    assert all(r[0].text and r[0].finish_reason == "length" for r in out) and sum(seen) == 3
    info = vllm_llm.describe()
    assert info["engine"] == "vllm" and info["model"] == str(tiny_models.llm)


@pytest.mark.gpu
@needs_vllm_gpu
def test_vllm_samples_and_refuses_beams(vllm_llm):
    params = GenerationParams(max_new_tokens=6, n=3, temperature=1.0, seed=3)
    out = vllm_llm.generate([GenerationRequest(_user("a red dress"))], params)
    assert len(out[0]) == 3
    assert [g.text for g in vllm_llm.generate([GenerationRequest(_user("a red dress"))], params)[0]] == [g.text for g in out[0]]
    with pytest.raises(CirkitError, match="num_beams"):
        vllm_llm.generate([GenerationRequest(_user("x"))], GenerationParams(num_beams=2))


@pytest.mark.gpu
@needs_vllm_gpu
def test_vllm_captions_images(tiny_models):
    engine = load_model(
        ModelSpec(type="vlm", engine="vllm", id=str(tiny_models.qwen2vl), dtype="float32", options=VLLM_OPTIONS)
    )
    images = [Image.new("RGB", (64, 48), (200, 30, 30)), Image.new("RGB", (30, 30), (20, 40, 220))]
    out = engine.generate(
        [GenerationRequest(_user("Describe the image."), image=im) for im in images], GenerationParams(max_new_tokens=5)
    )
    assert len(out) == 2 and all(r[0].text for r in out)


def test_a_pipeline_keeps_the_queries_answered_before_the_server_went_away(tmp_path, tiny_models, gallery, gallery_index):
    """The rewrite server dies mid-batch: answered queries are stored, the rest fail and resume later."""
    from conftest import write_pipeline

    from cirkit.api import query_many
    from cirkit.pipelines.runner import Query

    def dying(n, body):
        if n <= 2:
            return completion(f"Edited Description: answer {n}")
        threading.Thread(target=server.close, daemon=True).start()
        return None

    queries = [Query(gallery / f"img{i:04d}.jpg", f"make it shade {i}", f"q{i}") for i in (1, 2, 4, 5)]
    with FakeServer(dying) as server:
        port = server.port
        pipeline = write_pipeline(tmp_path / "remote.yaml", tiny_models)
        remote = (
            f'{{type: llm, engine: openai, base_url: "{server.url}", id: fake-model, max_concurrency: 1, '
            f"max_retries: 1, timeout: 5, options: {{backoff: 0.01, max_backoff: 0.02}}}}"
        )
        pipeline.write_text(pipeline.read_text().replace(f'{{type: llm, id: "{tiny_models.llm}"}}', remote))
        runs = query_many(queries, gallery_index, pipeline=pipeline, data_dir=tmp_path)
    assert [r["status"] for r in runs] == ["ok", "ok", "failed", "failed"]
    assert {r["steps"][1]["outputs"]["description"] for r in runs[:2]} == {"answer 1", "answer 2"}
    assert "step 'rewrite' failed: no answer:" in runs[2]["error"]
    assert runs[2]["steps"][0]["status"] == "ok"  # its caption is kept

    with FakeServer(lambda n, body: completion("Edited Description: later answer"), port=port) as again:
        resumed = query_many(queries, gallery_index, pipeline=pipeline, data_dir=tmp_path)
        assert again.count == 2  # only the two unanswered queries were sent
    assert [r["status"] for r in resumed] == ["ok"] * 4
    assert [r["steps"][1]["origin"] for r in resumed] == ["cache", "cache", "ran", "ran"]
