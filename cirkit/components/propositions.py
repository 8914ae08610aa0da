"""propositions: an LLM splits the target description into atomic yes/no statements.

The answer is read one statement per line (after the template's `output.after` marker, when it has
one), bullets and numbering dropped, duplicates dropped, at most `max_propositions` kept. An answer
with no statement in it falls back to the description itself as the only proposition (or fails the
query, `fallback: error`), and the notes say so. The statements can be edited by hand (one per
line) and the run re-run from the step after this one.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field

from cirkit.components.base import Component, ItemResult, clean_text, generate_keeping_answers
from cirkit.components.values import Port
from cirkit.engines.base import GenerationParams, GenerationRequest
from cirkit.errors import CirkitError

_BULLET = re.compile(r"^\s*(?:[-*•·>]+|\(?\d{1,2}[.):]|\(?[a-z][.)])\s*", re.IGNORECASE)
_QUOTES = "\"'`“”‘’«»*_ "


class PropositionsParams(GenerationParams):
    max_new_tokens: int = Field(128, ge=1, le=32768)
    max_propositions: int = Field(8, ge=1, le=32)
    fallback: Literal["description", "error"] = "description"


class Propositions(Component):
    kind = "propositions"
    description = "Split the target description into atomic yes/no propositions with an LLM, one per line."
    inputs = {"description": Port("text", "description"), "modification": Port("text", "modification")}
    outputs = {"propositions": "propositions"}
    model_types = ("llm",)
    prompt_variables = ("description", "modification")
    Params = PropositionsParams
    editable = "propositions"

    @classmethod
    def given_outputs(cls, value: str | list[str]) -> dict[str, Any]:
        found = parse_propositions(value)[0] if isinstance(value, str) else [p for p in (clean_text(text) for text in value) if p]
        if not found:
            raise CirkitError("no propositions in the given text: write one statement per line")
        return {"propositions": found}

    def run(self, items: list[dict[str, Any]]) -> list[ItemResult]:
        template = self.prompts[0]
        conversations = [template.render(description=item["description"], modification=item["modification"]) for item in items]
        generations, failure = generate_keeping_answers(self.model, [GenerationRequest(messages=m) for m in conversations], self.params)
        marker = template.spec.output.after
        results = []
        for item, messages, answer in zip(items, conversations, generations):
            result = ItemResult(prompts=[messages])
            if answer is None:
                result.error = f"no answer: {failure}"
                results.append(result)
                continue
            gen = answer[0]
            result.raw.append(gen.text)
            in_prompt = bool(marker) and messages[-1]["content"].rstrip().endswith(marker)
            found, problem = parse_propositions(gen.text, marker, marker_in_prompt=in_prompt)
            if gen.finish_reason == "length":
                result.notes.append(f"answer cut at max_new_tokens={self.params.max_new_tokens}")
            if len(found) > self.params.max_propositions:
                result.notes.append(f"{len(found)} propositions: kept the first {self.params.max_propositions}")
                found = found[: self.params.max_propositions]
            if not found:
                if self.params.fallback == "error":
                    result.error = f"no propositions in the LLM's answer: {problem}"
                found = [item["description"]]
                result.notes.append(f"fallback to the description as the only proposition: {problem}")
            result.outputs = {"propositions": found}
            results.append(result)
        return results


def parse_propositions(raw: str, marker: str | None = None, marker_in_prompt: bool = False) -> tuple[list[str], str]:
    """The statements of an answer, one per line, and why there are none when the list is empty."""
    text = raw.strip()
    if marker:
        at = text.lower().find(marker.lower())
        if at >= 0:
            text = text[at + len(marker) :]
        elif not marker_in_prompt:
            return [], f"no '{marker}' in the answer"
    found: list[str] = []
    for line in text.splitlines():
        statement = clean_text(_BULLET.sub("", line, count=1)).strip(_QUOTES).strip()
        if statement and not statement.endswith(":") and statement.lower() not in (s.lower() for s in found):
            found.append(statement)
    return found, "" if found else "empty answer"
