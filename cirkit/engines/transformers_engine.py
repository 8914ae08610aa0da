"""Hugging Face transformers, in process: batched generate through chat templates, images for VLMs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cirkit.engines.base import Engine, Generation, GenerationParams, GenerationRequest, count_tokens, cut_at_stop
from cirkit.errors import CirkitError, one_line


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, dtype)


class TransformersEngine(Engine):
    def __init__(self, model_id: str, *, vision: bool, revision: str | None = None, dtype: str = "auto", device: str = "auto"):
        from transformers import (
            AutoModelForCausalLM,
            AutoModelForImageTextToText,
            AutoProcessor,
            AutoTokenizer,
        )

        self.model_id = model_id
        self.revision = revision
        self.vision = vision
        self.device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, self.device)
        try:
            if vision:
                self.processor = AutoProcessor.from_pretrained(model_id, revision=revision)
                self.tokenizer = self.processor.tokenizer
                self.model = AutoModelForImageTextToText.from_pretrained(model_id, revision=revision, dtype=torch_dtype)
            else:
                self.processor = None
                self.tokenizer = AutoTokenizer.from_pretrained(model_id, revision=revision)
                self.model = AutoModelForCausalLM.from_pretrained(model_id, revision=revision, dtype=torch_dtype)
        except (OSError, ValueError, KeyError) as exc:
            raise CirkitError(f"cannot load model '{model_id}': {one_line(exc)}") from None
        self.model.to(self.device).eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.generation_config.pad_token_id is None:
            self.model.generation_config.pad_token_id = self.tokenizer.pad_token_id
        self.chat = bool(getattr(self.processor or self.tokenizer, "chat_template", None))
        self.max_images_per_prompt = 1 if vision and not self.chat else None

    def describe(self) -> dict[str, Any]:
        return {
            "engine": "transformers",
            "model": self.model_id,
            "revision": self.revision or getattr(self.model.config, "_commit_hash", None),
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "device": self.device,
        }

    def generate(
        self,
        requests: list[GenerationRequest],
        params: GenerationParams,
        on_batch: Callable[[int], None] | None = None,
        logprobs_of: Sequence[str] = (),
    ) -> list[list[Generation]]:
        import torch

        torch.manual_seed(params.seed)
        results: list[list[Generation] | None] = [None] * len(requests)
        # Similar lengths together: less padding per batch.
        order = sorted(range(len(requests)), key=lambda i: sum(len(m["content"]) for m in requests[i].messages))
        for start in range(0, len(order), params.batch_size):
            chunk = order[start : start + params.batch_size]
            outputs = self._generate_batch([requests[i] for i in chunk], params, logprobs_of)
            for i, out in zip(chunk, outputs):
                results[i] = out
            count_tokens(outputs)
            if on_batch:
                on_batch(len(chunk))
        return results  # type: ignore[return-value]

    def _encode(self, requests: list[GenerationRequest]):
        if self.vision:
            if any(r.image is None for r in requests):
                raise CirkitError(f"model '{self.model_id}' is a VLM: every request needs an image")
            if self.chat:
                conversations = [_with_images(r.messages, r.images) for r in requests]
                return self.processor.apply_chat_template(
                    conversations,
                    add_generation_prompt=True,
                    tokenize=True,
                    return_dict=True,
                    return_tensors="pt",
                    processor_kwargs={"padding": True, "padding_side": "left"},
                )
            if any(r.more_images for r in requests):
                raise CirkitError(f"model '{self.model_id}' has no chat template and takes one image per prompt, not several")
            texts = [_plain_text(r.messages) for r in requests]
            return self.processor(
                images=[r.image for r in requests], text=texts, return_tensors="pt", padding=True, padding_side="left"
            )
        if self.chat:
            return self.tokenizer.apply_chat_template(
                [r.messages for r in requests],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
                padding=True,
            )
        return self.tokenizer([_plain_text(r.messages) for r in requests], return_tensors="pt", padding=True)

    def _generate_batch(
        self, requests: list[GenerationRequest], params: GenerationParams, logprobs_of: Sequence[str] = ()
    ) -> list[list[Generation]]:
        import torch

        inputs = self._encode(requests).to(self.device)
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "num_beams": params.num_beams,
            "num_return_sequences": params.n,
        }
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if logprobs_of:
            kwargs.update(output_logits=True, return_dict_in_generate=True)
        if params.stop and params.num_beams == 1:
            # Ends each answer early; the decoded text is cut at the first stop string below either way,
            # so the answer is the same as generating on and cutting (beam search is only cut: stopping
            # beams early would change which beams win).
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        with torch.inference_mode():
            try:
                out = self.model.generate(**inputs, **kwargs)
            except IndexError as exc:  # past a learned position table (BLIP's text decoder, ...)
                config = getattr(self.model.config, "text_config", None) or self.model.config
                limit = getattr(config, "max_position_embeddings", None)
                raise CirkitError(
                    f"model '{self.model_id}' failed on a prompt of {inputs['input_ids'].shape[1]} tokens + "
                    f"{params.max_new_tokens} new ones (it has {limit} positions): shorten the template or max_new_tokens "
                    f"({one_line(exc)})"
                ) from None
        first_logprobs = None
        if logprobs_of:
            first_logprobs = torch.log_softmax(out.logits[0].float(), dim=-1)
            out = out.sequences
        mask = inputs.get("attention_mask")
        read = mask.sum(dim=1).tolist() if mask is not None else [inputs["input_ids"].shape[1]] * len(requests)
        prompt_ids = inputs["input_ids"].repeat_interleave(params.n, dim=0)
        # Decoder-only models return prompt + answer; encoder-decoder ones the answer alone.
        if out.shape[1] >= prompt_ids.shape[1] and torch.equal(out[:, : prompt_ids.shape[1]], prompt_ids):
            out = out[:, prompt_ids.shape[1] :]
        eos_ids = _eos_ids(self.model, self.tokenizer)
        generations = []
        for r, row in enumerate(out.tolist()):
            end = next((i for i, t in enumerate(row) if t in eos_ids), None)
            if end is not None:
                tokens, reason, written = row[:end], "stop", end + 1
            else:
                tokens = [t for t in row if t != self.tokenizer.pad_token_id]
                reason = "length" if len(row) >= params.max_new_tokens else "stop"
                written = len(tokens)
            text, cut = cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), params.stop)
            if cut:
                reason = "stop"
            text = text.strip()
            logprobs = None
            if first_logprobs is not None:
                logprobs = {
                    word: float(torch.logsumexp(first_logprobs[r, self._first_tokens(word)], dim=0)) for word in logprobs_of
                }
            generations.append(Generation(text=text, finish_reason=reason, logprobs=logprobs,
                                          input_tokens=int(read[r // params.n]) if r % params.n == 0 else 0, output_tokens=written))
        return [generations[i : i + params.n] for i in range(0, len(generations), params.n)]

    def _first_tokens(self, word: str) -> list[int]:
        """The token ids an answer starting with `word` may begin with (spacing and case variants),
        leaving out a first token that is only a space."""
        ids = set()
        for variant in (word, word.capitalize(), word.upper()):
            for text in (variant, " " + variant):
                tokens = self.tokenizer.encode(text, add_special_tokens=False)
                if tokens and self.tokenizer.decode(tokens[:1]).strip():
                    ids.add(tokens[0])
        return sorted(ids)


def _plain_text(messages: list[dict[str, str]]) -> str:
    return "\n".join(m["content"] for m in messages)


def _with_images(messages: list[dict[str, str]], images: list) -> list[dict[str, Any]]:
    """The conversation with the images placed before the text of the first user message."""
    out: list[dict[str, Any]] = []
    placed = False
    for m in messages:
        if m["role"] == "user" and not placed:
            parts = [{"type": "image", "image": image} for image in images]
            out.append({"role": "user", "content": [*parts, {"type": "text", "text": m["content"]}]})
            placed = True
        else:
            out.append({"role": m["role"], "content": [{"type": "text", "text": m["content"]}]})
    return out


def _eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    if ids is None:
        ids = tokenizer.eos_token_id
    if ids is None:
        return set()
    return set(ids) if isinstance(ids, list) else {ids}
