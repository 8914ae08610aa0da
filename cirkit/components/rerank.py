"""rerank: a multimodal LLM judges the top-K candidates, and its verdicts reorder them.

For each (query, candidate) pair the model sees the reference image and the candidate (or the
candidate alone, for models that take one image) with a yes/no question from the template. The
verifier score is P(yes) = p(yes) / (p(yes) + p(no)) from the first answer token's
log-probabilities where the engine gives them, else the answer parsed: yes = 1, no = 0, or a number
(0..1, 0..10 or 0..100, scaled to 0..1). Each judged candidate scores

    retrieval score + weight * verifier score

and the top K are sorted by that (with `sort_by: verifier`, by the verifier score alone, the
retrieval score breaking ties); candidates below K keep their order after them. An answer that
is neither yes/no nor a number leaves the candidate its retrieval score, and the trace says so.
All pairs of a batch of queries go to the model together. The step's `confidence` is the highest
verifier score, for a condition or loop on how sure the judge is.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import Field

from cirkit.components.base import Component, ItemResult, clean_text, generate_keeping_answers
from cirkit.components.values import Port
from cirkit.engines.base import GenerationParams, GenerationRequest
from cirkit.errors import ImageError
from cirkit.images import load_image

PAIRS_PER_CALL = 512  # (query, candidate) pairs sent to the model at once: bounds the images held in memory
_NUMBER = re.compile(r"(?<![\w.-])(\d+(?:\.\d+)?)\s*(%|/\s*10\b|/\s*100\b|out of 10\b|out of 100\b)?", re.IGNORECASE)


class RerankParams(GenerationParams):
    k: int = Field(20, ge=1, le=1000)  # candidates judged per query
    weight: float = Field(1.0, ge=0.0, le=100.0)  # final = retrieval score + weight * verifier score
    sort_by: Literal["score", "verifier"] = "score"  # verifier: the judge's score alone orders the top K
    # show the reference image too; None: when the model takes several images per prompt
    show_reference: bool | None = None
    max_new_tokens: int = Field(8, ge=1, le=32768)
    n: int = Field(1, ge=1, le=1)


class Rerank(Component):
    kind = "rerank"
    description = "Judge the top-K candidates with a multimodal LLM (yes/no) and reorder them."
    inputs = {
        "image": Port("image", "image"),
        "modification": Port("text", "modification"),
        "description": Port("text", "description"),
        "results": Port("results", "results"),
    }
    outputs = {"results": "results", "verdicts": "verdicts", "confidence": "score"}
    model_types = ("vlm",)
    prompt_variables = ("modification", "description")
    Params = RerankParams

    def run(self, items: list[dict[str, Any]]) -> list[ItemResult]:
        show_reference = self.params.show_reference
        if show_reference is None:
            show_reference = getattr(self.model, "max_images_per_prompt", None) != 1
        results = [ItemResult(outputs={}) for _ in items]
        messages, pairs = [], []  # pairs: (item, candidate position)
        for i, item in enumerate(items):
            messages.append(self.prompts[0].render(modification=item["modification"], description=item["description"]))
            candidates = item["results"][: self.params.k]
            result = results[i]
            result.prompts = [{"images": (["reference"] if show_reference else []) + ["candidate"], "messages": messages[i]}]
            if len(item["results"]) < self.params.k:
                result.notes.append(f"k={self.params.k} but the search returned {len(item['results'])} candidates: judged them all")
            result.outputs["verdicts"] = [None] * len(candidates)
            pairs.extend((i, c) for c in range(len(candidates)))
        failures: dict[int, str] = {}
        for start in range(0, len(pairs), PAIRS_PER_CALL):
            chunk, requests = [], []
            for i, c in pairs[start : start + PAIRS_PER_CALL]:  # candidate images loaded a chunk at a time
                hit = items[i]["results"][c]
                try:
                    candidate = load_image(hit["file"])
                except ImageError as exc:
                    results[i].outputs["verdicts"][c] = _verdict(hit, None, None, "unjudged", f"candidate image: {exc}")
                    continue
                image, more = (items[i]["image"], [candidate]) if show_reference else (candidate, [])
                chunk.append((i, c))
                requests.append(GenerationRequest(messages=messages[i], image=image, more_images=more))
            answers, failure = self._judge(requests) if requests else ([], None)
            for (i, c), answer in zip(chunk, answers):
                hit = items[i]["results"][c]
                if answer is None:
                    failures[i] = f"no answer: {failure}"
                    continue
                results[i].raw.append(answer.text)
                results[i].outputs["verdicts"][c] = _judged(hit, answer)
        for i, (item, result) in enumerate(zip(items, results)):
            if i in failures:
                results[i] = ItemResult(prompts=result.prompts, raw=result.raw, error=failures[i])
                continue
            verdicts = result.outputs["verdicts"]
            result.notes.extend(
                f"#{v['rank']} {v['path']}: {v['note']}: kept its retrieval score" for v in verdicts if v["note"]
            )
            result.outputs["results"] = _reorder(item["results"], verdicts, self.params.weight, self.params.sort_by)
            result.outputs["confidence"] = top_verifier_score(verdicts)
        return results

    def _judge(self, requests: list[GenerationRequest]):
        generations, failure = generate_keeping_answers(self.model, requests, self.params, logprobs_of=("yes", "no"))
        return [g[0] if g else None for g in generations], failure


def verifier_score(text: str, logprobs: dict[str, float] | None) -> tuple[float | None, str]:
    """The probability that the answer is yes, and where it came from: logprobs, parsed, or unparsed."""
    if logprobs and "yes" in logprobs and "no" in logprobs:
        yes, no = math.exp(logprobs["yes"]), math.exp(logprobs["no"])
        if yes + no > 0:
            return yes / (yes + no), "logprobs"
    answer = clean_text(text).lower()
    word = re.match(r"[\W_]*([a-z]+)", answer)
    if word and word.group(1) in ("yes", "no"):
        return (1.0 if word.group(1) == "yes" else 0.0), "parsed"
    number = _NUMBER.search(answer)
    if number:
        value, scale = float(number.group(1)), (number.group(2) or "").replace(" ", "").lower()
        if scale == "%" or "100" in scale:
            value /= 100
        elif "10" in scale or 1 < value <= 10:
            value /= 10
        elif value > 10:
            value /= 100
        if 0 <= value <= 1:
            return value, "parsed"
    return None, "unparsed"


def top_verifier_score(verdicts: list[dict[str, Any] | None]) -> float | None:
    """The highest verifier score among the judged candidates: how sure the judge is of its best one."""
    return max((v["verifier"] for v in verdicts if v and v["verifier"] is not None), default=None)


def _judged(hit: dict[str, Any], answer) -> dict[str, Any]:
    score, source = verifier_score(answer.text, answer.logprobs)
    note = f"answer {answer.text[:80]!r} is neither yes/no nor a number" if score is None else None
    return _verdict(hit, answer.text, score, source, note)


def _verdict(hit: dict[str, Any], answer: str | None, score: float | None, source: str, note: str | None) -> dict[str, Any]:
    return {"rank": hit["rank"], "path": hit["path"], "answer": answer, "verifier": score, "source": source, "note": note}


def _reorder(ranked: list[dict[str, Any]], verdicts: list[dict[str, Any]], weight: float, sort_by: str = "score") -> list[dict[str, Any]]:
    judged = []
    for hit, verdict in zip(ranked, verdicts):
        bonus = weight * verdict["verifier"] if verdict["verifier"] is not None else 0.0
        verdict["retrieval_score"] = hit["score"]
        verdict["score"] = hit["score"] + bonus
        judged.append({**hit, "retrieval_score": hit["score"], "score": verdict["score"], "verifier": verdict["verifier"]})
    if sort_by == "verifier":
        judged.sort(key=lambda h: (-(h["verifier"] if h["verifier"] is not None else -1.0), -h["retrieval_score"]))
    else:
        judged.sort(key=lambda h: -h["score"])
    return [{**hit, "rank": r + 1} for r, hit in enumerate(judged + ranked[len(verdicts) :])]
