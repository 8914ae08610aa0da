"""caption: a VLM describes the reference image, prompted with one or several templates.

With several templates and/or `n` samples per template (nucleus sampling: temperature > 0 and
top_p < 1, the seed in the params), the step gives a set of captions, template-major: template 1
sample 1..n, template 2 ... `caption` is the first of them; `captions` the whole set, which a
rewrite step edits one by one (LDRE, SEIZE) and gallery captioning keeps per image (WeiMoCIR).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from cirkit.components.base import Component, ItemResult, clean_text, generate_keeping_answers
from cirkit.components.values import Port
from cirkit.engines.base import GenerationParams, GenerationRequest

MAX_CAPTIONS = 64  # captions per image, all templates and samples together


class CaptionParams(GenerationParams):
    max_new_tokens: int = Field(30, ge=1, le=32768)
    n: int = Field(1, ge=1, le=MAX_CAPTIONS)  # captions per template: samples, or the top beams


class Caption(Component):
    kind = "caption"
    description = "Describe an image with a vision-language model (one or several templates, n samples)."
    inputs = {"image": Port("image", "image")}
    outputs = {"caption": "text", "captions": "texts", "caption_sources": "sources"}
    model_types = ("vlm",)
    prompt_variables = ()
    max_prompts = None
    Params = CaptionParams
    editable = "caption"

    @classmethod
    def given_outputs(cls, value: str | list[str]) -> dict[str, Any]:
        texts = [value] if isinstance(value, str) else list(value)
        return {"caption": texts[0], "captions": texts, "caption_sources": [{"template": "given", "sample": i + 1} for i in range(len(texts))]}

    def check_count(self) -> None:
        total = len(self.prompts) * self.params.n
        if total > MAX_CAPTIONS:
            raise ValueError(f"{len(self.prompts)} templates x n={self.params.n} make {total} captions per image; the limit is {MAX_CAPTIONS}")

    def run(self, items: list[dict[str, Any]]) -> list[ItemResult]:
        self.check_count()
        conversations = [template.render() for template in self.prompts]
        requests = [GenerationRequest(messages=m, image=item["image"]) for item in items for m in conversations]
        generations, failure = generate_keeping_answers(self.model, requests, self.params)
        per_item = len(conversations)
        results = []
        for i in range(len(items)):
            answers = generations[i * per_item : (i + 1) * per_item]
            prompts = conversations if per_item > 1 else [conversations[0]]
            if any(a is None for a in answers):
                results.append(ItemResult(prompts=prompts, error=f"no answer: {failure}"))
                continue
            result = ItemResult(prompts=prompts)
            captions, sources = [], []
            for template, answer in zip(self.prompts, answers):
                for sample, gen in enumerate(answer):
                    label = "caption" if per_item * len(answer) == 1 else f"caption {len(captions) + 1} ({template.name}, sample {sample + 1})"
                    caption = clean_text(gen.text)
                    result.raw.append(gen.text)
                    if gen.finish_reason == "length":
                        result.notes.append(f"{label} cut at max_new_tokens={self.params.max_new_tokens}")
                    if not caption:
                        result.notes.append(f"the captioner returned no text ({label})" if label != "caption" else "the captioner returned no text")
                    captions.append(caption)
                    sources.append({"template": template.name, "sample": sample + 1})
            result.outputs = {"caption": captions[0], "captions": captions, "caption_sources": sources}
            results.append(result)
        return results
