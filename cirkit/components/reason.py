"""reason: one multimodal LLM pass from the reference image and the modification to the target description.

The model sees the reference image and the modification and writes out its reasoning (what the
image shows, what the modification changes, a check of the result) before the target description.
The whole answer is kept (`reasoning`, and the raw answer in the trace); the description is parsed
from it by the template's output rule (`output: {after: ...}` or `{first_line: ...}`), and, like a
rewrite, can be edited by hand and the run re-run from the step after it. With several templates
and/or `n` samples the step gives an ensemble of descriptions, template-major.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from cirkit.components.base import Component, ItemResult, generate_keeping_answers
from cirkit.components.rewrite import first_line_answer, parse_answer
from cirkit.components.values import Port
from cirkit.engines.base import GenerationParams, GenerationRequest


class ReasonParams(GenerationParams):
    max_new_tokens: int = Field(512, ge=1, le=32768)
    # What to retrieve with when no description can be parsed from the reasoning: the modification
    # alone, or fail the query.
    fallback: Literal["modification", "error"] = "modification"


class Reason(Component):
    kind = "reason"
    description = "One multimodal LLM pass: the reference image and the modification reasoned to the target description (reasoning kept)."
    inputs = {"image": Port("image", "image"), "modification": Port("text", "modification")}
    outputs = {"description": "text", "descriptions": "texts", "sources": "sources", "reasoning": "texts"}
    model_types = ("vlm",)
    prompt_variables = ("modification",)
    max_prompts = None
    Params = ReasonParams
    editable = "description"

    @classmethod
    def given_outputs(cls, value: str | list[str]) -> dict[str, Any]:
        texts = [value] if isinstance(value, str) else list(value)
        return {"description": texts[0], "descriptions": texts, "sources": [{"template": "given", "sample": i + 1} for i in range(len(texts))],
                "reasoning": []}

    def run(self, items: list[dict[str, Any]]) -> list[ItemResult]:
        conversations = [[template.render(modification=item["modification"]) for template in self.prompts] for item in items]
        requests = [GenerationRequest(messages=m, image=item["image"]) for item, per_item in zip(items, conversations) for m in per_item]
        generations, failure = generate_keeping_answers(self.model, requests, self.params)
        results, start = [], 0
        for item, per_item in zip(items, conversations):
            answers, start = generations[start : start + len(per_item)], start + len(per_item)
            result = ItemResult(prompts=[{"images": ["reference"], "messages": m} for m in per_item])
            if any(answer is None for answer in answers):
                result.error = f"no answer: {failure}"
                results.append(result)
                continue
            descriptions, sources, reasoning = [], [], []
            for template, messages, answer in zip(self.prompts, per_item, answers):
                output = template.spec.output
                for sample, gen in enumerate(answer):
                    label = f"reasoning {len(descriptions) + 1} ({template.name}, sample {sample + 1})"
                    result.raw.append(gen.text)
                    reasoning.append(gen.text)
                    if output.first_line is not None:
                        parsed, problem = first_line_answer(gen.text, output.first_line, output.until)
                    else:
                        in_prompt = bool(output.after) and messages[-1]["content"].rstrip().endswith(output.after)
                        parsed, problem = parse_answer(gen.text, output.after, marker_in_prompt=in_prompt)
                    if gen.finish_reason == "length":
                        result.notes.append(f"{label}: answer cut at max_new_tokens={self.params.max_new_tokens}")
                    if parsed is None:
                        if self.params.fallback == "error":
                            result.error = f"cannot parse the target description ({label}): {problem}"
                        parsed = item["modification"]
                        result.notes.append(f"{label}: fallback to the modification: {problem}")
                    descriptions.append(parsed)
                    sources.append({"template": template.name, "sample": sample + 1})
            result.outputs = {"description": descriptions[0], "descriptions": descriptions, "sources": sources, "reasoning": reasoning}
            results.append(result)
        return results
