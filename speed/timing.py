"""Time spent inside chosen methods, for the speed scripts: wrap a class's method so that each call
adds its seconds (and a count) under a label."""

from __future__ import annotations

import time
from collections import defaultdict

SPENT: dict[str, float] = defaultdict(float)
CALLS: dict[str, int] = defaultdict(int)


def timed(cls, name: str, label: str) -> None:
    """Wrap cls.name so that its time adds up under SPENT[label] and its calls under CALLS[label]."""
    real = getattr(cls, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            SPENT[label] += time.perf_counter() - start
            CALLS[label] += 1

    setattr(cls, name, wrapper)
