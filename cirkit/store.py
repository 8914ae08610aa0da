"""The run store: every run and every step's prompts, raw and parsed outputs, models, params,
timings and errors, in one SQLite file under the data directory.

The data directory is `--data-dir`, else $CIRKIT_DATA_DIR, else the platform's user data
directory (~/.local/share/cirkit on Linux). Each write is its own transaction, so a failing
step never loses what earlier steps stored. The schema and its upgrades are in cirkit.migrations:
opening a store written by an older release upgrades it in place.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cirkit.costs import token_totals
from cirkit.errors import CirkitError, one_line
from cirkit.migrations import check_version, migrate

def default_data_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(os.environ.get("CIRKIT_DATA_DIR") or user_data_dir("cirkit", appauthor=False))


@dataclass
class StepRecord:
    position: int  # order of execution in the run (the step's place in the pipeline, unless a loop repeated steps)
    name: str
    kind: str
    status: str
    model: dict[str, Any] | None
    params: dict[str, Any]
    templates: list[dict[str, str]]
    prompts: list[Any]
    raw: list[Any]
    outputs: dict[str, Any]
    notes: list[str]
    seconds: float
    error: str | None
    origin: str = "ran"
    # {"input": n, "output": n}: this query's share of the tokens the step's model calls read and wrote
    # (kept with a cached output, whose origin says it was not spent again); None: no model call counted
    tokens: dict[str, int] | None = None
    round: int = 0  # the loop round it ran in; 0 outside loops

    @classmethod
    def from_cache(cls, data: dict[str, Any], *, position: int, name: str, round: int = 0) -> StepRecord:
        return cls(**{**data, "position": position, "name": name, "origin": "cache", "seconds": 0.0, "round": round})


@dataclass
class RunRecord:
    id: str
    created_at: str
    status: str
    pipeline_name: str
    pipeline_hash: str
    pipeline_source: str
    pipeline_text: str
    index_dir: str | None
    inputs: dict[str, Any]
    results: list[dict[str, Any]] | None
    error: str | None
    steps: list[StepRecord]
    parent_id: str | None = None
    change: dict[str, Any] | None = None
    overrides: dict[str, Any] | None = None  # what the command line replaced: {"models": {...}, "prompts": {...}}

    def step(self, name: str, round: int | None = None) -> StepRecord:
        """The step's record: of the given loop round, else of the last round it ran."""
        matches = [step for step in self.steps if step.name == name and (round is None or step.round == round)]
        if matches:
            return matches[-1]
        if round is not None and any(step.name == name for step in self.steps):
            ran = sorted({step.round for step in self.steps if step.name == name})
            raise CirkitError(f"run {self.id}: step '{name}' has no round {round} (it ran rounds {', '.join(map(str, ran))})")
        raise CirkitError(f"run {self.id} has no step '{name}' (steps: {', '.join(s.name for s in self.steps)})")

    def to_dict(self, with_pipeline_text: bool = False) -> dict[str, Any]:
        data = {
            "id": self.id,
            "created_at": self.created_at,
            "status": self.status,
            "pipeline": {"name": self.pipeline_name, "hash": self.pipeline_hash, "source": self.pipeline_source},
            "index": self.index_dir,
            "inputs": self.inputs,
            "steps": [vars(s) for s in self.steps],
            "results": self.results,
            "error": self.error,
            "parent_id": self.parent_id,
            "change": self.change,
            "overrides": self.overrides,
            "tokens": token_totals(self.steps),
        }
        if with_pipeline_text:
            data["pipeline"]["text"] = self.pipeline_text
        return data


class RunStore:
    def __init__(self, data_dir: str | Path | None = None):
        self.data_dir = Path(data_dir).expanduser() if data_dir else default_data_dir()
        self.path = self.data_dir / "runs.sqlite3"
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CirkitError(f"cannot open the run store {self.path}: {one_line(exc)}") from None
        try:
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            raise CirkitError(f"cannot open the run store {self.path}: {one_line(exc)}") from None
        try:
            check_version(self.db, self.path)  # before anything writes to a store this code cannot read
            self.db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a commit does not wait for fsync (ms per write, dozens of writes per query);
            # a crash or kill -9 of the process loses nothing, a power cut may lose the last writes,
            # and the file is never corrupted either way.
            self.db.execute("PRAGMA synchronous=NORMAL")
            migrate(self.db, self.path)
        except sqlite3.Error as exc:
            self.db.close()
            if "not a database" in str(exc):
                raise CirkitError(f"the run store {self.path} is not a SQLite database: move it away, or give another --data-dir") from None
            raise CirkitError(f"cannot open the run store {self.path}: {one_line(exc)}") from None
        except BaseException:
            self.db.close()
            raise
        self.db.row_factory = sqlite3.Row

    def close(self) -> None:
        self.db.close()

    def start_run(
        self, *, pipeline, inputs: dict[str, Any], index_dir: str | None, parent_id: str | None = None,
        change: dict | None = None, overrides: dict[str, Any] | None = None,
    ) -> str:
        """A new run in status 'running'; `overrides`: what the command line replaced (models, prompts)."""
        run_id = uuid.uuid4().hex[:12]
        _insert(self.db, "runs", {
            "id": run_id,
            "created_at": _now(),
            "status": "running",
            "pipeline_name": pipeline.name,
            "pipeline_hash": pipeline.hash,
            "pipeline_source": pipeline.source,
            "pipeline_text": pipeline.text,
            "index_dir": index_dir,
            "inputs": _dumps(inputs),
            "parent_id": parent_id,
            "change": _dumps(change) if change else None,
            "overrides": _dumps(overrides) if overrides else None,
        })
        return run_id

    def add_step(self, run_id: str, step: StepRecord) -> None:
        _insert(self.db, "steps", {
            "run_id": run_id,
            "position": step.position,
            "name": step.name,
            "kind": step.kind,
            "status": step.status,
            "model": _dumps(step.model),
            "params": _dumps(step.params),
            "templates": _dumps(step.templates),
            "prompts": _dumps(step.prompts),
            "raw": _dumps(step.raw),
            "outputs": _dumps(step.outputs),
            "notes": _dumps(step.notes),
            "seconds": step.seconds,
            "error": step.error,
            "origin": step.origin,
            "tokens": _dumps(step.tokens) if step.tokens else None,
            "round": step.round,
        })

    def cache_get(self, key: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT record FROM cache WHERE key=?", (key,)).fetchone()
        return json.loads(row["record"]) if row else None

    def cache_put(self, key: str, step: StepRecord) -> None:
        record = {k: v for k, v in vars(step).items() if k not in ("position", "name", "origin", "round")}
        _insert(self.db, "cache", {"key": key, "record": _dumps(record), "created_at": _now()}, or_replace=True)

    def finish_run(self, run_id: str, *, results: list[dict[str, Any]] | None, error: str | None) -> None:
        self.db.execute(
            "UPDATE runs SET status=?, results=?, error=? WHERE id=?",
            ("failed" if error else "ok", _dumps(results), error, run_id),
        )

    def resolve_id(self, prefix: str) -> str:
        rows = self.db.execute("SELECT id FROM runs WHERE id LIKE ? LIMIT 2", (prefix.strip() + "%",)).fetchall()
        if not prefix.strip() or not rows:
            raise CirkitError(f"unknown run id '{prefix}' (see `cirkit runs list`)")
        if len(rows) > 1:
            raise CirkitError(f"run id prefix '{prefix}' is ambiguous: give more characters")
        return rows[0]["id"]

    def get(self, run_id: str) -> RunRecord:
        run_id = self.resolve_id(run_id)
        row = self.db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        steps = [
            StepRecord(
                position=s["position"],
                name=s["name"],
                kind=s["kind"],
                status=s["status"],
                model=json.loads(s["model"]),
                params=json.loads(s["params"]),
                templates=json.loads(s["templates"]),
                prompts=json.loads(s["prompts"]),
                raw=json.loads(s["raw"]),
                outputs=json.loads(s["outputs"]),
                notes=json.loads(s["notes"]),
                seconds=s["seconds"],
                error=s["error"],
                origin=s["origin"],
                tokens=json.loads(s["tokens"]) if s["tokens"] else None,
                round=s["round"],
            )
            for s in self.db.execute("SELECT * FROM steps WHERE run_id=? ORDER BY position", (run_id,))
        ]
        return RunRecord(
            id=row["id"],
            created_at=row["created_at"],
            status=row["status"],
            pipeline_name=row["pipeline_name"],
            pipeline_hash=row["pipeline_hash"],
            pipeline_source=row["pipeline_source"],
            pipeline_text=row["pipeline_text"],
            index_dir=row["index_dir"],
            inputs=json.loads(row["inputs"]),
            results=json.loads(row["results"]) if row["results"] else None,
            error=row["error"],
            steps=steps,
            parent_id=row["parent_id"],
            change=json.loads(row["change"]) if row["change"] else None,
            overrides=json.loads(row["overrides"]) if row["overrides"] else None,
        )

    def add_experiment(self, *, benchmark: str, split: str, pipeline, data_dir: str, index_dir: str,
                       metrics: dict[str, Any], runs: list[tuple[str, str, int | None]],
                       sweep_id: str | None = None, setting: dict[str, Any] | None = None, repeat: int | None = None) -> str:
        """Store an evaluation with (query id, run id, target rank) per query; returns its id. Within
        a sweep: its id, the setting ({"STEP.PARAM": value}) and the repeat (0, 1, ...)."""
        exp_id = "e" + uuid.uuid4().hex[:11]
        row = {
            "id": exp_id, "created_at": _now(), "benchmark": benchmark, "split": split,
            "pipeline_name": pipeline.name, "pipeline_hash": pipeline.hash, "data_dir": data_dir,
            "index_dir": index_dir, "metrics": _dumps(metrics),
        }
        if sweep_id is not None:
            row.update({"sweep_id": sweep_id, "setting": _dumps(setting or {}), "repeat": repeat})
        with self.db:
            self.db.execute("BEGIN")
            _insert(self.db, "experiments", row)
            self.db.executemany(
                "INSERT INTO experiment_runs (experiment_id, query_id, run_id, target_rank) VALUES (?, ?, ?, ?)",
                [(exp_id, q, r, rank) for q, r, rank in runs],
            )
        return exp_id

    def add_sweep(self, *, benchmark: str, split: str, pipeline, grid: list[dict[str, Any]], repeats: int,
                  metric: str | None) -> str:
        """A sweep: a parameter grid (possibly empty) with repeats over one benchmark split; its
        experiments name it. Returns its id."""
        sweep_id = "s" + uuid.uuid4().hex[:11]
        _insert(self.db, "sweeps", {
            "id": sweep_id, "created_at": _now(), "benchmark": benchmark, "split": split,
            "pipeline_name": pipeline.name, "pipeline_hash": pipeline.hash, "grid": _dumps(grid),
            "repeats": repeats, "metric": metric,
        })
        return sweep_id

    def sweep(self, sweep_id: str) -> dict[str, Any]:
        """A sweep with its experiments (setting, repeat, metrics) in the order they ran."""
        rows = self.db.execute("SELECT * FROM sweeps WHERE id LIKE ? LIMIT 2", (sweep_id.strip() + "%",)).fetchall()
        if not sweep_id.strip() or not rows:
            raise CirkitError(f"unknown sweep '{sweep_id}'")
        if len(rows) > 1:
            raise CirkitError(f"sweep prefix '{sweep_id}' is ambiguous: give more characters")
        sweep = {**dict(rows[0]), "grid": json.loads(rows[0]["grid"])}
        sweep["experiments"] = [
            {"id": r["id"], "setting": json.loads(r["setting"] or "{}"), "repeat": r["repeat"], "metrics": json.loads(r["metrics"])}
            for r in self.db.execute("SELECT * FROM experiments WHERE sweep_id=? ORDER BY created_at, rowid", (sweep["id"],))
        ]
        return sweep

    def experiment(self, exp_id: str) -> dict[str, Any]:
        rows = self.db.execute("SELECT * FROM experiments WHERE id LIKE ? LIMIT 2", (exp_id.strip() + "%",)).fetchall()
        if not exp_id.strip() or not rows:
            raise CirkitError(f"unknown experiment '{exp_id}' (see `cirkit eval list`)")
        if len(rows) > 1:
            raise CirkitError(f"experiment prefix '{exp_id}' is ambiguous: give more characters")
        exp = dict(rows[0])
        exp["metrics"] = json.loads(exp["metrics"])
        exp["setting"] = json.loads(exp["setting"]) if exp.get("setting") else None
        exp["runs"] = [
            dict(r)
            for r in self.db.execute(
                "SELECT query_id, run_id, target_rank FROM experiment_runs WHERE experiment_id=? ORDER BY rowid", (exp["id"],)
            )
        ]
        return exp

    def experiments(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM experiments ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()
        return [{**dict(r), "metrics": json.loads(r["metrics"])} for r in rows]

    def all_ids(self) -> list[str]:
        return [r["id"] for r in self.db.execute("SELECT id FROM runs ORDER BY created_at, rowid")]

    def latest_for_query(self, query_id: str) -> str:
        row = self.db.execute(
            "SELECT id FROM runs WHERE json_extract(inputs, '$.query_id') = ? ORDER BY created_at DESC, rowid DESC LIMIT 1",
            (query_id,),
        ).fetchone()
        if not query_id or row is None:
            raise CirkitError(f"no run for query id '{query_id}'")
        return row["id"]

    def edited_runs(self, pipeline_hash: str) -> dict[tuple[str, str], str]:
        """(query id, modification) -> the most recent finished run of this pipeline with a step edited by hand."""
        rows = self.db.execute(
            "SELECT id, inputs FROM runs r WHERE pipeline_hash = ? AND status = 'ok' AND parent_id IS NOT NULL"
            " AND EXISTS (SELECT 1 FROM steps s WHERE s.run_id = r.id AND s.origin = 'edited') ORDER BY created_at, rowid",
            (pipeline_hash,),
        ).fetchall()
        out = {}
        for row in rows:
            inputs = json.loads(row["inputs"])
            out[(inputs.get("query_id"), inputs.get("modification"))] = row["id"]
        return out

    def list(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM runs ORDER BY created_at DESC, rowid DESC LIMIT ?", (limit,)).fetchall()
        return [
            {
                "id": r["id"],
                "created_at": r["created_at"],
                "status": r["status"],
                "pipeline": r["pipeline_name"],
                "modification": json.loads(r["inputs"]).get("modification"),
                "image": json.loads(r["inputs"]).get("image"),
                "error": r["error"],
            }
            for r in rows
        ]


def _insert(db: sqlite3.Connection, table: str, row: dict[str, Any], *, or_replace: bool = False) -> None:
    verb = "INSERT OR REPLACE" if or_replace else "INSERT"
    db.execute(f"{verb} INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_to_json, ensure_ascii=False)


def _to_json(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in the run store")
