"""Any LangChain chat model (a langchain-core `BaseChatModel`), in process.

    models:
      llm:
        type: llm
        engine: langchain
        class_path: langchain_openai:ChatOpenAI        # or "langchain_openai.ChatOpenAI"
        options: {model: gpt-4o-mini, max_retries: 3}   # keyword arguments of the class
        max_concurrency: 8                              # inputs in flight in `.batch`

The class is imported and built with `options` as keyword arguments (keep secrets out of the pipeline
file: chat model classes read their API keys from their usual environment variables). Messages become
SystemMessage / HumanMessage / AIMessage; a request's image goes into the first user message as an
`image_url` content block holding a PNG data URI (the OpenAI format, which LangChain's providers accept).

Decoding parameters reach the model through its own fields, and only through fields its class
declares: `temperature`, `top_p` (when below 1), the token limit (the first of `max_tokens`,
`max_completion_tokens`, `max_new_tokens`, `max_output_tokens`, `num_predict` that the class has) and
`seed`. Stop strings go as the `stop` argument of each call, and the answer is cut at the first of
them (for providers that ignore it). The step's values win over `options`. A model without such a field decodes with its own
settings. `n` samples are n rounds of `.batch` over the requests, round i with seed `seed + i` where
the class has a `seed` field. There is no beam search: num_beams > 1 is refused with a CirkitError.
`finish_reason` comes from the answer's `response_metadata` (finish_reason, stop_reason or
done_reason); without one it is "stop".

A failure in a batch raises PartialGenerationError (a CirkitError) carrying the answers obtained
so far, or a plain CirkitError when nothing was answered.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from cirkit.engines.base import Engine, Generation, GenerationParams, GenerationRequest, cut_at_stop
from cirkit.engines.openai_engine import finish_reason, openai_messages
from cirkit.errors import PartialGenerationError
from cirkit.errors import CirkitError, one_line

TOKEN_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens", "max_new_tokens", "max_output_tokens", "num_predict")
_SECRET = re.compile(r"api[_-]?key|secret|password|passwd|credential|authorization|bearer|(^|_)token$", re.IGNORECASE)


def import_class(class_path: str):
    """`package.module:Class` or `package.module.Class` -> the class."""
    if ":" in class_path:
        module_name, _, attr = class_path.partition(":")
    else:
        module_name, _, attr = class_path.rpartition(".")
    if not module_name or not attr:
        raise CirkitError(f"langchain engine: class_path '{class_path}' must look like package.module:Class")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        package = module_name.split(".")[0].replace("_", "-")
        raise CirkitError(
            f"langchain engine: cannot import {module_name} ({one_line(exc)}); is {package} installed?"
        ) from None
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise CirkitError(f"langchain engine: {module_name} has no '{attr}'")
    return obj


class LangChainEngine(Engine):
    def __init__(self, spec):
        from langchain_core.language_models import BaseChatModel

        self.spec = spec
        self.class_path = spec.class_path
        cls = import_class(spec.class_path)
        if not (isinstance(cls, type) and issubclass(cls, BaseChatModel)):
            raise CirkitError(
                f"langchain engine: {spec.class_path} is not a LangChain chat model (a langchain_core BaseChatModel)"
            )
        try:
            self.model = cls(**dict(spec.options or {}))
        except Exception as exc:  # pydantic validation, missing credentials, ...
            raise CirkitError(f"langchain engine: cannot create {spec.class_path}: {one_line(exc)}") from None
        self.fields = set(type(self.model).model_fields)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "engine": "langchain",
            "class": self.class_path,
            "model": self.spec.id or _model_name(self.model),
            "revision": self.spec.revision,
        }
        try:
            params = dict(self.model._identifying_params)
        except Exception:  # a model whose identifying params need a connection, or raise
            params = {}
        info["params"] = _safe(params)
        return info

    def generate(
        self,
        requests: list[GenerationRequest],
        params: GenerationParams,
        on_batch: Callable[[int], None] | None = None,
        logprobs_of: Sequence[str] = (),  # not asked for: chat models report log-probabilities in provider-specific ways
    ) -> list[list[Generation]]:
        if params.num_beams > 1:
            raise CirkitError(
                f"the langchain engine cannot do beam search (num_beams={params.num_beams}): "
                "set num_beams: 1 in the step's params (greedy), or temperature > 0 with n samples"
            )
        inputs = [self._messages(r) for r in requests]
        models = [self._configured(params, params.seed + i) for i in range(params.n)]
        config = {"max_concurrency": self.spec.max_concurrency}
        results: list[list[Generation] | None] = [None] * len(requests)
        chunk_size = max(params.batch_size, self.spec.max_concurrency)
        for start in range(0, len(inputs), chunk_size):
            chunk = inputs[start : start + chunk_size]
            stop = {"stop": list(params.stop)} if params.stop else {}
            rounds = [model.batch(chunk, config=config, return_exceptions=True, **stop) for model in models]
            failure = None
            for offset in range(len(chunk)):
                outputs = [r[offset] for r in rounds]
                bad = next((o for o in outputs if isinstance(o, BaseException)), None)
                if bad is None:
                    results[start + offset] = [_generation(o, params.stop) for o in outputs]
                else:
                    failure = failure or bad
            if failure is not None:
                self._fail(failure, results)
            if on_batch:
                on_batch(len(chunk))
        return results  # type: ignore[return-value]

    def _fail(self, exc: BaseException, results: list[list[Generation] | None]) -> None:
        message = str(exc) if isinstance(exc, CirkitError) else f"{self.class_path} failed: {type(exc).__name__}: {one_line(exc)}"
        done = sum(r is not None for r in results)
        if done:
            raise PartialGenerationError(f"{message} ({done} of {len(results)} requests answered)", results)
        raise CirkitError(message)

    def _configured(self, params: GenerationParams, seed: int):
        """The model with the step's decoding parameters set on the fields its class declares."""
        update: dict[str, Any] = {}
        if "temperature" in self.fields:
            update["temperature"] = params.temperature
        if "top_p" in self.fields and params.top_p < 1.0:
            update["top_p"] = params.top_p
        limit = next((f for f in TOKEN_LIMIT_FIELDS if f in self.fields), None)
        if limit:
            update[limit] = params.max_new_tokens
        if "seed" in self.fields:
            update["seed"] = seed
        return self.model.model_copy(update=update) if update else self.model

    def _messages(self, request: GenerationRequest):
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

        kinds = {"system": SystemMessage, "user": HumanMessage, "human": HumanMessage, "assistant": AIMessage, "ai": AIMessage}
        out = []
        for m in openai_messages(request):
            kind = kinds.get(m["role"])
            if kind is None:
                raise CirkitError(f"langchain engine: unknown message role '{m['role']}'")
            out.append(kind(content=m["content"]))
        return out


def _generation(message, stop: Sequence[str] = ()) -> Generation:
    meta = getattr(message, "response_metadata", None) or {}
    reason = meta.get("finish_reason") or meta.get("stop_reason") or meta.get("done_reason")
    text = message.text if hasattr(message, "text") else str(message)
    if callable(text) and not isinstance(text, str):  # langchain-core < 1.0: a method
        text = text()
    text, cut = cut_at_stop(str(text), stop)
    return Generation(text=text.strip(), finish_reason="stop" if cut else finish_reason(reason))


def _model_name(model) -> str | None:
    for field in ("model_name", "model", "model_id", "deployment_name"):
        value = getattr(model, field, None)
        if isinstance(value, str) and value:
            return value
    return None


def _safe(params: dict[str, Any]) -> dict[str, Any]:
    """JSON-able identifying params, without anything that looks like a credential."""
    out = {}
    for key, value in params.items():
        if _SECRET.search(str(key)):
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            value = repr(value)[:200]
        out[str(key)] = value
    return out
