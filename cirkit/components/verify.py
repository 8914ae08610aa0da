"""verify: each proposition checked on each of the top-K candidates by a VLM, candidates reordered
by the share that hold.

For candidate c with propositions 1..m, the VLM sees the candidate image and the template asks
whether proposition j holds; p_j = P(yes) = p(yes) / (p(yes) + p(no)) from the first answer token's
log-probabilities where the engine gives them, else the parsed answer (yes 1, no 0). Then

    share(c) = mean of p_j over the propositions with a verdict
    score(c) = retrieval score + weight * share(c)

and the top K are sorted by score; candidates below K keep their order after them. Every
(query, candidate, proposition) check of a batch of queries goes to the model together; each
verdict keeps its checks (proposition, answer, P(yes), its source and the log-probabilities).
The step's `confidence` is the highest share.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from cirkit.components.base import Component, ItemResult, generate_keeping_answers
from cirkit.components.rerank import PAIRS_PER_CALL, _reorder, top_verifier_score, verifier_score
from cirkit.components.values import Port
from cirkit.engines.base import GenerationParams, GenerationRequest
from cirkit.errors import ImageError
from cirkit.images import load_image


class VerifyParams(GenerationParams):
    k: int = Field(20, ge=1, le=1000)  # candidates checked per query
    weight: float = Field(1.0, ge=0.0, le=100.0)  # final = retrieval score + weight * share that hold
    max_new_tokens: int = Field(1, ge=1, le=32768)
    n: int = Field(1, ge=1, le=1)


class Verify(Component):
    kind = "verify"
    description = "Check each proposition on each top-K candidate with a VLM (yes/no); reorder by the share that hold."
    inputs = {"propositions": Port("propositions", "propositions"), "results": Port("results", "results")}
    outputs = {"results": "results", "verdicts": "verdicts", "confidence": "score"}
    model_types = ("vlm",)
    prompt_variables = ("proposition",)
    Params = VerifyParams

    def run(self, items: list[dict[str, Any]]) -> list[ItemResult]:
        template = self.prompts[0]
        results, pairs = [], []
        for i, item in enumerate(items):
            props = list(item["propositions"])
            result = ItemResult(prompts=[{"images": ["candidate"], "messages": template.render(proposition=p)} for p in props])
            candidates = item["results"][: self.params.k]
            if len(item["results"]) < self.params.k:
                result.notes.append(f"k={self.params.k} but the search returned {len(item['results'])} candidates: checked them all")
            result.outputs["verdicts"] = [None] * len(candidates)
            results.append(result)
            pairs.extend((i, c) for c in range(len(candidates)))
        failures: dict[int, str] = {}
        per_call = max(1, PAIRS_PER_CALL // max(1, max((len(item["propositions"]) for item in items), default=1)))
        for start in range(0, len(pairs), per_call):
            chunk, requests = [], []
            for i, c in pairs[start : start + per_call]:
                hit = items[i]["results"][c]
                try:
                    image = load_image(hit["file"])
                except ImageError as exc:
                    results[i].outputs["verdicts"][c] = _verdict(hit, [], f"candidate image: {exc}")
                    continue
                chunk.append((i, c))
                requests.extend(GenerationRequest(messages=p["messages"], image=image) for p in results[i].prompts)
            generations, failure = generate_keeping_answers(self.model, requests, self.params, logprobs_of=("yes", "no")) if requests else ([], None)
            at = 0
            for i, c in chunk:
                props = items[i]["propositions"]
                answers, at = generations[at : at + len(props)], at + len(props)
                if any(a is None for a in answers):
                    failures[i] = f"no answer: {failure}"
                    continue
                checks = []
                for proposition, answer in zip(props, answers):
                    gen = answer[0]
                    results[i].raw.append(gen.text)
                    p_yes, source = verifier_score(gen.text, gen.logprobs)
                    checks.append({"proposition": proposition, "answer": gen.text, "p_yes": p_yes, "source": source, "logprobs": gen.logprobs})
                results[i].outputs["verdicts"][c] = _verdict(items[i]["results"][c], checks, None)
        for i, (item, result) in enumerate(zip(items, results)):
            if i in failures:
                results[i] = ItemResult(prompts=result.prompts, raw=result.raw, error=failures[i])
                continue
            verdicts = result.outputs["verdicts"]
            result.notes.extend(f"#{v['rank']} {v['path']}: {v['note']}: kept its retrieval score" for v in verdicts if v["note"])
            result.outputs["results"] = _reorder(item["results"], verdicts, self.params.weight)
            result.outputs["confidence"] = top_verifier_score(verdicts)
        return results


def _verdict(hit: dict[str, Any], checks: list[dict[str, Any]], note: str | None) -> dict[str, Any]:
    scored = [check["p_yes"] for check in checks if check["p_yes"] is not None]
    share = sum(scored) / len(scored) if scored else None
    if note is None and share is None:
        note = "no proposition got a yes/no answer"
    holds = sum(p >= 0.5 for p in scored)
    answer = f"{holds}/{len(checks)} hold" if checks else None
    source = "logprobs" if scored and all(c["source"] == "logprobs" for c in checks if c["p_yes"] is not None) else "parsed" if scored else "unjudged"
    return {"rank": hit["rank"], "path": hit["path"], "answer": answer, "verifier": share, "source": source, "note": note, "checks": checks}
