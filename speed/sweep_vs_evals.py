"""A 12-setting `cirkit eval sweep` of a fusion parameter vs 12 separate `cirkit eval` runs, on the
toy world with the shipped toy models (caption -> rewrite -> embed caption, rewrite and image ->
PDV fusion -> search), every held-out query.

Each command runs as a user runs it, in its own process. The separate evals are measured twice:
each on a store of its own (every step computed, as a fresh eval does), and all on one store (the
step cache shared, each process loading its models again). The sweep and the evals must report the
same metrics for every setting.

    python speed/sweep_vs_evals.py [--limit N] [--values 12]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from test_sweep import toy_pdv  # noqa: E402  the pipeline the sweep test measures, PDV on the toy models


def cirkit(*args: str) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cirkit", *args, "--json"], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"cirkit {' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
    return seconds, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="only the first N queries (default: all 250)")
    parser.add_argument("--values", type=int, default=12, help="settings of pdv.beta, evenly from 0 to 1")
    args = parser.parse_args()

    from cirkit.toy import benchmark as toy

    values = [round(i / (args.values - 1), 4) for i in range(args.values)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        world = tmp / "world"
        toy.write_benchmark(world)
        base = toy_pdv(tmp / "toy-pdv.yaml")
        data = yaml.safe_load(base.read_text())
        files = []
        for value in values:
            data["steps"][5]["params"]["beta"] = value
            files.append(tmp / f"toy-pdv-beta-{value}.yaml")
            files[-1].write_text(yaml.safe_dump(data, sort_keys=False))
        common = ["cirr", "--data", str(world), "--split", toy.SPLIT, "--index", str(tmp / "idx")]
        common += ["--limit", str(args.limit)] if args.limit else []
        # the gallery index is built once, untimed: every measured command finds it
        cirkit("--data-dir", str(tmp / "warm"), "eval", *common[:7], "--pipeline", str(base), "--limit", "1")

        sweep_s, sweep = cirkit("--data-dir", str(tmp / "sweep"), "eval", "sweep", *common, "--pipeline", str(base),
                                "--grid", f"pdv.beta={json.dumps(values)}")
        fresh = [cirkit("--data-dir", str(tmp / f"fresh-{i}"), "eval", *common, "--pipeline", str(f)) for i, f in enumerate(files)]
        shared = [cirkit("--data-dir", str(tmp / "shared"), "eval", *common, "--pipeline", str(f)) for f in files]

    metric = sweep["metric"]
    for row, (_, a), (_, b) in zip(sweep["settings"], fresh, shared):
        for key, value in row["metrics"].items():
            if isinstance(value, float) and not (value == a["metrics"][key] == b["metrics"][key]):
                sys.exit(f"pdv.beta={row['setting']['pdv.beta']}: {key} differs: sweep {value}, evals {a['metrics'][key]} / {b['metrics'][key]}")
    fresh_s = sum(s for s, _ in fresh)
    shared_s = sum(s for s, _ in shared)
    queries = args.limit or toy.NUM_QUERIES
    scores = ", ".join(f"{row['metrics'][metric]:.1f}" for row in sweep["settings"])
    print(f"{len(values)} settings of pdv.beta, {queries} queries; metrics identical for every setting ({metric}: {scores})")
    print(f"sweep (one process):                      {sweep_s:7.1f} s")
    n = len(files)
    print(f"{n} evals, each on its own store:          {fresh_s:7.1f} s  (one eval: {fresh_s / n:.1f} s)  sweep/evals = {sweep_s / fresh_s:.3f}")
    print(f"{n} evals, one store (step cache shared):  {shared_s:7.1f} s  sweep/evals = {sweep_s / shared_s:.3f}")
    one = statistics.median(s for s, _ in fresh)
    per_setting = (sweep_s - one) / (len(values) - 1)
    print(f"sweep = one eval (median {one:.1f} s) + {len(values) - 1} x {per_setting:.2f} s per further setting")


if __name__ == "__main__":
    main()
