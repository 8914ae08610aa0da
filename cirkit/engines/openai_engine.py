"""Any OpenAI-compatible chat-completions server, over HTTP.

Works with `vllm serve`, `transformers serve`, Ollama, llama.cpp's server and hosted APIs. The model
entry names the server and the served model:

    models:
      llm:
        type: llm
        engine: openai
        base_url: http://127.0.0.1:8000/v1      # the URL that `/chat/completions` is appended to
        id: Qwen/Qwen2.5-7B-Instruct            # the model name the server serves
        api_key_env: OPENAI_API_KEY             # optional: the environment variable holding the key
        timeout: 120                            # seconds per HTTP request
        max_concurrency: 8                      # requests in flight at once
        max_retries: 5                          # retries on 429, 5xx, timeouts, lost connections
        options: {image_format: jpeg, extra_body: {top_k: 20}}

`options` (all optional):
  extra_body      fields merged into every request body (server-specific knobs, e.g. vLLM's `top_k`,
                  or `transformers serve`'s `generation_config`)
  headers         extra HTTP headers
  image_format    "png" (lossless, the default) or "jpeg" (smaller uploads)
  jpeg_quality    1..100, default 95
  max_tokens_field  the name of the length limit field: "max_tokens" (default) or "max_completion_tokens"
  backoff         first retry delay in seconds (default 1.0); it doubles at every retry, with jitter
  max_backoff     the longest delay between two retries in seconds (default 30)

Decoding: `temperature`, `top_p`, `seed` and the token limit are sent with every request, and `stop`
when the step sets stop strings (the answer is also cut at the first of them, for servers that ignore it). `n` samples
are asked for with the `n` field; a server that answers fewer choices (`transformers serve` ignores
`n`) is asked again, once per missing sample, with seeds `seed + i`; the engine remembers that and
asks for one sample per request from then on. The chat-completions API has no beam search, so
`num_beams > 1` is refused with a CirkitError (use num_beams: 1, or temperature > 0 with n samples).
`batch_size` is not used: `max_concurrency` bounds the requests in flight.

Failures: every user-facing problem raises `CirkitError` on one line: a server that cannot be
reached (naming the URL), one that answers garbage, an HTTP 4xx error (with the server's message), or
retries exhausted. When some requests of a batch were answered before the failure,
`generate` raises `PartialGenerationError` instead: a CirkitError whose `.results` holds, in request
order, the generations obtained (a list of `n` Generations) and `None` for the requests that failed or
were never sent, so the caller can keep what was paid for and retry the rest.
"""

from __future__ import annotations

import base64
import email.utils
import io
import json
import os
import random
import threading
import time
import math
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from cirkit.engines.base import Engine, Generation, GenerationParams, GenerationRequest, count_tokens, cut_at_stop, with_image_parts
from cirkit.errors import CirkitError, PartialGenerationError, one_line

RETRY_STATUS = {408, 409, 425, 429}  # plus every 5xx
TOP_LOGPROBS = 20  # the most alternatives the chat-completions API returns per token
MAX_RETRY_AFTER = 300.0  # seconds: a longer Retry-After is cut to this
_OPTIONS = {"extra_body", "headers", "image_format", "jpeg_quality", "max_tokens_field", "backoff", "max_backoff"}


class _Cancelled(Exception):
    """Another request of the batch failed: this one stops without retrying."""


def image_data_uri(image, fmt: str = "png", quality: int = 95) -> str:
    """A PIL image as a `data:image/...;base64,...` URI (PNG, or JPEG at `quality`)."""
    buffer = io.BytesIO()
    if fmt == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=quality)
        mime = "image/jpeg"
    else:
        image.save(buffer, format="PNG")
        mime = "image/png"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def openai_messages(request: GenerationRequest, fmt: str = "png", quality: int = 95) -> list[dict[str, Any]]:
    """Chat-completions messages; the images go before the text of the first user message."""
    parts = [{"type": "image_url", "image_url": {"url": image_data_uri(image, fmt, quality)}} for image in request.images]
    return with_image_parts(request.messages, parts)


def first_token_logprobs(logprobs: Any) -> dict[str, float] | None:
    """The first answer token's top alternatives from a choice's `logprobs`, by token stripped and
    lower-cased (variants summed): where an asked-for word is among them, its log-probability.
    None when the server sent none."""
    try:
        found: dict[str, list[float]] = {}
        for alt in logprobs["content"][0]["top_logprobs"]:
            token = str(alt["token"]).strip().lower()
            if token:
                found.setdefault(token, []).append(float(alt["logprob"]))
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return {token: math.log(sum(math.exp(v) for v in values)) for token, values in found.items()}


def finish_reason(value: Any) -> str:
    """"length" when the answer was cut at the token limit, "stop" for everything else."""
    return "length" if str(value or "").lower() in ("length", "max_tokens", "max_output_tokens") else "stop"


class OpenAIEngine(Engine):
    def __init__(self, spec):
        self.spec = spec
        self.base_url = (spec.base_url or "").rstrip("/")
        self.model = spec.id
        if not self.base_url.startswith(("http://", "https://")):
            raise CirkitError(f"openai engine: base_url must start with http:// or https://, got '{spec.base_url}'")
        self.url = f"{self.base_url}/chat/completions"
        options = dict(spec.options or {})
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise CirkitError(
                f"openai engine: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(_OPTIONS))})"
            )
        self.extra_body = dict(options.get("extra_body") or {})
        self.image_format = str(options.get("image_format", "png")).lower().replace("jpg", "jpeg")
        if self.image_format not in ("png", "jpeg"):
            raise CirkitError(f"openai engine: image_format must be png or jpeg, got '{options['image_format']}'")
        self.jpeg_quality = int(options.get("jpeg_quality", 95))
        self.max_tokens_field = str(options.get("max_tokens_field", "max_tokens"))
        self.backoff = float(options.get("backoff", 1.0))
        self.max_backoff = float(options.get("max_backoff", 30.0))
        self.headers = {"Content-Type": "application/json", **{k: str(v) for k, v in (options.get("headers") or {}).items()}}
        if spec.api_key_env:
            key = os.environ.get(spec.api_key_env)
            if not key:
                raise CirkitError(
                    f"openai engine: the API key variable {spec.api_key_env} is not set (export {spec.api_key_env}=...)"
                )
            self.headers["Authorization"] = f"Bearer {key}"
        self.timeout = float(spec.timeout)
        self.max_concurrency = int(spec.max_concurrency)
        self.max_retries = int(spec.max_retries)
        self.served_model: str | None = None  # the model id the server reports in its answers
        self._n_native: bool | None = None  # does the server honour `n`? None: not known yet
        self._client = None
        self._client_lock = threading.Lock()

    # ----- public -----

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "engine": "openai",
            "base_url": self.base_url,
            "model": self.model,
            "revision": self.spec.revision,
        }
        if self.served_model:
            info["served_model"] = self.served_model
        return info

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def generate(
        self,
        requests: list[GenerationRequest],
        params: GenerationParams,
        on_batch: Callable[[int], None] | None = None,
        logprobs_of: Sequence[str] = (),
    ) -> list[list[Generation]]:
        """`params.n` generations per request, in request order; `on_batch(1)` as each request is answered.

        Raises PartialGenerationError (with the answers so far) when the batch fails part-way.
        """
        if params.num_beams > 1:
            raise CirkitError(
                f"the openai engine cannot do beam search (num_beams={params.num_beams}): "
                "set num_beams: 1 in the step's params (greedy), or temperature > 0 with n samples"
            )
        if not requests:
            return []
        bodies = [self._body(r, params, logprobs_of) for r in requests]
        results: list[list[Generation] | None] = [None] * len(requests)
        first = 0
        try:
            if params.n > 1 and self._n_native is None:
                # Learn on the first request whether the server honours `n`, then send the rest.
                results[0] = self._sample(bodies[0], params, threading.Event())
                first = 1
                if on_batch:
                    on_batch(1)
            self._run_all(bodies, params, results, first, on_batch)
        finally:
            count_tokens(results)  # what the answered requests used, even when others failed
        return results  # type: ignore[return-value]

    # ----- requests -----

    def _body(self, request: GenerationRequest, params: GenerationParams, logprobs_of: Sequence[str]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": openai_messages(request, self.image_format, self.jpeg_quality),
            "temperature": params.temperature,
            "top_p": params.top_p,
            self.max_tokens_field: params.max_new_tokens,
            "seed": params.seed,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if logprobs_of:
            body.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
        body.update(self.extra_body)
        return body

    def _run_all(self, bodies, params, results, first, on_batch) -> None:
        stop = threading.Event()
        errors: list[tuple[int, str]] = []
        pending: dict[Future, int] = {}
        todo = iter(range(first, len(bodies)))
        workers = max(1, min(self.max_concurrency, len(bodies) - first))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cirkit-openai")
        try:
            # Submit at most `workers` at a time: a failure stops what has not been sent yet.
            for i in todo:
                pending[pool.submit(self._sample, bodies[i], params, stop)] = i
                if len(pending) >= workers:
                    break
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    i = pending.pop(future)
                    try:
                        results[i] = future.result()
                    except _Cancelled:
                        continue
                    except CirkitError as exc:
                        errors.append((i, str(exc)))
                        stop.set()
                        continue
                    if on_batch:
                        on_batch(1)
                    if not stop.is_set():
                        nxt = next(todo, None)
                        if nxt is not None:
                            pending[pool.submit(self._sample, bodies[nxt], params, stop)] = nxt
        except BaseException:
            stop.set()
            raise
        finally:
            pool.shutdown(wait=not stop.is_set() or not pending, cancel_futures=True)
        if errors:
            message = errors[0][1]
            if any(r is not None for r in results):
                done_count = sum(r is not None for r in results)
                raise PartialGenerationError(f"{message} ({done_count} of {len(results)} requests answered)", results)
            raise CirkitError(message)

    def _sample(self, body: dict[str, Any], params: GenerationParams, stop: threading.Event) -> list[Generation]:
        """`params.n` generations for one request: one call with `n`, or n calls with seeds seed + i."""
        n = params.n
        if n == 1:
            return self._post(body, stop)[:1]
        if self._n_native is False:
            return [self._post({**body, "seed": params.seed + i}, stop)[0] for i in range(n)]
        generations = self._post({**body, "n": n}, stop)
        if self._n_native is None:
            self._n_native = len(generations) >= n
        for i in range(len(generations), n):
            generations.append(self._post({**body, "seed": params.seed + i}, stop)[0])
        return generations[:n]

    def _client_(self):
        import httpx

        with self._client_lock:
            if self._client is None:
                limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
                self._client = httpx.Client(timeout=httpx.Timeout(self.timeout), limits=limits)
            return self._client

    def _post(self, body: dict[str, Any], stop: threading.Event) -> list[Generation]:
        """One chat completion, retried on 429, 5xx, timeouts and lost connections; its choices."""
        import httpx

        client = self._client_()
        payload = json.dumps(body).encode()
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            if stop.is_set():
                raise _Cancelled()
            retry_after = None
            try:
                response = client.post(self.url, content=payload, headers=self.headers)
            except httpx.ConnectTimeout:
                problem = f"cannot reach the server at {self.base_url} (connection timed out after {self.timeout:g}s)"
            except httpx.ConnectError as exc:
                problem = f"cannot reach the server at {self.base_url} ({_reason(exc)})"
            except httpx.TimeoutException:
                problem = f"the server at {self.base_url} did not answer within {self.timeout:g}s"
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.CloseError) as exc:
                problem = f"lost the connection to the server at {self.base_url} ({_reason(exc)})"
            except httpx.UnsupportedProtocol as exc:
                raise CirkitError(f"openai engine: bad base_url {self.base_url}: {one_line(exc)}") from None
            except httpx.TransportError as exc:
                problem = f"cannot reach the server at {self.base_url} ({_reason(exc)})"
            else:
                status = response.status_code
                if status < 400:
                    return self._parse(response, body.get("stop") or ())
                message = _server_message(response)
                if status in RETRY_STATUS or status >= 500:
                    problem = f"the server at {self.base_url} answered HTTP {status}: {message}"
                    retry_after = _retry_after(response.headers.get("retry-after"))
                else:
                    raise CirkitError(f"the server at {self.base_url} refused the request: HTTP {status}: {message}{_hint(status, self)}")
            if attempt + 1 < attempts:
                delay = retry_after if retry_after is not None else self._backoff(attempt)
                if stop.wait(delay):
                    raise _Cancelled()
        raise CirkitError(f"{problem} (gave up after {attempts} attempt{'s' if attempts > 1 else ''})")

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: backoff * 2**attempt, scaled by 0.5..1.5, at most max_backoff."""
        return min(self.max_backoff, self.backoff * (2**attempt)) * random.uniform(0.5, 1.5)

    def _parse(self, response, stop: Sequence[str] = ()) -> list[Generation]:
        text = response.text
        try:
            data = json.loads(text)
        except ValueError:
            raise CirkitError(
                f"the server at {self.base_url} answered garbage (not JSON): {one_line(text[:120]) or '(empty body)'}"
            ) from None
        try:
            choices = data["choices"]
            if not isinstance(choices, list) or not choices:
                raise TypeError("no choices")
            ordered = sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
            generations = []
            for choice in ordered:
                content = choice["message"]["content"]
                if content is None:
                    content = ""
                if isinstance(content, list):  # content parts
                    content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
                if not isinstance(content, str):
                    raise TypeError("content is not text")
                content, cut = cut_at_stop(content, stop)
                generations.append(
                    Generation(
                        text=content.strip(),
                        finish_reason="stop" if cut else finish_reason(choice.get("finish_reason")),
                        logprobs=first_token_logprobs(choice.get("logprobs")),
                    )
                )
        except (KeyError, TypeError, AttributeError, IndexError):
            raise CirkitError(
                f"the server at {self.base_url} answered garbage (not a chat completion): {one_line(text[:120])}"
            ) from None
        _add_usage(generations, data.get("usage"))
        if isinstance(data.get("model"), str):
            self.served_model = data["model"]
        return generations


def _add_usage(generations: list[Generation], usage: Any) -> None:
    """The response's `usage` on its choices: the prompt with the first, the completion tokens shared
    out (the API counts them for all choices together)."""
    if not isinstance(usage, dict):
        return
    read, written = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if isinstance(read, int):
        for i, gen in enumerate(generations):
            gen.input_tokens = read if i == 0 else 0
    if isinstance(written, int):
        share, extra = divmod(written, len(generations))
        for i, gen in enumerate(generations):
            gen.output_tokens = share + (1 if i < extra else 0)


def _reason(exc: BaseException) -> str:
    return one_line(exc) or type(exc).__name__


def _server_message(response) -> str:
    """The error message a server put in its answer: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, or text."""
    text = response.text
    try:
        data = json.loads(text)
    except ValueError:
        return one_line(text[:200]) or response.reason_phrase or "(empty body)"
    if isinstance(data, dict):
        for key in ("error", "detail", "message"):
            value = data.get(key)
            if isinstance(value, dict):
                value = value.get("message") or value.get("detail") or json.dumps(value)
            if value:
                return one_line(value if isinstance(value, str) else json.dumps(value))[:300]
    return one_line(text[:200])


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _hint(status: int, engine: OpenAIEngine) -> str:
    if status in (401, 403):
        where = f" (the key comes from {engine.spec.api_key_env})" if engine.spec.api_key_env else " (no api_key_env is set)"
        return where
    if status == 404:
        return f" (is base_url right, usually ending in /v1, and does the server serve model '{engine.model}'?)"
    return ""
