"""One entry point over every benchmark: ``load(bench, data_dir, split)``."""

from __future__ import annotations

from pathlib import Path

from cirkit.benchmarks import circo, cirr, fashioniq, genecis, triplets
from cirkit.benchmarks.base import Benchmark, check_split
from cirkit.errors import CirkitError

#: benchmark name -> its valid splits (None: any JSONL file name)
BENCHMARKS: dict[str, tuple[str, ...] | None] = {
    "cirr": cirr.SPLITS,
    "circo": circo.SPLITS,
    **{f"fashioniq-{c}": fashioniq.SPLITS for c in fashioniq.CATEGORIES},
    "genecis": genecis.TASKS,
    "triplets": None,
}
#: groups scored together, with the average the papers report
GROUPS = {"fashioniq": fashioniq.SPLITS, "genecis": ("all",)}


def _unknown(bench: str) -> CirkitError:
    names = ", ".join([*BENCHMARKS, "fashioniq (all categories, for scoring)"])
    return CirkitError(f"unknown benchmark '{bench}'; valid benchmarks: {names}")


def load(bench: str, data_dir: str | Path, split: str) -> Benchmark:
    """Load one benchmark split from its annotation files under `data_dir` (images are not needed).

    - ``cirr``: split ``val`` or ``test1``
    - ``circo``: ``val`` or ``test``
    - ``fashioniq-dress``, ``fashioniq-shirt``, ``fashioniq-toptee``: ``val`` or ``test``
    - ``genecis``: the task, ``focus_object``, ``change_object``, ``focus_attribute``, ``change_attribute``
    - ``triplets``: ``DATA_DIR/SPLIT.jsonl``
    """
    data_dir = Path(data_dir)
    if bench == "cirr":
        return cirr.load(data_dir, split)
    if bench == "circo":
        return circo.load(data_dir, split)
    if bench.startswith("fashioniq-") and bench in BENCHMARKS:
        return fashioniq.load(data_dir, split, bench.split("-", 1)[1])
    if bench == "fashioniq":
        raise CirkitError("fashioniq: load one category: fashioniq-dress, fashioniq-shirt or fashioniq-toptee "
                          "(load_group('fashioniq', ...) loads all three)")
    if bench == "genecis":
        return genecis.load(data_dir, split)
    if bench == "triplets":
        return triplets.load(data_dir, split)
    raise _unknown(bench)


def load_group(bench: str, data_dir: str | Path, split: str) -> dict[str, Benchmark]:
    """Every member of a group: ``fashioniq`` (its three categories) or ``genecis`` with split ``all``
    (every task whose file is present); any other benchmark gives a group of one, keyed by its name."""
    data_dir = Path(data_dir)
    if bench == "fashioniq":
        check_split("fashioniq", split, fashioniq.SPLITS)
        return {c: fashioniq.load(data_dir, split, c) for c in fashioniq.CATEGORIES}
    if bench == "genecis" and split == "all":
        tasks = genecis.available_tasks(data_dir)
        if not tasks:
            raise CirkitError(f"GeneCIS: no task file under {data_dir / 'genecis'} "
                              f"(expected {', '.join(t + '.json' for t in genecis.TASKS)})")
        return {t: genecis.load(data_dir, t) for t in tasks}
    if bench == "genecis":
        valid = (*genecis.TASKS, "all")
        check_split("genecis", split, valid)
    if bench not in BENCHMARKS:
        raise _unknown(bench)
    b = load(bench, data_dir, split)
    return {b.split if bench == "genecis" else bench: b}


def family(benchmark: Benchmark) -> str:
    """The benchmark family a per-benchmark pipeline map names: cirr, circo, fashioniq,
    genecis-focus-object (and the other three GeneCIS tasks), triplets."""
    if benchmark.protocol == "genecis":
        return "genecis-" + benchmark.split.replace("_", "-")
    return benchmark.protocol
