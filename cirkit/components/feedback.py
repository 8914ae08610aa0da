"""feedback: relevance feedback (GenQR's post-retrieval reformulation).

The top `k` results of a first search, as text (their gallery captions, made at index time), go to
an LLM with the query; it answers with refined target descriptions (one per template and sample),
which a second embed and search retrieve with. Every document, rendered prompt and answer is in
the trace; the refined description can be edited by hand and the run re-run from here.

As a critic (WISER's refinement), the template asks for advice instead of a description: `done_if`
is the phrase by which the LLM says the results are right already (its advice is then empty), and
`fallback: answer` keeps the whole answer when it has no answer marker.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from cirkit.components.base import Component, ItemResult, clean_text, generate_keeping_answers
from cirkit.components.rewrite import first_line_answer, parse_answer
from cirkit.components.values import Port
from cirkit.engines.base import GenerationParams, GenerationRequest
from cirkit.errors import CirkitError


class FeedbackParams(GenerationParams):
    max_new_tokens: int = Field(128, ge=1, le=32768)
    k: int = Field(5, ge=1, le=50)  # how many top results are shown to the LLM
    # an unparsable answer: keep the first description, the whole answer, or fail
    fallback: Literal["description", "answer", "error"] = "description"
    done_if: str | None = None  # a phrase in the answer that means "no change needed": the output is empty


class Feedback(Component):
    kind = "feedback"
    description = "Relevance feedback: the LLM reads the first search's top k (their gallery captions) and refines the target description."
    inputs = {
        "results": Port("results", "results"),
        "modification": Port("text", "modification"),
        "description": Port("text", "description"),
        "caption": Port("text", "caption"),
    }
    outputs = {"description": "text", "descriptions": "texts", "sources": "sources", "documents": "texts"}
    model_types = ("llm", "vlm")
    prompt_variables = ("caption", "modification", "description", "documents")
    max_prompts = None
    Params = FeedbackParams
    editable = "description"

    @classmethod
    def given_outputs(cls, value: str | list[str]) -> dict[str, Any]:
        texts = [value] if isinstance(value, str) else list(value)
        return {"description": texts[0], "descriptions": texts, "sources": [{"template": "given", "sample": i + 1} for i in range(len(texts))],
                "documents": []}

    def documents(self, results: list[dict[str, Any]]) -> list[str]:
        from cirkit.gallery.captions import GalleryCaptions

        try:
            captions = GalleryCaptions.of(self.index)
        except CirkitError as exc:
            raise CirkitError(f"relevance feedback reads the gallery captions of the top results, and {exc}") from None
        return ["; ".join(captions.captions[self.index.row_of[hit["path"]]]) for hit in results[: self.params.k]]

    def run(self, items: list[dict[str, Any]]) -> list[ItemResult]:
        documents = [self.documents(item["results"]) for item in items]
        conversations = [
            [
                template.render(
                    caption=item["caption"], modification=item["modification"], description=item["description"],
                    documents="\n".join(f"{r + 1}. {text}" for r, text in enumerate(docs)),
                )
                for template in self.prompts
            ]
            for item, docs in zip(items, documents)
        ]
        requests = [GenerationRequest(messages=m) for per_item in conversations for m in per_item]
        generations, failure = generate_keeping_answers(self.model, requests, self.params)
        per_item = len(self.prompts)
        results = []
        for i, item in enumerate(items):
            result = ItemResult(prompts=conversations[i])
            answers = generations[i * per_item : (i + 1) * per_item]
            if any(a is None for a in answers):
                result.error = f"no answer: {failure}"
                results.append(result)
                continue
            descriptions, sources = [], []
            for template, answer in zip(self.prompts, answers):
                output = template.spec.output
                for sample, gen in enumerate(answer):
                    label = f"refined description {len(descriptions) + 1} ({template.name}, sample {sample + 1})"
                    result.raw.append(gen.text)
                    if output.first_line is not None:
                        parsed, problem = first_line_answer(gen.text, output.first_line, output.until)
                    else:
                        parsed, problem = parse_answer(gen.text, output.after)
                    if gen.finish_reason == "length":
                        result.notes.append(f"{label}: answer cut at max_new_tokens={self.params.max_new_tokens}")
                    if self.params.done_if and self.params.done_if.lower() in gen.text.lower():
                        parsed = ""
                        result.notes.append(f"{label}: the answer says '{self.params.done_if}': no change")
                    elif parsed is None and self.params.fallback == "answer" and clean_text(gen.text):
                        parsed = clean_text(gen.text)
                        result.notes.append(f"{label}: the whole answer kept: {problem}")
                    elif parsed is None:
                        if self.params.fallback == "error":
                            result.error = f"cannot parse the LLM's answer ({label}): {problem}"
                        parsed = item["description"]
                        result.notes.append(f"{label}: fallback to the first description: {problem}")
                    descriptions.append(parsed)
                    sources.append({"template": template.name, "sample": sample + 1})
            result.notes.append(f"feedback from the top {len(documents[i])} results")
            result.outputs = {"description": descriptions[0], "descriptions": descriptions, "sources": sources, "documents": documents[i]}
            results.append(result)
        return results
