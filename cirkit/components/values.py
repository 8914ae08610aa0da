"""The value types that flow between steps: every component input and output has one.

Validation checks each wire against these types before any model loads, so a pipeline file that
feeds a ranking into a text encoder is refused with one line.
"""

from __future__ import annotations

from dataclasses import dataclass

VALUE_TYPES: dict[str, str] = {
    "image": "a decoded RGB image (the reference image)",
    "text": "one text (a caption, a description, the modification)",
    "texts": "a list of texts (an ensemble of descriptions, several captions)",
    "vectors": "CLIP vectors, one row per text or image (L2-normalized unless an embed step says normalize: false)",
    "results": "ranked gallery images [{rank, path, score, ...}]",
    "verdicts": "a judge's answer and score per judged candidate",
    "propositions": "atomic yes/no statements the target image should satisfy",
    "sources": "where each text of a list came from (template, sample)",
    "candidates": "gallery images a benchmark gives a query: {paths, only} (rank only them, or them too)",
    "score": "one number per query that conditions and loops test (e.g. the judge's top P(yes))",
}

# A wire may also carry a value into an input of a wider type: one text is a list of one text.
WIDENS_TO: dict[str, set[str]] = {"text": {"texts"}}


def accepts(input_type: str, value_type: str) -> bool:
    return input_type == value_type or input_type in WIDENS_TO.get(value_type, set())


@dataclass(frozen=True)
class Port:
    """A component input: its value type, the value it reads unless wired, whether it may stay unwired."""

    type: str
    default: str | None = None  # None: no default, the pipeline file wires it (`inputs: {name: STEP.OUTPUT}`)
    optional: bool = False  # may stay unwired; the component then gets None

    def __post_init__(self) -> None:
        if self.type not in VALUE_TYPES:
            raise ValueError(f"unknown value type {self.type!r}")


# The values a query brings: the reference image (loaded, RGB) and the modification text.
# `candidates` is None unless the query comes with its own candidate images (GeneCIS, CIRR's subsets).
QUERY_VALUES: dict[str, str] = {"image": "image", "modification": "text", "candidates": "candidates"}
