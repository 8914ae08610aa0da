"""Tokens and money: totals over stored steps, and an optional price table that turns them into cost.

A price file (YAML) gives, per model id as the run records it (`runs show`: model=...; a local model
also by its folder's name), the price of one million input and output tokens:

    Qwen/Qwen2.5-7B-Instruct: {input: 0.30, output: 0.90}
    gpt-4o-mini: {input: 0.15, output: 0.60}

Tokens a step took from the cache were spent by the run that first made its output: they are
counted apart ("cached") and cost nothing again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cirkit.errors import CirkitError, one_line


def load_prices(path: str | Path | None) -> dict[str, dict[str, float]]:
    """{model id: {"input": price per 1M tokens, "output": ...}}; one-line CirkitError if malformed."""
    if path is None:
        return {}
    path = Path(path).expanduser()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CirkitError(f"--prices {path}: cannot read it: {one_line(exc)}") from None
    except yaml.YAMLError as exc:
        raise CirkitError(f"--prices {path}: not valid YAML: {one_line(exc)}") from None
    if not isinstance(data, dict) or not data:
        raise CirkitError(f"--prices {path}: expected a mapping {{model id: {{input: USD per 1M tokens, output: ...}}}}")
    prices = {}
    for model, entry in data.items():
        if not isinstance(entry, dict) or not set(entry) <= {"input", "output"} or not entry:
            raise CirkitError(f"--prices {path}: model '{model}': expected {{input: PRICE, output: PRICE}} per 1M tokens, got {entry!r}")
        for key, value in entry.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise CirkitError(f"--prices {path}: model '{model}': '{key}' must be a number >= 0, got {value!r}")
        prices[str(model)] = {"input": float(entry.get("input", 0.0)), "output": float(entry.get("output", 0.0))}
    return prices


def token_totals(steps: list[Any]) -> dict[str, Any]:
    """Tokens over step records (of one run or many): spent (model calls made) and cached (outputs taken
    from the cache or a parent run), in total, per step name and per model id."""
    total = _empty()
    by_step: dict[str, dict[str, int]] = {}
    by_model: dict[str, dict[str, int]] = {}
    for step in steps:
        if not step.tokens:
            continue
        kind = "spent" if step.origin == "ran" else "cached"
        model = (step.model or {}).get("model") or "?"
        for bucket in (total, by_step.setdefault(step.name, _empty()), by_model.setdefault(str(model), _empty())):
            bucket[f"{kind}_input"] += step.tokens.get("input", 0)
            bucket[f"{kind}_output"] += step.tokens.get("output", 0)
    return {**total, "by_step": by_step, "by_model": by_model}


def add_totals(many: list[dict[str, Any] | None]) -> dict[str, Any]:
    """token_totals of several experiments added up."""
    out: dict[str, Any] = {**_empty(), "by_step": {}, "by_model": {}}
    for totals in many:
        for key, value in (totals or {}).items():
            if isinstance(value, int):
                out[key] += value
                continue
            for name, counts in value.items():
                into = out[key].setdefault(name, _empty())
                for k, v in counts.items():
                    into[k] += v
    return out


def cost(totals: dict[str, Any], prices: dict[str, dict[str, float]]) -> dict[str, Any] | None:
    """The money the spent tokens cost (and what the cached ones cost when first made), by the price
    table; None without prices. Models without a price are listed, not guessed."""
    if not prices:
        return None
    spent = cached = 0.0
    unpriced = []
    for model, t in totals["by_model"].items():
        price = prices.get(model) or prices.get(Path(model).name)  # a local model also by its folder's name
        if price is None:
            unpriced.append(model)
            continue
        spent += (t["spent_input"] * price["input"] + t["spent_output"] * price["output"]) / 1e6
        cached += (t["cached_input"] * price["input"] + t["cached_output"] * price["output"]) / 1e6
    return {"spent": spent, "cached": cached, "unpriced": unpriced}


def describe(totals: dict[str, Any], money: dict[str, Any] | None = None) -> str:
    """One line: tokens spent and cached, and the cost where priced."""
    line = f"tokens: {totals['spent_input']:,} in + {totals['spent_output']:,} out"
    if totals["cached_input"] or totals["cached_output"]:
        line += f" (and {totals['cached_input']:,} + {totals['cached_output']:,} from the cache, spent before)"
    if money is not None:
        line += f"; cost {money['spent']:.4f}"
        if money["cached"]:
            line += f" (the cached outputs cost {money['cached']:.4f} when made)"
        if money["unpriced"]:
            line += f"; no price for {', '.join(money['unpriced'])}"
    return line


def _empty() -> dict[str, int]:
    return {"spent_input": 0, "spent_output": 0, "cached_input": 0, "cached_output": 0}
