"""What every component is: typed inputs and outputs, validated params, and a batched `run`.

A component knows nothing of pipelines, stores or the command line. It gets a batch of items
(one dict of input values per query) and returns, per item, its outputs and the trace of what it
sent to and got from a model.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from cirkit.components.values import Port
from cirkit.errors import PartialGenerationError


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class ItemResult:
    """One query's result of one step."""

    outputs: dict[str, Any] = field(default_factory=dict)
    prompts: list[Any] = field(default_factory=list)  # exactly what was sent to the model
    raw: list[str] = field(default_factory=list)  # exactly what the model answered
    notes: list[str] = field(default_factory=list)  # fallbacks, truncations, ...
    error: str | None = None


class Component:
    kind: ClassVar[str]
    description: ClassVar[str] = ""
    inputs: ClassVar[dict[str, Port]] = {}
    outputs: ClassVar[dict[str, str]] = {}  # output name -> value type
    # model types the step's model may have; empty when the component uses no model
    model_types: ClassVar[tuple[str, ...]] = ()
    # variables the component fills in its prompt template; None when it takes no prompt
    prompt_variables: ClassVar[tuple[str, ...] | None] = None
    max_prompts: ClassVar[int | None] = 1  # None: any number of templates (an ensemble)
    # Whether outputs may be reused from the run store's cache when the inputs are unchanged
    cacheable: ClassVar[bool] = True
    # The text output a person may edit by hand (`cirkit runs edit`); None when there is none
    editable: ClassVar[str | None] = None
    # The image output a person may replace by hand (`cirkit runs edit STEP --file new.png`); None when there is none
    editable_image: ClassVar[str | None] = None
    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, params: BaseModel, *, model: Any = None, prompts: list[Any] = (), index: Any = None):
        self.params = params
        self.model = model
        self.prompts = list(prompts)
        self.index = index

    def run(self, items: list[dict[str, Any]]) -> list[ItemResult]:
        raise NotImplementedError

    @classmethod
    def check(cls, params: BaseModel, wiring: dict[str, str | None]) -> None:
        """Raise ValueError when the params need an input the file left unwired."""

    @classmethod
    def for_request(cls, params: BaseModel, *, k: int | None) -> BaseModel:
        """The params for a request that asks for `k` results (a component that ranks goes at least that deep)."""
        return params

    @classmethod
    def given_outputs(cls, value: str | list[str]) -> dict[str, Any]:
        """The outputs for a text (or texts) given by hand or from a file instead of a model."""
        text = value if isinstance(value, str) else value[0]
        return {cls.editable: text}


def amended(modification: str, suggestion: str | None, form: str) -> str:
    """The modification with a critic's suggestion joined to it by `form` ("{modification} and {suggestion}."),
    or unchanged when there is no suggestion."""
    if not suggestion or not suggestion.strip():
        return modification
    return form.format(modification=modification, suggestion=suggestion.strip())


def check_amend_form(form: str) -> str:
    """A pydantic validator: the form must place both the modification and the suggestion."""
    if "{modification}" not in form or "{suggestion}" not in form:
        raise ValueError("must contain {modification} and {suggestion}")
    return form


def clean_text(text: str) -> str:
    """Model output made fit to pass on: control characters dropped, whitespace collapsed."""
    kept = "".join(ch if ch in "\n\t" or unicodedata.category(ch) != "Cc" else " " for ch in text)
    return " ".join(kept.split())


def generate_keeping_answers(model: Any, requests: list, params: Any, **options: Any) -> tuple[list, str | None]:
    """The model's generations per request, and why some are None when a batch failed part-way."""
    try:
        return model.generate(requests, params, **options), None
    except PartialGenerationError as exc:
        return exc.results, str(exc)
