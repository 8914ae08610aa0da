"""Generation on a Ray cluster (`engine: ray`): a step's batch of requests becomes a Ray Dataset.

    models:
      captioner:
        type: vlm
        engine: ray
        id: Qwen/Qwen2-VL-2B-Instruct            # the served model name (http), or the model to load
        base_url: http://10.0.0.5:8000/v1        # processor http: the OpenAI-compatible server
        options:
          processor: http                        # http (default with base_url), vllm (default without), transformers
          address: ray://10.0.0.1:10001          # auto, HOST:6379 or ray://HOST:10001; default RAY_ADDRESS, else a local instance
          replicas: 4                            # Ray actors (http: clients; vllm: engines, one per GPU or per TP group)
          batch_size: 32                         # rows per Ray batch (default: the step's batch size, spread over the replicas)

Processors:
  http          each replica holds cirkit's own OpenAI-compatible client (the `openai` engine: retries,
                backoff, `n` samples, logprobs, stop strings) and sends its rows to `base_url`, or to
                `base_urls` in turn (replica i to `base_urls[i % len]`). `api_key_env`, `timeout`,
                `max_concurrency` (requests in flight per replica), `max_retries` and the openai
                engine's options (`extra_body`, `headers`, `image_format`, ...) apply as for `engine: openai`;
                the key is read here and handed to the replicas. Ray Data's own HTTP processor is not
                used: it needs aiohttp, which the `ray` extra does not install, and it fails a whole batch
                when one request fails instead of keeping the answered rows.
  vllm          `ray.data.llm` (vLLM replicas on GPU nodes): `vLLMEngineProcessorConfig(model_source=id,
                concurrency=replicas, engine_kwargs=...)`. `engine_kwargs` (e.g. tensor_parallel_size,
                max_model_len) go to vLLM, `accelerator_type` picks the GPU type. `n` samples are n rows with
                seeds seed + i. Needs `pip install 'ray[llm]'` (vLLM) on the GPU nodes.
  transformers  each replica loads the model in process with the transformers engine (on one GPU
                where the cluster has GPUs, `num_gpus: 0` to keep it on CPUs): CPU clusters, models
                vLLM does not run, and checks against a local run.

`num_cpus` (default 1) is what each replica reserves. Results come back in request order (an index
column). A failed row does not stop the others already on their way: answered rows are kept, and the
batch raises PartialGenerationError with them (as the openai engine does), so the step cache keeps
what was paid for and a re-run sends only the rest. A replica stops sending after its first failure.
A replica that dies (a lost node, an out-of-memory kill) ends the batch the same way: it is not
restarted; re-running the command is the recovery. Beam search is refused (chat APIs and vLLM's
chat have none): use num_beams: 1.

Each batch starts its replicas anew (the model is loaded once per batch): give steps large
batches (`--batch-size` of `cirkit eval`, the caption step's `batch_size` for gallery captioning).
Images travel inside the rows (pixels; PNG data URIs for vllm); model files must be at the same paths on every node.
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cirkit.engines.base import Engine, Generation, GenerationParams, GenerationRequest, cut_at_stop
from cirkit.engines.ray_cluster import (
    check_address, cirkit_message, cluster_gpus_cpus, connect, first_line, import_ray, no_restarts, quiet_driver,
    quiet_worker,
)
from cirkit.errors import CirkitError, PartialGenerationError, one_line

PROCESSORS = ("http", "vllm", "transformers")
_CLIENT_OPTIONS = {"extra_body", "headers", "image_format", "jpeg_quality", "max_tokens_field", "backoff", "max_backoff"}
_RAY_OPTIONS = {"processor", "address", "replicas", "batch_size", "base_urls", "num_cpus", "num_gpus",
                "engine_kwargs", "accelerator_type"}
FLAG = "options.address"  # where the address comes from, for error lines
NOT_SENT = "not sent: "


@dataclass
class RayOptions:
    processor: str
    address: str | None = None
    replicas: int | None = None
    batch_size: int | None = None
    base_urls: list[str] = field(default_factory=list)
    num_cpus: float = 1.0
    num_gpus: float | None = None
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    accelerator_type: str | None = None
    client: dict[str, Any] = field(default_factory=dict)  # the openai engine's options, for processor http


def ray_options(spec) -> RayOptions:
    """The `options` of an `engine: ray` model entry, checked; ValueError with one line otherwise."""
    options = dict(spec.options or {})
    unknown = sorted(set(options) - _RAY_OPTIONS - _CLIENT_OPTIONS)
    if unknown:
        raise ValueError(f"engine ray: unknown option(s) {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(_RAY_OPTIONS | _CLIENT_OPTIONS))})")
    base_urls = options.get("base_urls") or []
    if isinstance(base_urls, str):
        base_urls = [base_urls]
    if not isinstance(base_urls, list) or not all(isinstance(u, str) and u for u in base_urls):
        raise ValueError("engine ray: base_urls must be a list of URLs")
    processor = options.get("processor") or ("http" if spec.base_url or base_urls else "vllm")
    if processor not in PROCESSORS:
        raise ValueError(f"engine ray: processor must be one of {', '.join(PROCESSORS)}, got '{processor}'")
    if not spec.id:
        what = "the model name the server serves" if processor == "http" else "Hugging Face id or local directory"
        raise ValueError(f"engine ray: a {spec.type} model needs 'id' ({what})")
    urls = ([spec.base_url] if spec.base_url else []) + list(base_urls)
    if processor == "http":
        if not urls:
            raise ValueError("engine ray, processor http: needs 'base_url' (or options.base_urls) of an OpenAI-compatible server")
        bad = [u for u in urls if not u.startswith(("http://", "https://"))]
        if bad:
            raise ValueError(f"engine ray: base_url must start with http:// or https://, got '{bad[0]}'")
    else:
        if urls:
            raise ValueError(f"engine ray, processor {processor}: loads the model itself; base_url is for processor http")
        client = sorted(set(options) & _CLIENT_OPTIONS)
        if client:
            raise ValueError(f"engine ray, processor {processor}: {', '.join(client)} are options of processor http")
    address = options.get("address")
    if address is not None:
        if not isinstance(address, str) or not address.strip():
            raise ValueError("engine ray: address must be auto, HOST:PORT or ray://HOST:PORT")
        if address != "auto":
            try:
                check_address(address, FLAG)
            except CirkitError as exc:
                raise ValueError(str(exc)) from None
    ints = {}
    for key in ("replicas", "batch_size"):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"engine ray: {key} must be a whole number >= 1, got {value!r}")
        ints[key] = value
    for key in ("num_cpus", "num_gpus"):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ValueError(f"engine ray: {key} must be a number >= 0, got {value!r}")
    if options.get("num_gpus") and processor == "http":
        raise ValueError("engine ray, processor http: the replicas are clients and take no GPU (leave num_gpus out)")
    engine_kwargs = options.get("engine_kwargs") or {}
    if not isinstance(engine_kwargs, dict) or (engine_kwargs and processor != "vllm"):
        raise ValueError("engine ray: engine_kwargs is a mapping of vLLM engine arguments, for processor vllm")
    if options.get("accelerator_type") is not None and processor != "vllm":
        raise ValueError("engine ray: accelerator_type is an option of processor vllm")
    return RayOptions(
        processor=processor, address=address, replicas=ints["replicas"], batch_size=ints["batch_size"],
        base_urls=urls, num_cpus=float(options.get("num_cpus", 1.0)),
        num_gpus=None if options.get("num_gpus") is None else float(options["num_gpus"]),
        engine_kwargs=dict(engine_kwargs), accelerator_type=options.get("accelerator_type"),
        client={k: v for k, v in options.items() if k in _CLIENT_OPTIONS},
    )


# The Ray connection of this process, shared by every ray-engine model: (address asked for, started here)
_session: dict[str, Any] = {}
_unreachable: dict[str, str] = {}  # address -> why it could not be joined, in this process


class RayEngine(Engine):
    def __init__(self, spec):
        self.spec = spec
        try:
            self.options = ray_options(spec)
        except ValueError as exc:
            raise CirkitError(one_line(exc)) from None
        self.api_key = None
        if self.options.processor == "http" and spec.api_key_env:
            self.api_key = os.environ.get(spec.api_key_env)
            if not self.api_key:
                raise CirkitError(
                    f"ray engine: the API key variable {spec.api_key_env} is not set (export {spec.api_key_env}=...)"
                )
        self.address = self.options.address or os.environ.get("RAY_ADDRESS") or None
        self.served_model: str | None = None
        self.ray = import_ray()
        self._connect()

    def _connect(self) -> None:
        """Join the cluster (or start a local instance) once per process; fail in seconds on a dead address."""
        ray = self.ray
        if ray.is_initialized() and "address" in _session:
            asked = _session["address"]
            if self.address and asked != self.address:
                raise CirkitError(f"this process is already connected to Ray{f' at {asked}' if asked else ''}, not "
                                  f"{self.address}: every ray-engine model of a run uses the same cluster")
            return
        failed = _unreachable.get(self.address or "")
        if failed:
            raise CirkitError(failed)  # said once already: the following batches fail at once
        try:
            started = connect(ray, self.address, FLAG)
        except CirkitError as exc:
            _unreachable[self.address or ""] = str(exc)
            raise
        _session.update(address=self.address, started=started)

    def close(self) -> None:
        """Stop the local Ray instance this process started (a cluster is left running)."""
        if _session.get("started") and self.ray.is_initialized():
            self.ray.shutdown()
        _session.clear()

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "engine": "ray",
            "processor": self.options.processor,
            "model": self.spec.id,
            "revision": self.spec.revision,
            "address": self.address or "local",
        }
        if self.options.processor == "http":
            info["base_url"] = self.options.base_urls[0] if len(self.options.base_urls) == 1 else self.options.base_urls
        if self.served_model:
            info["served_model"] = self.served_model
        return info

    def generate(
        self,
        requests: list[GenerationRequest],
        params: GenerationParams,
        on_batch: Callable[[int], None] | None = None,
        logprobs_of: Sequence[str] = (),
    ) -> list[list[Generation]]:
        """`params.n` generations per request, in request order; `on_batch(1)` as each request comes back.

        Raises PartialGenerationError (with the answered requests) when rows failed or a replica died.
        """
        if params.num_beams > 1:
            raise CirkitError(
                f"the ray engine cannot do beam search (num_beams={params.num_beams}): "
                "set num_beams: 1 in the step's params (greedy), or temperature > 0 with n samples"
            )
        if not requests:
            return []
        if self.options.processor == "vllm":
            return self._generate_vllm(requests, params, on_batch, logprobs_of)
        return self._generate_replicas(requests, params, on_batch, logprobs_of)

    # ----- http and transformers: cirkit's own engines in Ray Data actors -----

    def _layout(self, count: int, params: GenerationParams) -> tuple[int, int, bool]:
        """(replicas, rows per Ray batch, whether replicas take a GPU)."""
        gpus, _ = cluster_gpus_cpus(self.ray)
        opts = self.options
        if opts.processor == "http":
            use_gpus = False
        else:
            use_gpus = opts.num_gpus > 0 if opts.num_gpus is not None else gpus >= 1
        replicas = opts.replicas or (max(1, int(gpus)) if use_gpus else 1)
        rows = opts.batch_size or max(1, min(params.batch_size, math.ceil(count / replicas)))
        return replicas, rows, use_gpus

    def _generate_replicas(self, requests, params, on_batch, logprobs_of) -> list[list[Generation]]:
        ray = self.ray
        count = len(requests)
        replicas, rows_per_batch, use_gpus = self._layout(count, params)
        blocks = math.ceil(count / rows_per_batch)
        servers = max(1, len(self.options.base_urls))
        rows = [{"index": i, "server": i % servers, "request": pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL)}
                for i, r in enumerate(requests)]
        _quiet_data(ray)
        source = ray.data.from_items(rows, override_num_blocks=blocks)
        num_gpus = (self.options.num_gpus or 1) if use_gpus else 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Ray >= 2.60 deprecates actor options passed as keywords
            dataset = source.map_batches(
                _Replica,
                batch_size=rows_per_batch,
                compute=ray.data.ActorPoolStrategy(size=min(replicas, blocks)),
                num_cpus=self.options.num_cpus,
                num_gpus=num_gpus,
                **no_restarts(source.map_batches),
                fn_constructor_kwargs={
                    "processor": self.options.processor,
                    "spec": self.spec,
                    "base_urls": self.options.base_urls,
                    "client": self.options.client,
                    "api_key": self.api_key,
                    "device": "cuda" if use_gpus else "cpu",
                    "params": params,
                    "logprobs_of": tuple(logprobs_of),
                },
            )
        results: list[list[Generation] | None] = [None] * count
        errors: dict[int, str] = {}
        failure = None
        iterator = iter(dataset.iter_rows())
        try:
            for row in iterator:
                i = int(row["index"])
                if row["error"]:
                    errors[i] = str(row["error"])
                    continue
                results[i] = pickle.loads(row["answer"])
                if row["served"]:
                    self.served_model = str(row["served"])
                if on_batch:
                    on_batch(1)
        except Exception as exc:
            failure = self._failure(exc)
        finally:
            close = getattr(iterator, "close", None)
            if close:
                close()
        return _finish(results, errors, failure)

    def _failure(self, exc: Exception) -> str:
        """A failure of the Ray execution (a replica that died or failed to start) as one line."""
        message = cirkit_message(exc)
        if message is not None:
            return message
        if not isinstance(exc, self.ray.exceptions.RayError):
            raise exc
        return f"generation on Ray failed: {first_line(exc)} (answered requests are kept: re-run to continue)"

    # ----- vllm: ray.data.llm -----

    def _generate_vllm(self, requests, params, on_batch, logprobs_of) -> list[list[Generation]]:  # pragma: no cover - GPU
        try:
            from ray.data.llm import build_processor, vLLMEngineProcessorConfig
        except ImportError as exc:
            raise CirkitError(f"processor vllm needs Ray's LLM extra and vLLM: pip install 'ray[llm]' ({one_line(exc)})") from None
        from cirkit.engines.openai_engine import TOP_LOGPROBS, openai_messages

        ray = self.ray
        gpus, _ = cluster_gpus_cpus(ray)
        kwargs = {"dtype": self.spec.dtype, **self.options.engine_kwargs}
        if self.spec.revision:
            kwargs.setdefault("revision", self.spec.revision)
        group = int(kwargs.get("tensor_parallel_size", 1)) * int(kwargs.get("pipeline_parallel_size", 1))
        replicas = self.options.replicas or max(1, int(gpus) // max(group, 1))
        samples = [(i, s) for i in range(len(requests)) for s in range(params.n)]
        rows_per_batch = self.options.batch_size or max(1, min(max(params.batch_size, 64), math.ceil(len(samples) / replicas)))
        has_images = any(r.images for r in requests)
        config = vLLMEngineProcessorConfig(
            model_source=self.spec.id, engine_kwargs=kwargs, concurrency=replicas, batch_size=rows_per_batch,
            accelerator_type=self.options.accelerator_type, should_continue_on_error=True,
            prepare_multimodal_stage=has_images,
        )
        sampling = {
            "temperature": params.temperature, "top_p": 1.0 if params.temperature == 0 else params.top_p,
            "max_tokens": params.max_new_tokens, "stop": list(params.stop) or None,
            "logprobs": TOP_LOGPROBS if logprobs_of else None,
        }
        rows = [{"index": i, "sample": s,
                 "request": pickle.dumps(openai_messages(requests[i]), protocol=pickle.HIGHEST_PROTOCOL)}
                for i, s in samples]

        def preprocess(row: dict[str, Any]) -> dict[str, Any]:
            return {"index": row["index"], "sample": row["sample"], "messages": pickle.loads(row["request"]),
                    "sampling_params": {**sampling, "seed": params.seed + int(row["sample"])}}

        def postprocess(row: dict[str, Any]) -> dict[str, Any]:
            top = []
            if row.get("logprobs"):
                top = [{"token": alt.get("decoded_token") or "", "logprob": alt.get("logprob")}
                       for alt in (row["logprobs"][0] or {}).values()]
            return {"index": row["index"], "sample": row["sample"], "text": row.get("generated_text") or "",
                    "tokens": int(row.get("num_generated_tokens") or 0), "top": pickle.dumps(top),
                    "error": str(row.get("__inference_error__") or "")}

        processor = build_processor(config, preprocess=preprocess, postprocess=postprocess)
        _quiet_data(ray)
        dataset = processor(ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / rows_per_batch)))
        texts: dict[tuple[int, int], Generation] = {}
        errors: dict[int, str] = {}
        failure = None
        try:
            for row in dataset.iter_rows():
                i, s = int(row["index"]), int(row["sample"])
                if row["error"]:
                    errors[i] = f"vllm on Ray ({self.spec.id}): {one_line(row['error'])}"
                    continue
                texts[(i, s)] = _vllm_generation(row, params, logprobs_of)
                if on_batch and all((i, k) in texts for k in range(params.n)):
                    on_batch(1)
        except Exception as exc:
            failure = self._failure(exc)
        results: list[list[Generation] | None] = [
            [texts[(i, s)] for s in range(params.n)] if all((i, s) in texts for s in range(params.n)) else None
            for i in range(len(requests))
        ]
        return _finish(results, errors, failure)


def _vllm_generation(row: dict[str, Any], params: GenerationParams, logprobs_of: Sequence[str]) -> Generation:  # pragma: no cover - GPU
    from cirkit.engines.openai_engine import first_token_logprobs

    text, cut = cut_at_stop(str(row["text"]), params.stop)
    top = pickle.loads(row["top"]) if logprobs_of else []
    return Generation(
        text=text.strip(),
        finish_reason="length" if int(row["tokens"]) >= params.max_new_tokens and not cut else "stop",
        logprobs=first_token_logprobs({"content": [{"top_logprobs": top}]}) if top else None,
    )


def _finish(results: list, errors: dict[int, str], failure: str | None) -> list[list[Generation]]:
    """The results in request order, or the failure: PartialGenerationError when some were answered."""
    missing = [i for i, r in enumerate(results) if r is None]
    if not missing:
        return results
    first = sorted(errors.items(), key=lambda item: (item[1].startswith(NOT_SENT), item[0]))
    message = failure or (first[0][1].removeprefix(NOT_SENT) if first else "the Ray execution ended without these rows")
    answered = len(results) - len(missing)
    if answered:
        raise PartialGenerationError(f"{message} ({answered} of {len(results)} requests answered)", results)
    raise CirkitError(message)


def _quiet_data(ray) -> None:
    quiet_driver()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


class _Replica:
    """A Ray actor holding one of cirkit's engines; one call answers one batch of rows."""

    def __init__(self, processor: str, spec: Any, base_urls: list[str], client: dict[str, Any], api_key: str | None,
                 device: str, params: GenerationParams, logprobs_of: tuple[str, ...]):
        quiet_worker()
        self.params, self.logprobs_of = params, logprobs_of
        self.failed: str | None = None
        self.engines: dict[int, Any] = {}
        if processor == "http":
            from cirkit.engines.openai_engine import OpenAIEngine

            if api_key is not None:
                os.environ[spec.api_key_env] = api_key
            for server, base_url in enumerate(base_urls):
                entry = spec.model_copy(update={"engine": "openai", "base_url": base_url, "options": client})
                self.engines[server] = OpenAIEngine(entry)
        else:
            import socket

            from cirkit.engines.transformers_engine import TransformersEngine

            try:
                self.engines[0] = TransformersEngine(spec.id, vision=spec.type == "vlm", revision=spec.revision,
                                                     dtype=spec.dtype, device=device)
            except CirkitError as exc:
                raise CirkitError(f"{one_line(exc)} (on Ray node {socket.gethostname()}: model files must be at "
                                  "the same paths on every node)") from None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        indices = np.asarray(batch["index"])
        count = len(indices)
        answers: list[bytes] = [b""] * count
        errors = [""] * count
        if self.failed is not None:
            errors = [NOT_SENT + self.failed] * count
        else:
            servers = np.asarray(batch["server"])
            for server, engine in self.engines.items():
                rows = [k for k in range(count) if int(servers[k]) == server]
                if not rows:
                    continue
                if self.failed is not None:
                    for k in rows:
                        errors[k] = NOT_SENT + self.failed
                    continue
                requests = [pickle.loads(batch["request"][k]) for k in rows]
                try:
                    results = engine.generate(requests, self.params, logprobs_of=self.logprobs_of)
                except PartialGenerationError as exc:
                    self.failed = _reason(exc)
                    results = exc.results
                except CirkitError as exc:
                    self.failed = one_line(exc)
                    results = [None] * len(rows)
                for k, result in zip(rows, results):
                    if result is None:
                        errors[k] = self.failed or "no answer"
                    else:
                        answers[k] = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        served = next((e.served_model for e in self.engines.values() if getattr(e, "served_model", None)), "")
        return {
            "index": indices,
            "answer": np.array(answers, dtype=object),
            "error": np.array(errors, dtype=object),
            "served": np.array([served] * count, dtype=object),
        }


def _reason(exc: PartialGenerationError) -> str:
    """The failure of a partly answered batch, without its "(k of n requests answered)" count."""
    text = one_line(exc)
    return text[: text.rfind(" (")] if text.endswith("requests answered)") else text
