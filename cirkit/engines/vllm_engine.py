"""vLLM, in process (the optional `vllm` extra; needs a GPU).

    models:
      llm:
        type: llm
        engine: vllm
        id: Qwen/Qwen2.5-7B-Instruct          # a Hugging Face id or a local directory
        dtype: bfloat16
        options: {max_model_len: 4096, gpu_memory_utilization: 0.8}   # keyword arguments of vllm.LLM

`vllm.LLM(model=id, revision=revision, dtype=dtype, **options)` loads the model; vLLM picks the GPU
(`device` is not used). Requests go through `LLM.chat` in large batches (vLLM schedules them
continuously), with the model's chat template; a request's image is passed as a PIL image content part
(`{"type": "image_pil", ...}`) before the text of the first user message. `n`, `temperature`, `top_p`,
`max_new_tokens`, `seed` and `stop` become `SamplingParams`; temperature 0 decodes greedily. This engine decodes
by sampling or greedily only: num_beams > 1 is refused with a CirkitError (use the transformers engine
for beam search, or num_beams: 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cirkit.engines.base import Engine, Generation, GenerationParams, GenerationRequest, count_tokens, cut_at_stop, with_image_parts
from cirkit.engines.openai_engine import TOP_LOGPROBS, first_token_logprobs
from cirkit.errors import CirkitError, one_line

CHUNK = 256  # requests per llm.chat call: big enough to keep the GPU busy, small enough for progress


class VllmEngine(Engine):
    def __init__(self, spec):
        try:
            import vllm
        except ImportError as exc:
            raise CirkitError(
                f"the vllm engine needs `pip install cirkit[vllm]` and a GPU (import vllm failed: {one_line(exc)})"
            ) from None
        self.spec = spec
        self.model_id = spec.id
        self.revision = spec.revision
        self.vllm_version = getattr(vllm, "__version__", None)
        try:
            self.llm = vllm.LLM(model=spec.id, revision=spec.revision, dtype=spec.dtype, **dict(spec.options or {}))
        except (OSError, ValueError, RuntimeError, TypeError) as exc:
            raise CirkitError(f"cannot load model '{spec.id}' with vllm: {one_line(exc)}") from None
        self._sampling_params = vllm.SamplingParams

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"engine": "vllm", "model": self.model_id, "revision": self.revision, "vllm": self.vllm_version}
        config = getattr(getattr(self.llm, "llm_engine", None), "model_config", None)
        if config is not None:
            info["dtype"] = str(getattr(config, "dtype", "")).removeprefix("torch.") or None
            info["max_model_len"] = getattr(config, "max_model_len", None)
        info["device"] = "cuda"
        return info

    def generate(
        self,
        requests: list[GenerationRequest],
        params: GenerationParams,
        on_batch: Callable[[int], None] | None = None,
        logprobs_of: Sequence[str] = (),
    ) -> list[list[Generation]]:
        if params.num_beams > 1:
            raise CirkitError(
                f"the vllm engine decodes by sampling or greedily only (num_beams={params.num_beams}): "
                "set num_beams: 1 in the step's params, or use the transformers engine for beam search"
            )
        greedy = params.temperature == 0
        sampling = self._sampling_params(
            n=params.n,
            temperature=params.temperature,
            top_p=1.0 if greedy else params.top_p,
            max_tokens=params.max_new_tokens,
            seed=params.seed,
            stop=list(params.stop) or None,
            logprobs=TOP_LOGPROBS if logprobs_of else None,
        )
        results: list[list[Generation]] = []
        size = max(CHUNK, params.batch_size)
        for start in range(0, len(requests), size):
            chunk = requests[start : start + size]
            try:
                outputs = self.llm.chat([conversation(r) for r in chunk], sampling, use_tqdm=False)
            except ValueError as exc:  # prompt too long, bad image, ...
                raise CirkitError(f"vllm ({self.model_id}): {one_line(exc)}") from None
            done = []
            for out in outputs:
                generations = [_generation(c, params, logprobs_of) for c in sorted(out.outputs, key=lambda c: c.index)]
                prompt = getattr(out, "prompt_token_ids", None)
                for i, gen in enumerate(generations):
                    gen.input_tokens = (len(prompt) if i == 0 else 0) if prompt is not None else None
                done.append(generations)
            count_tokens(done)
            results.extend(done)
            if on_batch:
                on_batch(len(chunk))
        return results


def _generation(completion: Any, params: GenerationParams, logprobs_of: Sequence[str]) -> Generation:
    text, cut = cut_at_stop(completion.text, params.stop)
    return Generation(
        text=text.strip(),
        finish_reason="length" if completion.finish_reason == "length" and not cut else "stop",
        logprobs=_first_token_logprobs(completion) if logprobs_of else None,
        output_tokens=len(completion.token_ids) if getattr(completion, "token_ids", None) is not None else None,
    )


def conversation(request: GenerationRequest) -> list[dict[str, Any]]:
    """OpenAI-style messages for `LLM.chat`; the PIL images go before the text of the first user message."""
    return with_image_parts(request.messages, [{"type": "image_pil", "image_pil": image} for image in request.images])


def _first_token_logprobs(completion: Any) -> dict[str, float] | None:
    """Each word's log-probability as the first token, from vLLM's top alternatives of that token."""
    if not completion.logprobs:
        return None
    top = [{"token": alt.decoded_token or "", "logprob": alt.logprob} for alt in completion.logprobs[0].values()]
    return first_token_logprobs({"content": [{"top_logprobs": top}]})
