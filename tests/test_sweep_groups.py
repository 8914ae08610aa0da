"""`cirkit eval sweep` and `--repeats` over a benchmark group (GeneCIS `--split all`): one sweep per
task, and each setting averaged over the tasks as plain `cirkit eval` averages them."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from test_genecis_eval import _genecis_dir

TASKS = ["change_attribute", "change_object", "focus_attribute", "focus_object"]


def test_a_sweep_over_genecis_all_averages_each_setting_over_the_tasks(cli, tmp_path, tiny_pipeline):
    data = _genecis_dir(tmp_path / "bench")
    res = cli("eval", "sweep", "genecis", "--data", data, "--split", "all", "--pipeline", tiny_pipeline,
              "--grid", "rewrite.temperature=[0.0, 1.0]", "--repeats", "2", "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert sorted(out["members"]) == TASKS
    average = out["average"]
    assert average["metric"] == "R@1" and [s["setting"] for s in average["settings"]] == [{"rewrite.temperature": t} for t in (0.0, 1.0)]

    store = sqlite3.connect(tmp_path / "data" / "runs.sqlite3")
    for i, setting in enumerate(average["settings"]):
        # R@1 of each task and repeat as stored, averaged over the tasks per repeat, then mean and sd over the repeats
        per_repeat = np.zeros((len(TASKS), 2))
        for t, task in enumerate(TASKS):
            member = out["members"][task]
            rows = store.execute("SELECT repeat, metrics, setting FROM experiments WHERE sweep_id=? ORDER BY rowid", (member["sweep"],)).fetchall()
            assert len(rows) == 4  # two settings, two repeats
            for repeat, metrics, stored in rows:
                if json.loads(stored) == setting["setting"]:
                    per_repeat[t, repeat] = json.loads(metrics)["R@1"]
        averaged = per_repeat.mean(axis=0)
        assert setting["metrics"]["R@1"] == pytest.approx(averaged.mean())
        assert setting["sd"]["R@1"] == pytest.approx(averaged.std(ddof=1))
        assert set(setting["metrics"]) == {"R@1", "R@2", "R@3"} and len(setting["experiments"]) == 8
    best = max(range(2), key=lambda i: average["settings"][i]["metrics"]["R@1"])
    assert [s["best"] for s in average["settings"]] == [i == best for i in range(2)]

    table = cli("eval", "sweep", "genecis", "--data", data, "--split", "all", "--pipeline", tiny_pipeline,
                "--grid", "rewrite.temperature=[0.0, 1.0]")
    assert table.exit_code == 0, table.stderr
    assert "genecis all: average over 4" in table.stdout and "genecis focus_object: sweep" in table.stdout
    assert "* best by R@1" in table.stdout

    repeats = cli("eval", "genecis", "--data", data, "--split", "all", "--pipeline", tiny_pipeline, "--repeats", "2", "--json")
    assert repeats.exit_code == 0, repeats.stderr
    (row,) = json.loads(repeats.stdout)["average"]["settings"]
    assert row["sd"]["R@1"] == 0.0 and len(row["experiments"]) == 8  # greedy: the repeats are the same


def test_a_group_sweep_refuses_a_metric_it_does_not_average_before_anything_runs(cli, tmp_path, tiny_pipeline, engine_calls_counter):
    data = _genecis_dir(tmp_path / "bench")
    res = cli("eval", "sweep", "genecis", "--data", data, "--split", "all", "--pipeline", tiny_pipeline,
              "--grid", "rewrite.temperature=[0.0, 1.0]", "--metric", "R@5")
    assert res.exit_code == 1 and "--metric R@5: genecis all averages only R@1, R@2, R@3 over its members" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = cli("eval", "sweep", "genecis", "--data", data, "--split", "all", "--pipeline", tiny_pipeline, "--grid", "rewrite.nope=[1]")
    assert res.exit_code == 1 and "a rewrite step has no parameter 'nope'" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert engine_calls_counter == [] and not (data / ".cirkit-index").exists()
