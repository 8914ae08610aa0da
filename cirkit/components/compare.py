"""compare: pairwise comparison of the top few candidates by a multimodal LLM.

For each ordered pair (a, b) of the top `top` candidates (both orders unless `both_orders: false`),
the model sees a first and b second and answers the yes/no template ("does the first match better
than the second?"); p = P(yes) from the first token's log-probabilities, else the parsed answer.
a wins p and b wins 1 - p; each candidate's win share is its wins over its comparisons. The top
`top` are sorted by win share (ties keep their order) and take the scores of the places they land
on, so scores still fall with rank; the rest keep their places. A comparison without a yes/no
answer counts for neither, and the notes say so. All pairs of a batch of queries go together.
"""

from __future__ import annotations

from itertools import combinations, permutations
from typing import Any

from pydantic import Field

from cirkit.components.base import Component, ItemResult, generate_keeping_answers
from cirkit.components.rerank import verifier_score
from cirkit.components.values import Port
from cirkit.engines.base import GenerationParams, GenerationRequest
from cirkit.errors import ImageError
from cirkit.images import load_image


class CompareParams(GenerationParams):
    top: int = Field(3, ge=2, le=10)
    both_orders: bool = True  # ask (a, b) and (b, a): cancels a preference for the first or second image
    max_new_tokens: int = Field(1, ge=1, le=32768)
    n: int = Field(1, ge=1, le=1)


class Compare(Component):
    kind = "compare"
    description = "Compare the top few candidates pairwise with a multimodal LLM (yes/no) and reorder them by win share."
    inputs = {
        "modification": Port("text", "modification"),
        "description": Port("text", "description"),
        "results": Port("results", "results"),
    }
    outputs = {"results": "results", "verdicts": "verdicts"}
    model_types = ("vlm",)
    prompt_variables = ("modification", "description")
    Params = CompareParams

    def run(self, items: list[dict[str, Any]]) -> list[ItemResult]:
        results, requests, asked = [], [], []  # asked: (item, a, b) per request
        for i, item in enumerate(items):
            messages = self.prompts[0].render(modification=item["modification"], description=item["description"])
            result = ItemResult(prompts=[{"images": ["candidate a", "candidate b"], "messages": messages}])
            results.append(result)
            top = item["results"][: self.params.top]
            images = {}
            for c, hit in enumerate(top):
                try:
                    images[c] = load_image(hit["file"])
                except ImageError as exc:
                    result.notes.append(f"#{hit['rank']} {hit['path']}: candidate image: {exc}: not compared")
            order = permutations if self.params.both_orders else combinations
            for a, b in order(sorted(images), 2):
                asked.append((i, a, b))
                requests.append(GenerationRequest(messages=messages, image=images[a], more_images=[images[b]]))
        generations, failure = generate_keeping_answers(self.model, requests, self.params, logprobs_of=("yes", "no")) if requests else ([], None)
        checks: list[list[list[dict[str, Any]]]] = [[[] for _ in item["results"][: self.params.top]] for item in items]
        failed: set[int] = set()
        for (i, a, b), answer in zip(asked, generations):
            if answer is None:
                failed.add(i)
                continue
            gen = answer[0]
            results[i].raw.append(gen.text)
            p, source = verifier_score(gen.text, gen.logprobs)
            hits = items[i]["results"]
            base = {"answer": gen.text, "p_yes": p, "source": source, "logprobs": gen.logprobs}
            checks[i][a].append({**base, "against": hits[b]["path"], "shown": "first", "win": p})
            checks[i][b].append({**base, "against": hits[a]["path"], "shown": "second", "win": None if p is None else 1 - p})
            if p is None:
                results[i].notes.append(f"{hits[a]['path']} vs {hits[b]['path']}: answer {gen.text[:80]!r} is not yes/no: counted for neither")
        for i, (item, result) in enumerate(zip(items, results)):
            if i in failed:
                results[i] = ItemResult(prompts=result.prompts, raw=result.raw, error=f"no answer: {failure}")
                continue
            top = item["results"][: self.params.top]
            verdicts = []
            for hit, mine in zip(top, checks[i]):
                wins = [c["win"] for c in mine if c["win"] is not None]
                share = sum(wins) / len(wins) if wins else None
                verdicts.append({
                    "rank": hit["rank"], "path": hit["path"], "answer": f"won {sum(wins):.2f} of {len(wins)}" if wins else None,
                    "verifier": share, "source": "pairwise", "note": None if wins else "not compared", "checks": mine,
                })
            order = sorted(range(len(top)), key=lambda c: -(verdicts[c]["verifier"] if verdicts[c]["verifier"] is not None else -1.0))
            reordered = [{**top[c], "rank": r + 1, "score": top[r]["score"], "pairwise": verdicts[c]["verifier"]} for r, c in enumerate(order)]
            for r, c in enumerate(order):
                verdicts[c]["retrieval_score"], verdicts[c]["score"] = top[c]["score"], top[r]["score"]
            result.outputs = {"results": reordered + item["results"][len(top) :], "verdicts": verdicts}
        return results
