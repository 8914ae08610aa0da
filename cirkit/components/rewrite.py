"""rewrite: an LLM edits the reference caption as the modification text asks."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field

from cirkit.components.base import Component, ItemResult, clean_text
from cirkit.engines.base import GenerationParams, GenerationRequest

# Lines that start a new field of the prompt's pattern: the model went on past its answer.
_NEXT_FIELD = re.compile(
    r"^\s*(?:[*_#>\-\s]*)(image content|instruction|edited description|note|explanation|reasoning)\s*[*_]*\s*:",
    re.IGNORECASE,
)
_QUOTES = "\"'`“”‘’«»*_ "


class RewriteParams(GenerationParams):
    max_new_tokens: int = Field(128, ge=1, le=32768)
    # What to retrieve with when the answer cannot be parsed: caption and modification joined, or fail the query.
    fallback: Literal["caption+modification", "error"] = "caption+modification"


class Rewrite(Component):
    kind = "rewrite"
    description = "Edit the caption according to the modification text with an LLM."
    inputs = {"caption": "caption", "modification": "modification"}
    outputs = ("description",)
    model_types = ("llm", "vlm")
    prompt_variables = ("caption", "modification")
    Params = RewriteParams

    def run(self, items: list[dict[str, Any]]) -> list[ItemResult]:
        conversations = [self.prompt.render(caption=i["caption"], modification=i["modification"]) for i in items]
        generations = self.model.generate([GenerationRequest(messages=m) for m in conversations], self.params)
        marker = self.prompt.spec.output.after
        results = []
        for item, messages, gen in zip(items, conversations, generations):
            result = ItemResult(prompts=[messages], raw=[gen.text])
            prompt_ends_with_marker = bool(marker) and messages[-1]["content"].rstrip().endswith(marker)
            parsed, problem = parse_answer(gen.text, marker, marker_in_prompt=prompt_ends_with_marker)
            if gen.finish_reason == "length":
                result.notes.append(f"answer cut at max_new_tokens={self.params.max_new_tokens}")
            if parsed is None:
                if self.params.fallback == "error":
                    result.error = f"cannot parse the LLM's answer: {problem}"
                else:
                    parsed = f"{item['caption']} {item['modification']}"
                    result.notes.append(f"fallback to caption + modification: {problem}")
            result.outputs["description"] = parsed
            results.append(result)
        return results


def parse_answer(raw: str, marker: str | None, marker_in_prompt: bool = False) -> tuple[str | None, str]:
    """The answer in an LLM output: the whole text after the marker, up to any trailing chatter.

    Returns (answer, "") or (None, why it could not be parsed).
    """
    text = raw.strip()
    if not text:
        return None, "empty answer"
    if marker:
        at = text.lower().find(marker.lower())
        if at >= 0:
            text = text[at + len(marker) :]
        elif not marker_in_prompt:
            return None, f"no '{marker}' in the answer"
    lines = []
    for line in text.strip().splitlines():
        if _NEXT_FIELD.match(line) or (lines and not line.strip()):
            break
        lines.append(line.strip())
    answer = clean_text(" ".join(lines)).strip(_QUOTES).strip()
    if not answer:
        return None, "nothing after the marker"
    return answer, ""
