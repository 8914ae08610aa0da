"""MLflow tracking of experiments (the optional `mlflow` extra, imported only when asked for).

Each cirkit experiment becomes one MLflow run in the MLflow experiment "cirkit BENCH SPLIT" (or
$MLFLOW_EXPERIMENT_NAME): the benchmark, split, pipeline name, source and hash, and a sweep's
setting as params; every numeric metric, the token totals and, with a price table, the cost as
metrics; the pipeline text as `pipeline.yaml` and the failures page as `failures.html`. A sweep is
a parent run with one nested run per setting and repeat. The tracking server is
$MLFLOW_TRACKING_URI, else MLflow's default (./mlflow.db with artifacts under ./mlruns in MLflow 3;
./mlruns in MLflow 2).

MLflow metric names take no '@': R@1 is logged as R_at_1.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from cirkit.costs import cost
from cirkit.errors import CirkitError, one_line

FAILURES_ON_PAGE = 50


def wanted(flag: bool) -> bool:
    """--mlflow given, or MLFLOW_TRACKING_URI set."""
    return flag or bool(os.environ.get("MLFLOW_TRACKING_URI"))


def open_tracker(flag: bool, prices: dict[str, dict[str, float]] | None = None) -> Tracker | None:
    """A tracker when MLflow tracking is wanted, None otherwise; CirkitError when MLflow is missing."""
    if not wanted(flag):
        return None
    try:
        import mlflow
    except ImportError as exc:
        why = "--mlflow" if flag else "MLFLOW_TRACKING_URI is set, so tracking"
        raise CirkitError(f"{why} needs MLflow: pip install 'cirkit[mlflow]' (import mlflow failed: {one_line(exc)})") from None
    return Tracker(mlflow, prices or {})


def metric_name(key: str) -> str:
    return re.sub(r"[^\w./\- :]", "_", key.replace("@", "_at_"))


class Tracker:
    def __init__(self, mlflow, prices: dict[str, dict[str, float]]):
        self.mlflow = mlflow
        self.prices = prices
        self.parent = None
        # the user's choice, read before MLflow's set_experiment writes MLFLOW_EXPERIMENT_ID itself
        self.experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
        self.experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME")

    def _experiment(self, bench: str, split: str) -> None:
        if self.experiment_id:
            self._call(self.mlflow.set_experiment, experiment_id=self.experiment_id)
        else:
            self._call(self.mlflow.set_experiment, self.experiment_name or f"cirkit {bench} {split}")

    def start_sweep(self, sweep_id: str, bench: str, split: str, pipeline, axes: list, repeats: int, metric: str) -> None:
        self._experiment(bench, split)
        self.parent = self._call(self.mlflow.start_run, run_name=f"sweep {sweep_id}")
        self._call(self.mlflow.log_params, {
            "cirkit.sweep": sweep_id, "benchmark": bench, "split": split, "pipeline": pipeline.name,
            "pipeline.hash": pipeline.hash, "pipeline.source": pipeline.source, "repeats": repeats, "metric": metric,
            "grid": json.dumps([{"step": a.step, "param": a.param, "values": a.values} for a in axes]),
        })
        self._call(self.mlflow.log_text, pipeline.text, "pipeline.yaml")

    def end_sweep(self, sweep) -> None:
        if self.parent is None:
            return
        if sweep is not None and sweep.best is not None:
            row = sweep.rows[sweep.best]
            self._call(self.mlflow.set_tag, "best", row.setting.label)
            self._call(self.mlflow.log_metrics, {f"best.{metric_name(k)}": float(v) for k, v in row.metrics.items() if _number(v)})
        self._call(self.mlflow.end_run, status="FINISHED" if sweep is not None else "FAILED")
        self.parent = None

    def log_experiment(self, store, exp, pipeline, bench: str, split: str, *, setting: dict[str, Any] | None = None,
                       repeat: int | None = None) -> str:
        """One experiment as an MLflow run (nested in the sweep's run, if one is open); its run id."""
        if self.parent is None:
            self._experiment(bench, split)
        label = f"{exp.id}" + (f" {', '.join(f'{k}={v}' for k, v in setting.items())}" if setting else "")
        label += f" repeat {repeat + 1}" if repeat else ""
        run = self._call(self.mlflow.start_run, run_name=label, nested=self.parent is not None)
        try:
            params = {"cirkit.experiment": exp.id, "benchmark": bench, "split": split, "pipeline": pipeline.name,
                      "pipeline.hash": pipeline.hash, "pipeline.source": pipeline.source}
            params.update({f"grid.{k}": v for k, v in (setting or {}).items()})
            if repeat is not None:
                params["repeat"] = repeat
            self._call(self.mlflow.log_params, params)
            metrics = {metric_name(k): float(v) for k, v in exp.metrics.items() if _number(v)}
            tokens = exp.tokens or {}
            metrics.update({f"tokens.{k}": float(v) for k, v in tokens.items() if isinstance(v, int)})
            money = cost(tokens, self.prices) if tokens and self.prices else None
            if money:
                metrics.update({"cost.spent": money["spent"], "cost.cached": money["cached"]})
            self._call(self.mlflow.log_metrics, metrics)
            self._call(self.mlflow.log_text, pipeline.text, "pipeline.yaml")
            self._call(self.mlflow.log_text, _failures_page(store, exp.id), "failures.html")
        finally:
            self._call(self.mlflow.end_run)
        return run.info.run_id

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # MLflow's own errors (server unreachable, bad URI) are one line for the user
            raise CirkitError(f"MLflow ({self.mlflow.get_tracking_uri()}): {one_line(exc)}") from None


def _failures_page(store, exp_id: str) -> str:
    from cirkit.report import render_experiment

    return render_experiment(store, exp_id, limit=FAILURES_ON_PAGE)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
