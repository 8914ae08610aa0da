"""paraphrase: an LLM rewords the modification text `count` ways, keeping its meaning.

The answer is read as a list, one paraphrase per line: numbering and bullets are dropped, and where
some lines are numbered only those count (a preamble such as "Here are three:" is not a paraphrase).
An answer with fewer paraphrases than asked for is filled with the modification itself, with a note
(or fails the query: `fallback: error`). The paraphrases can be edited by hand, one per line.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field

from cirkit.components.base import Component, ItemResult, clean_text, generate_keeping_answers
from cirkit.components.values import Port
from cirkit.engines.base import GenerationParams, GenerationRequest

MAX_PARAPHRASES = 10

_NUMBERED = re.compile(r"^\s*(?:\(?\d{1,2}\s*[.):]|#\d{1,2}[.):]?)\s*")
_BULLET = re.compile(r"^\s*[-*•–]\s+")
_QUOTES = "\"'`“”‘’«»*_ "


class ParaphraseParams(GenerationParams):
    max_new_tokens: int = Field(256, ge=1, le=32768)
    count: int = Field(3, ge=1, le=MAX_PARAPHRASES)  # paraphrases asked for
    # Fewer paraphrases in the answer than asked for: the modification itself takes the missing
    # places, or the query fails.
    fallback: Literal["modification", "error"] = "modification"


class Paraphrase(Component):
    kind = "paraphrase"
    description = "Reword the modification text `count` ways with an LLM (one paraphrase per line), to measure how much the wording matters."
    inputs = {"modification": Port("text", "modification")}
    outputs = {"texts": "texts", "paraphrases": "text"}
    model_types = ("llm", "vlm")
    prompt_variables = ("modification", "count")
    Params = ParaphraseParams
    editable = "paraphrases"

    @classmethod
    def given_outputs(cls, value: str | list[str]) -> dict[str, Any]:
        texts = parse_paraphrases(value) if isinstance(value, str) else [clean_text(v) for v in value if clean_text(v)]
        return {"texts": texts, "paraphrases": "\n".join(texts)}

    def run(self, items: list[dict[str, Any]]) -> list[ItemResult]:
        template = self.prompts[0]
        count = self.params.count
        conversations = [template.render(modification=item["modification"], count=str(count)) for item in items]
        generations, failure = generate_keeping_answers(self.model, [GenerationRequest(messages=m) for m in conversations], self.params)
        results = []
        for item, messages, answer in zip(items, conversations, generations):
            result = ItemResult(prompts=[messages])
            if answer is None:
                result.error = f"no answer: {failure}"
                results.append(result)
                continue
            texts: list[str] = []
            for sample, gen in enumerate(answer):
                result.raw.append(gen.text)
                if gen.finish_reason == "length":
                    result.notes.append(f"answer {sample + 1}: cut at max_new_tokens={self.params.max_new_tokens}")
                text = gen.text
                marker = template.spec.output.after
                if marker and marker.lower() in text.lower():
                    text = text[text.lower().index(marker.lower()) + len(marker):]
                for paraphrase in parse_paraphrases(text):
                    if paraphrase.lower() not in (t.lower() for t in texts):
                        texts.append(paraphrase)
            if len(texts) > count:
                result.notes.append(f"kept the first {count} of {len(texts)} paraphrases")
                texts = texts[:count]
            elif len(texts) < count:
                problem = f"the answer has {len(texts)} paraphrase{'' if len(texts) == 1 else 's'}, {count} asked for"
                if self.params.fallback == "error":
                    result.error = f"cannot read {count} paraphrases in the LLM's answer: {problem}"
                    results.append(result)
                    continue
                result.notes.append(f"paraphrases {len(texts) + 1}-{count}: fallback to the modification: {problem}"
                                    if count - len(texts) > 1 else f"paraphrase {count}: fallback to the modification: {problem}")
                texts += [item["modification"]] * (count - len(texts))
            result.outputs = {"texts": texts, "paraphrases": "\n".join(texts)}
            results.append(result)
        return results


def parse_paraphrases(raw: str) -> list[str]:
    """The paraphrases in a list answer, in order: one per line, numbering, bullets and quotes
    dropped. Where some lines are numbered, only the numbered lines count."""
    lines = [line for line in raw.splitlines() if line.strip()]
    numbered = [line for line in lines if _NUMBERED.match(line)]
    out = []
    for line in numbered or lines:
        text = _BULLET.sub("", _NUMBERED.sub("", line, count=1), count=1)
        text = clean_text(text).strip(_QUOTES).strip()
        if text and not (not numbered and text.endswith(":")):  # "Here are three ways to say it:"
            out.append(text)
    return out
