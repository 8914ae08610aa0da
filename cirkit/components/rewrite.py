"""rewrite: an LLM edits the reference caption as the modification text asks.

With several templates (paraphrased instructions) and/or `n` samples per template, the step
produces an ensemble of descriptions, template-major: template 1 sample 1..n, template 2 ...
Given several captions (a caption step's `captions`), each caption is edited on its own, caption-major:
the descriptions of caption 1, then of caption 2 ...; each source names its caption.
With `suggestion` wired (a critic's advice, e.g. a feedback step in a refine loop), the template's
{modification} is the modification amended by it, as `amend` says (WISER's refinement).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from cirkit.components.base import Component, ItemResult, amended, check_amend_form, clean_text, generate_keeping_answers
from cirkit.components.values import Port
from cirkit.engines.base import GenerationParams, GenerationRequest

# Lines that start a new field of the prompt's pattern: the model went on past its answer.
_NEXT_FIELD = re.compile(
    r"^\s*(?:[*_#>\-\s]*)(image content|instruction|edited description|note|explanation|reasoning)\s*[*_]*\s*:",
    re.IGNORECASE,
)
_QUOTES = "\"'`“”‘’«»*_ "


class RewriteParams(GenerationParams):
    max_new_tokens: int = Field(128, ge=1, le=32768)
    # What to retrieve with when the answer cannot be parsed: caption and modification joined, the
    # modification alone, or fail the query.
    fallback: Literal["caption+modification", "modification", "error"] = "caption+modification"
    amend: str = "{modification} and {suggestion}."  # how a wired suggestion joins the modification

    _amend = field_validator("amend")(check_amend_form)


class Rewrite(Component):
    kind = "rewrite"
    description = "Edit the caption according to the modification text with an LLM (one or several templates, n samples)."
    inputs = {"caption": Port("texts", "caption"), "modification": Port("text", "modification"), "suggestion": Port("text", optional=True)}
    outputs = {"description": "text", "descriptions": "texts", "sources": "sources"}
    model_types = ("llm", "vlm")
    prompt_variables = ("caption", "modification")
    max_prompts = None
    Params = RewriteParams
    editable = "description"

    @classmethod
    def given_outputs(cls, value: str | list[str]) -> dict[str, Any]:
        texts = [value] if isinstance(value, str) else list(value)
        return {"description": texts[0], "descriptions": texts, "sources": [{"template": "given", "sample": i + 1} for i in range(len(texts))]}

    def run(self, items: list[dict[str, Any]]) -> list[ItemResult]:
        per_caption = [[item["caption"]] if isinstance(item["caption"], str) else list(item["caption"]) for item in items]
        items = [{**item, "modification": amended(item["modification"], item.get("suggestion"), self.params.amend)} for item in items]
        conversations = [
            [template.render(caption=caption, modification=item["modification"]) for caption in captions for template in self.prompts]
            for item, captions in zip(items, per_caption)
        ]
        requests = [GenerationRequest(messages=m) for per_item in conversations for m in per_item]
        generations, failure = generate_keeping_answers(self.model, requests, self.params)
        results, start = [], 0
        for i, item in enumerate(items):
            count = len(conversations[i])
            answers, start = generations[start : start + count], start + count
            result = ItemResult(prompts=conversations[i])
            if any(answer is None for answer in answers):
                result.error = f"no answer: {failure}"
                results.append(result)
                continue
            several = len(per_caption[i]) > 1
            descriptions, sources = [], []
            for c, caption in enumerate(per_caption[i]):
                for t, template in enumerate(self.prompts):
                    at = c * len(self.prompts) + t
                    messages = conversations[i][at]
                    output = template.spec.output
                    marker = output.after
                    prompt_ends_with_marker = bool(marker) and messages[-1]["content"].rstrip().endswith(marker)
                    for sample, gen in enumerate(answers[at]):
                        of = f"caption {c + 1}, " if several else ""
                        label = f"rewrite {len(descriptions) + 1} ({of}{template.name}, sample {sample + 1})"
                        result.raw.append(gen.text)
                        if output.first_line is not None:
                            parsed, problem = first_line_answer(gen.text, output.first_line, output.until)
                        else:
                            parsed, problem = parse_answer(gen.text, marker, marker_in_prompt=prompt_ends_with_marker)
                        if gen.finish_reason == "length":
                            result.notes.append(f"{label}: answer cut at max_new_tokens={self.params.max_new_tokens}")
                        if parsed is None:
                            if self.params.fallback == "error":
                                result.error = f"cannot parse the LLM's answer ({label}): {problem}"
                            if self.params.fallback == "modification":
                                parsed = item["modification"]
                                result.notes.append(f"{label}: fallback to the modification: {problem}")
                            else:
                                parsed = f"{caption} {item['modification']}"
                                result.notes.append(f"{label}: fallback to caption + modification: {problem}")
                        descriptions.append(parsed)
                        source = {"template": template.name, "sample": sample + 1}
                        sources.append({"caption": c + 1, **source} if several else source)
            result.outputs = {"description": descriptions[0], "descriptions": descriptions, "sources": sources}
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


def first_line_answer(raw: str, marker: str, until: str | None = None) -> tuple[str | None, str]:
    """The answer on the first line whose stripped form starts with `marker`: the text after the
    marker, up to the next `until` (or the line's end), stripped of surrounding whitespace only.

    Lines are split at "\n" alone. Returns (answer, "") or (None, why): no such line, or nothing
    after the marker on it (later lines are not looked at).
    """
    for line in raw.split("\n"):
        stripped = line.strip()
        if stripped.startswith(marker):
            text = stripped[len(marker) :]
            if until is not None:
                text = text.split(until, 1)[0]
            answer = text.strip()
            if not answer:
                return None, f"nothing after '{marker}' on its line"
            return answer, ""
    return None, f"no line starting with '{marker}' in the answer"
