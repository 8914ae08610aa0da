"""Per-query control flow: conditions on earlier outputs, and bounded loops over a group of steps.

A condition compares a `score` value (e.g. a rerank step's `confidence`, its judge's top P(yes))
with a number: "verify.confidence < 0.8". A bare output name ("confidence") reads the latest value
any step made, so in a loop it is the last round's. A query whose value is missing (the judge
answered nothing usable) does not meet the condition.

A step with `when: CONDITION` runs only for the queries that meet it; the others keep the values
they had. A step with `loop: {through: LAST, while: CONDITION, max_rounds: N}` opens a group of
steps (itself through LAST) that a query enters while the condition holds and repeats until it no
longer does or N rounds have run.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_ROUNDS = 20

_OPERATORS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne}
_CONDITION = re.compile(r"^\s*([A-Za-z_][\w-]*(?:\.[A-Za-z_]\w*)?)\s*(<=|>=|==|!=|<|>)\s*(-?\d+(?:\.\d+)?(?:[eE]-?\d+)?)\s*$")


class LoopSpec(BaseModel):
    """`loop:` on the step that opens a group of steps repeated per query."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    through: str  # the group's last step
    while_: str = Field(alias="while")  # entered, and repeated, while this holds
    max_rounds: int | None = None  # required; a number, not a default, so every loop states its bound


@dataclass(frozen=True)
class Condition:
    value: str  # "STEP.OUTPUT" or a bare output name (the latest made)
    op: str
    number: float

    @classmethod
    def parse(cls, text: str) -> Condition:
        match = _CONDITION.match(text or "")
        if not match:
            raise ValueError(f"condition {text!r} is not VALUE OP NUMBER, e.g. 'verify.confidence < 0.8' (OP: {' '.join(_OPERATORS)})")
        return cls(match.group(1), match.group(2), float(match.group(3)))

    def __str__(self) -> str:
        return f"{self.value} {self.op} {self.number:g}"

    def holds(self, values: dict[str, Any]) -> tuple[bool, str]:
        """Whether the query's values meet the condition, and a line saying why, for the trace."""
        value = values.get(self.value)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
            return False, f"{self.value} has no value, so '{self}' does not hold"
        met = _OPERATORS[self.op](value, self.number)
        return met, f"{self.value} = {value:.4g}: '{self}' {'holds' if met else 'does not hold'}"


@dataclass(frozen=True)
class Loop:
    """A validated loop: the positions of its first and last steps, its condition and bound."""

    first: int
    last: int
    condition: Condition
    max_rounds: int

    def contains(self, position: int) -> bool:
        return self.first <= position <= self.last
