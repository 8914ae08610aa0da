"""`cirkit eval sweep` and `--repeats` on the toy world (shipped toy models): settings share every step
they share, one experiment per setting and repeat grouped as one sweep, bad grids refused up front."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from cirkit.pipelines.spec import builtin_path
from cirkit.toy import benchmark as toy

LIMIT = 24


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep-world")
    toy.write_benchmark(root)
    return root


def toy_pdv(path: Path) -> Path:
    """The toy pipeline with PDV fusion of the rewrite, the caption and the reference image."""
    data = yaml.safe_load(builtin_path("toy").read_text())
    for model in data["models"].values():
        for field in ("id", "name", "pretrained"):
            if field in model:
                model[field] = str((builtin_path("toy").parent / model[field]).resolve())
    caption, rewrite, embed, search = data["steps"]
    data["name"] = "toy-pdv"
    data["steps"] = [
        caption, rewrite,
        {"name": "embed_caption", "kind": "embed", "model": "clip", "inputs": {"texts": "caption"}},
        embed,
        {"name": "embed_image", "kind": "embed_image", "model": "clip"},
        {"name": "pdv", "kind": "pdv", "inputs": {"caption_vectors": "embed_caption.query_vectors"},
         "params": {"alpha_text": 0.5, "alpha_image": 1.0, "beta": 0.7}},
        search,
    ]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def pipeline(tmp_path) -> Path:
    return toy_pdv(tmp_path / "toy-pdv.yaml")


def sweep(cli, world, tmp_path, pipeline, *args):
    return cli("eval", "sweep", "cirr", "--data", world, "--split", toy.SPLIT, "--pipeline", pipeline,
               "--index", tmp_path / "idx", "--limit", LIMIT, *map(str, args))


def requests_by_model(calls) -> dict[str, int]:
    out: dict[str, int] = {}
    for model, n in calls:
        out[Path(model).name] = out.get(Path(model).name, 0) + n
    return out


def test_a_sweep_runs_the_shared_steps_once_and_stores_one_experiment_per_setting(cli, world, tmp_path, pipeline, engine_calls_counter):
    res = sweep(cli, world, tmp_path, pipeline, "--grid", "pdv.beta=[0.0, 0.5, 1.0]", "--grid", "pdv.alpha_image=[0, 2]", "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    # the captioner and the LLM answered each query once, for all six settings
    assert requests_by_model(engine_calls_counter) == {"captioner": LIMIT, "llm": LIMIT}
    settings = [row["setting"] for row in out["settings"]]
    assert settings == [{"pdv.beta": b, "pdv.alpha_image": a} for b in (0.0, 0.5, 1.0) for a in (0, 2)]
    assert out["metric"] == "Avg" and out["repeats"] == 1
    r1 = [row["metrics"]["R@1"] for row in out["settings"]]
    assert len(set(r1)) > 1, r1  # beta 0 (image side only) retrieves differently from beta 1 (text side only)
    best = max(range(6), key=lambda i: out["settings"][i]["metrics"]["Avg"])
    assert [row["best"] for row in out["settings"]] == [i == best for i in range(6)]
    assert out["best"] == settings[best]

    store = sqlite3.connect(tmp_path / "data" / "runs.sqlite3")
    rows = store.execute("SELECT id, setting, repeat, pipeline_hash FROM experiments WHERE sweep_id=? ORDER BY rowid", (out["sweep"],)).fetchall()
    assert [json.loads(r[1]) for r in rows] == settings and {r[2] for r in rows} == {0}
    assert len({r[3] for r in rows}) == 6  # each setting is its own pipeline
    exp = json.loads(cli("runs", "show", json.loads(cli("runs", "list", "--json", "--limit", "1").stdout)[0]["id"], "--json").stdout)
    origins = {s["name"]: s["origin"] for s in exp["steps"]}
    assert origins["caption"] == origins["rewrite"] == origins["embed"] == "cache" and origins["pdv"] == "ran"

    table = sweep(cli, world, tmp_path, pipeline, "--grid", "pdv.beta=[0.0, 1.0]")
    assert table.exit_code == 0, table.stderr
    assert requests_by_model(engine_calls_counter) == {"captioner": LIMIT, "llm": LIMIT}  # again: all from the cache
    assert "pdv.beta" in table.stdout and "R_subset@1" in table.stdout and "* best by Avg" in table.stdout
    assert "best: pdv.beta=" in table.stdout
    listed = cli("eval", "list", "--limit", "50").stdout
    assert all(r[0] in listed for r in rows)
    line = next(line for line in listed.splitlines() if rows[-1][0] in line)
    assert f"toy-pdv pdv.beta=1.0 pdv.alpha_image=2 (sweep {out['sweep']})" in line


@pytest.mark.parametrize(
    "grid, message",
    [
        (["pdvx.beta=[0.5]"], "--grid pdvx.beta: pipeline 'toy-pdv' has no step 'pdvx' (steps: caption, rewrite,"),
        (["pdv.gamma=[0.5]"], "--grid pdv.gamma: a pdv step has no parameter 'gamma' (its parameters: alpha_text, alpha_image, beta"),
        (["pdv.beta=[0.5, 1.5]"], "--grid pdv.beta=1.5: step 'pdv': field 'params.beta': Input should be less than or equal to 1"),
        (["pdv.beta=[]"], "--grid pdv.beta: the list of values is empty"),
        (["pdv.beta"], "--grid expects STEP.PARAM=[v1,v2,...]"),
        (["pdv.beta=[0.5, 0.5]"], "--grid pdv.beta: value 0.5 is given twice"),
        (["pdv.beta=[0.5", ], "--grid pdv.beta: the values are not a YAML list"),
        ([], "the grid is empty"),
        (["pdv.beta=[0.5]", "--metric", "R@7"], "--metric R@7: cirr val reports no such metric (its metrics: R@1, R@5"),
    ],
)
def test_a_bad_grid_is_one_line_before_anything_runs(cli, world, tmp_path, pipeline, engine_calls_counter, grid, message):
    args = [a for g in grid for a in (["--grid", g] if not g.startswith(("--", "R@")) else [g])]
    res = sweep(cli, world, tmp_path, pipeline, *args)
    assert res.exit_code == 1, res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert engine_calls_counter == [] and not (tmp_path / "idx").exists()  # no model loaded, nothing indexed


def test_repeats_resample_only_the_sampling_steps_and_report_the_spread(cli, world, tmp_path, pipeline, engine_calls_counter):
    res = sweep(cli, world, tmp_path, pipeline, "--grid", "rewrite.temperature=[1.5]", "--repeats", "3", "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    # the caption is greedy: once per query; the sampled rewrite: once per query and repeat (seeds 0, 1, 2)
    assert requests_by_model(engine_calls_counter) == {"captioner": LIMIT, "llm": 3 * LIMIT}
    (row,) = out["settings"]
    assert len(row["experiments"]) == 3 and out["repeats"] == 3
    store = sqlite3.connect(tmp_path / "data" / "runs.sqlite3")
    per_repeat = [json.loads(m) for (m,) in store.execute(
        "SELECT metrics FROM experiments WHERE sweep_id=? ORDER BY repeat", (out["sweep"],))]
    r1 = [m["R@1"] for m in per_repeat]
    mean = sum(r1) / 3
    assert row["metrics"]["R@1"] == pytest.approx(mean)
    assert row["sd"]["R@1"] == pytest.approx((sum((v - mean) ** 2 for v in r1) / 2) ** 0.5)
    seeds = {json.loads(cli("runs", "show", rid, "--json").stdout)["steps"][1]["params"]["seed"]
             for (rid,) in store.execute("SELECT run_id FROM experiment_runs WHERE query_id=(SELECT MIN(query_id) FROM experiment_runs)")}
    assert seeds == {0, 1, 2}


def test_eval_repeats_prints_mean_and_sd(cli, world, tmp_path, engine_calls_counter):
    res = cli("eval", "cirr", "--data", world, "--split", toy.SPLIT, "--pipeline", "toy", "--index", tmp_path / "idx",
              "--limit", LIMIT, "--repeats", "2")
    assert res.exit_code == 0, res.stderr
    # greedy decoding with local models: the repeats are the same, and said to be
    assert "repeats will be the same" in res.stderr
    assert requests_by_model(engine_calls_counter) == {"captioner": LIMIT, "llm": LIMIT}
    assert "mean ± sd over 2 repeats" in res.stdout and "± 0.00" in res.stdout
    out = json.loads(cli("eval", "cirr", "--data", world, "--split", toy.SPLIT, "--pipeline", "toy", "--index", tmp_path / "idx",
                         "--limit", LIMIT, "--repeats", "2", "--json").stdout)
    assert out["settings"][0]["sd"]["R@1"] == 0.0 and len(out["settings"][0]["experiments"]) == 2
