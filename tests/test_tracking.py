"""MLflow tracking: each experiment an MLflow run (params, every metric, the pipeline and the failures
page as artifacts), a sweep as a parent run with nested runs; MLflow missing is one line up front."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cirkit.toy import benchmark as toy
from test_sweep import toy_pdv

LIMIT = 8


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tracking-world")
    toy.write_benchmark(root)
    return root


def test_a_sweep_is_a_parent_run_with_a_nested_run_per_setting(cli, world, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)  # and as it was after the test (MLflow sets MLFLOW_EXPERIMENT_ID itself)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # MLflow's default store is relative to where the command runs
    pipeline = toy_pdv(tmp_path / "toy-pdv.yaml")
    res = cli("eval", "sweep", "cirr", "--data", world, "--split", toy.SPLIT, "--pipeline", pipeline, "--index", tmp_path / "idx",
              "--limit", LIMIT, "--grid", "pdv.beta=[0.0, 1.0]", "--mlflow", "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)

    client = MlflowClient(mlflow.get_tracking_uri())
    assert mlflow.get_tracking_uri().endswith(str(work / "mlflow.db")) or (work / "mlruns").is_dir()
    experiment = client.get_experiment_by_name(f"cirkit cirr {toy.SPLIT}")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
                      key=lambda r: float(r.data.params["grid.pdv.beta"]))
    assert parent.data.params["cirkit.sweep"] == out["sweep"] and parent.data.params["metric"] == "Avg"
    assert json.loads(parent.data.params["grid"]) == [{"step": "pdv", "param": "beta", "values": [0.0, 1.0]}]
    assert parent.data.tags["best"] == "pdv.beta=" + ("0.0" if out["settings"][0]["best"] else "1.0")

    store = sqlite3.connect(tmp_path / "data" / "runs.sqlite3")
    assert len(children) == 2
    for child, row in zip(children, out["settings"]):
        (exp_id,) = row["experiments"]
        assert child.data.params["cirkit.experiment"] == exp_id
        (stored_hash,) = store.execute("SELECT pipeline_hash FROM experiments WHERE id=?", (exp_id,)).fetchone()
        assert child.data.params["pipeline.hash"] == stored_hash and child.data.params["pipeline"] == "toy-pdv"
        for key, value in row["metrics"].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert child.data.metrics[key.replace("@", "_at_")] == pytest.approx(value), key
        assert child.data.metrics["tokens.spent_input"] + child.data.metrics["tokens.cached_input"] > 0
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert artifacts == {"pipeline.yaml", "failures.html"}
        text = Path(client.download_artifacts(child.info.run_id, "pipeline.yaml", str(tmp_path))).read_text()
        assert f"beta: {row['setting']['pdv.beta']}" in text
        page = Path(client.download_artifacts(child.info.run_id, "failures.html", str(tmp_path))).read_text()
        assert page.lstrip().lower().startswith("<!doctype html")


def test_tracking_uri_in_the_environment_logs_a_plain_eval(world, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, "MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": "my lab", "HF_HUB_OFFLINE": "1"}
    # a process of its own, as a user runs it: MLflow keeps per-process state about the stores it has seen
    res = subprocess.run([sys.executable, "-m", "cirkit", "--data-dir", str(tmp_path / "data"), "eval", "cirr", "--data", str(world),
                          "--split", toy.SPLIT, "--pipeline", "toy", "--index", str(tmp_path / "idx"), "--limit", str(LIMIT), "--json"],
                         env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)  # artifacts go to ./mlruns
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("my lab").experiment_id])
    assert run.data.params["cirkit.experiment"] == out["experiment"] and run.data.metrics["R_at_1"] == out["metrics"]["R@1"]


def test_mlflow_missing_is_one_line_before_any_model_loads(cli, world, tmp_path, monkeypatch, engine_calls_counter):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for args in (["--mlflow"], ["--grid", "search.k=[10]", "--mlflow"]):
        command = ["eval", "sweep"] if "--grid" in args else ["eval"]
        res = cli(*command, "cirr", "--data", world, "--split", toy.SPLIT, "--pipeline", "toy", "--index", tmp_path / "idx", *args)
        assert res.exit_code == 1
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "--mlflow needs MLflow: pip install 'cirkit[mlflow]'" in lines[0], res.stderr
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")
    res = cli("eval", "cirr", "--data", world, "--split", toy.SPLIT, "--pipeline", "toy", "--index", tmp_path / "idx")
    assert res.exit_code == 1 and "MLFLOW_TRACKING_URI is set, so tracking needs MLflow" in res.stderr
    assert engine_calls_counter == [] and not (tmp_path / "idx").exists()
