"""caption: a VLM describes the reference image, prompted with a template."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from cirkit.components.base import Component, ItemResult, clean_text, generate_keeping_answers
from cirkit.components.values import Port
from cirkit.engines.base import GenerationParams, GenerationRequest


class CaptionParams(GenerationParams):
    max_new_tokens: int = Field(30, ge=1, le=32768)
    n: int = Field(1, ge=1, le=1)


class Caption(Component):
    kind = "caption"
    description = "Describe an image with a vision-language model."
    inputs = {"image": Port("image", "image")}
    outputs = {"caption": "text"}
    model_types = ("vlm",)
    prompt_variables = ()
    Params = CaptionParams
    editable = "caption"

    def run(self, items: list[dict[str, Any]]) -> list[ItemResult]:
        messages = self.prompts[0].render()
        requests = [GenerationRequest(messages=messages, image=item["image"]) for item in items]
        generations, failure = generate_keeping_answers(self.model, requests, self.params)
        results = []
        for answer in generations:
            if answer is None:
                results.append(ItemResult(prompts=[messages], error=f"no answer: {failure}"))
                continue
            gen = answer[0]
            caption = clean_text(gen.text)
            result = ItemResult(outputs={"caption": caption}, prompts=[messages], raw=[gen.text])
            if gen.finish_reason == "length":
                result.notes.append(f"caption cut at max_new_tokens={self.params.max_new_tokens}")
            if not caption:
                result.notes.append("the captioner returned no text")
            results.append(result)
        return results
