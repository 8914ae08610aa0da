"""The run store across releases: schema versions, migrations, and a store written by release 0.1."""

from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace

import pytest

from cirkit import migrations
from cirkit.errors import CirkitError
from cirkit.experiments import compare, failures
from cirkit.migrations import latest_version
from cirkit.store import RunStore, StepRecord

FIXTURE_0_1 = Path(__file__).parent / "fixtures" / "store-0.1" / "runs.sqlite3"
TABLES = ("runs", "steps", "cache", "experiments", "experiment_runs")
PIPE = SimpleNamespace(name="p", hash="h" * 64, source="/somewhere/p.yaml", text="name: p\n")


@pytest.fixture
def store_0_1(tmp_path) -> Path:
    """A copy of the release 0.1 store, in a data directory of its own."""
    data = tmp_path / "data-0.1"
    data.mkdir()
    shutil.copy(FIXTURE_0_1, data / "runs.sqlite3")
    return data


def _version(path: Path) -> int:
    with closing(sqlite3.connect(path)) as con:
        return con.execute("PRAGMA user_version").fetchone()[0]


def _rows(path: Path) -> dict[str, list[dict]]:
    """Every row of every table, by column name (so added columns show and column order does not)."""
    con = sqlite3.connect(path)
    con.row_factory = sqlite3.Row
    try:
        return {t: sorted((dict(r) for r in con.execute(f"SELECT * FROM {t}")), key=json.dumps) for t in TABLES}
    finally:
        con.close()


def _files(data: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(data.iterdir())}


def test_the_release_0_1_fixture_is_what_0_1_wrote():
    assert _version(FIXTURE_0_1) == 0
    with closing(sqlite3.connect(FIXTURE_0_1)) as con:
        columns = [r[1] for r in con.execute("PRAGMA table_info(runs)")]
    assert "overrides" not in columns and columns[-2:] == ["parent_id", "change"]
    assert FIXTURE_0_1.stat().st_size < 200_000


def test_a_0_1_store_upgrades_in_place_and_keeps_everything(store_0_1):
    before = _rows(store_0_1 / "runs.sqlite3")
    store = RunStore(store_0_1)
    assert _version(store.path) == latest_version() == len(migrations.MIGRATIONS) >= 2
    after = _rows(store.path)
    added = {"runs": {"overrides": None}, "experiments": dict.fromkeys(("sweep_id", "setting", "repeat")),
             "steps": {"tokens": None, "round": 0}}
    for table in TABLES:  # every row and value kept; the columns added since are empty (or their default)
        extra = [{k: v for k, v in row.items() if k not in before[table][0]} for row in after[table]]
        assert [{k: row[k] for k in before[table][0]} for row in after[table]] == before[table], table
        assert all(e == added.get(table, {}) for e in extra), table
    assert len(before["runs"]) == 3 and len(before["steps"]) == 10 and len(before["cache"]) == 2

    listed = store.list()
    assert sorted(r["status"] for r in listed) == ["failed", "ok", "ok"]
    by_query = {}
    for row in listed:
        run = store.get(row["id"])
        by_query.setdefault(run.inputs["query_id"], []).append(run)
    (failed,) = by_query["q2"]
    original, edited = sorted(by_query["q1"], key=lambda r: r.parent_id is not None)

    assert original.status == "ok" and original.parent_id is None and original.change is None
    assert original.overrides is None and original.to_dict()["overrides"] is None
    assert original.pipeline_text.startswith("name: tiny") and original.pipeline_source == "/data/pipelines/tiny.yaml"
    assert [s.name for s in original.steps] == ["caption", "rewrite", "embed", "search"]
    rewrite = original.step("rewrite")
    assert rewrite.prompts == [[{"role": "user", "content": "Image Content: a small square\nInstruction: make it red"}]]
    assert rewrite.raw == ["Edited Description: a small red square"]
    assert rewrite.outputs == {"descriptions": ["a small red square"]}
    assert rewrite.model == {"engine": "transformers", "id": "tiny-llm"} and rewrite.params == {"max_new_tokens": 12}
    assert original.step("embed").outputs["query_vectors"] == [[0.5, 0.5, 0.5, 0.5]]
    assert [r["path"] for r in original.results] == ["img0002.jpg", "img0003.jpg"]

    assert failed.status == "failed" and failed.error == "step 'rewrite': the model answered nothing"
    assert [(s.name, s.status, s.error) for s in failed.steps] == [
        ("caption", "ok", None), ("rewrite", "failed", "the model answered nothing")]

    assert edited.parent_id == original.id
    assert edited.change == {"from": "caption", "edited": "caption", "text": "a tiny blue square"}
    assert [(s.name, s.origin) for s in edited.steps][:2] == [("caption", "edited"), ("rewrite", "ran")]
    assert edited.step("caption").outputs == {"caption": "a tiny blue square"}

    cached = store.cache_get("k-rewrite")
    assert cached["outputs"] == {"descriptions": ["a small red square"]} and cached["raw"] == rewrite.raw
    assert StepRecord.from_cache(cached, position=1, name="rewrite").outputs == rewrite.outputs
    assert store.cache_get("k-caption")["outputs"] == {"caption": "a small square"}

    (listed_exp,) = store.experiments()
    exp = store.experiment(listed_exp["id"])
    assert exp["metrics"] == {"recall@1": 0.5, "recall@10": 0.5, "queries": 2, "failed_runs": 1}
    assert (exp["benchmark"], exp["split"], exp["pipeline_name"]) == ("toy", "val", "tiny")
    assert exp["runs"] == [{"query_id": "q1", "run_id": original.id, "target_rank": 1},
                           {"query_id": "q2", "run_id": failed.id, "target_rank": None}]
    assert [row["query_id"] for row in failures(store, exp["id"], k=1)] == ["q2"]
    assert compare(store, exp["id"], exp["id"])["metrics"][0] == {"metric": "recall@1", "a": 0.5, "b": 0.5}
    store.close()


def test_opening_again_changes_nothing(store_0_1):
    RunStore(store_0_1).close()
    first = _rows(store_0_1 / "runs.sqlite3")
    files = _files(store_0_1)
    RunStore(store_0_1).close()
    assert _version(store_0_1 / "runs.sqlite3") == latest_version()
    assert _rows(store_0_1 / "runs.sqlite3") == first
    assert _files(store_0_1) == files


def test_new_runs_record_their_overrides_after_the_upgrade(store_0_1):
    store = RunStore(store_0_1)
    overrides = {"models": {"llm": {"type": "llm", "id": "other-llm"}}, "prompts": {"rewrite": ["cirevl-rewrite-short"]}}
    run_id = store.start_run(pipeline=PIPE, inputs={"image": "x.jpg", "modification": "m"}, index_dir=None, overrides=overrides)
    store.add_step(run_id, StepRecord(0, "caption", "caption", "ok", None, {}, [], ["p"], ["r"], {"caption": "c"}, [], 0.1, None))
    store.finish_run(run_id, results=[], error=None)
    plain = store.start_run(pipeline=PIPE, inputs={"image": "y.jpg", "modification": "m"}, index_dir=None)
    store.close()

    store = RunStore(store_0_1)
    run = store.get(run_id)
    assert run.overrides == overrides and run.to_dict()["overrides"] == overrides
    assert run.step("caption").raw == ["r"] and run.status == "ok"
    assert store.get(plain).overrides is None
    assert len(store.all_ids()) == 5


def test_runs_show_json_includes_overrides(cli, tmp_path):
    store = RunStore(tmp_path / "data")
    run_id = store.start_run(pipeline=PIPE, inputs={"image": "x.jpg", "modification": "m"}, index_dir=None,
                             overrides={"prompts": {"rewrite": ["a.txt"]}})
    store.close()
    res = cli("runs", "show", run_id, "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["overrides"] == {"prompts": {"rewrite": ["a.txt"]}}


def test_a_new_store_starts_at_the_latest_version(tmp_path):
    store = RunStore(tmp_path / "new")
    assert _version(store.path) == latest_version()
    with closing(sqlite3.connect(store.path)) as con:
        assert {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")} >= set(TABLES)
        assert "overrides" in [r[1] for r in con.execute("PRAGMA table_info(runs)")]
    store.close()


def test_a_store_from_a_newer_release_is_refused_untouched(cli, store_0_1, tmp_path):
    RunStore(store_0_1).close()
    with closing(sqlite3.connect(store_0_1 / "runs.sqlite3")) as con:
        con.execute(f"PRAGMA user_version = {latest_version() + 1}")
    files = _files(store_0_1)
    with pytest.raises(CirkitError) as err:
        RunStore(store_0_1)
    message = str(err.value)
    assert "\n" not in message and f"schema version {latest_version() + 1}" in message and "upgrade cirkit" in message
    assert _files(store_0_1) == files

    res = cli("--data-dir", store_0_1, "runs", "list")
    assert res.exit_code == 1
    assert res.stderr.count("\n") == 1 and "newer than this cirkit reads" in res.stderr and "Traceback" not in res.stderr
    assert _files(store_0_1) == files


def test_a_file_that_is_not_sqlite_is_refused_untouched(cli, tmp_path):
    data = tmp_path / "junk"
    data.mkdir()
    (data / "runs.sqlite3").write_bytes(b"these are not the runs you are looking for\n" * 100)
    files = _files(data)
    with pytest.raises(CirkitError, match="is not a SQLite database"):
        RunStore(data)
    res = cli("--data-dir", data, "runs", "list")
    assert res.exit_code == 1
    assert res.stderr.count("\n") == 1 and "not a SQLite database" in res.stderr
    assert _files(data) == files


def test_a_failing_migration_rolls_back(store_0_1, monkeypatch):
    RunStore(store_0_1).close()
    before = _rows(store_0_1 / "runs.sqlite3")

    def m003_broken(db):
        db.execute("ALTER TABLE runs ADD COLUMN half_done TEXT")
        db.execute("CREATE TABLE half_made (x TEXT)")
        db.execute("UPDATE runs SET status = 'lost'")
        db.execute("SELECT no_such_column FROM runs")

    latest = latest_version()
    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, m003_broken])
    with pytest.raises(CirkitError) as err:
        RunStore(store_0_1)
    message = str(err.value)
    assert "\n" not in message and f"schema version {latest + 1} (m003_broken)" in message and f"stays at version {latest}" in message
    monkeypatch.undo()

    assert _version(store_0_1 / "runs.sqlite3") == latest
    assert _rows(store_0_1 / "runs.sqlite3") == before
    with closing(sqlite3.connect(store_0_1 / "runs.sqlite3")) as con:
        assert "half_done" not in [r[1] for r in con.execute("PRAGMA table_info(runs)")]
        assert con.execute("SELECT COUNT(*) FROM sqlite_master WHERE name='half_made'").fetchone()[0] == 0
    RunStore(store_0_1).close()  # and it still opens


def test_a_version_0_file_with_a_foreign_runs_table_is_refused(tmp_path):
    data = tmp_path / "foreign"
    data.mkdir()
    with closing(sqlite3.connect(data / "runs.sqlite3")) as con:
        con.execute("CREATE TABLE runs (id INTEGER, what TEXT)")
    with pytest.raises(CirkitError, match="not a cirkit run store"):
        RunStore(data)
    assert _version(data / "runs.sqlite3") == 0


def test_writes_do_not_depend_on_column_order(tmp_path):
    """Every INSERT names its columns: a store whose tables list their columns in another order
    (as ALTER TABLE and table rebuilds leave them) gets every value in its place."""
    reference = RunStore(tmp_path / "a")
    other_dir = tmp_path / "b"
    other_dir.mkdir()
    with closing(sqlite3.connect(other_dir / "runs.sqlite3")) as con:
        for table in TABLES:
            info = list(reference.db.execute(f"PRAGMA table_info({table})"))
            columns = [f"{c['name']} {c['type']}{' NOT NULL' if c['notnull'] else ''}" for c in reversed(info)]
            keys = [c["name"] for c in sorted(info, key=lambda c: c["pk"]) if c["pk"]]
            con.execute(f"CREATE TABLE {table} ({', '.join(columns)}, PRIMARY KEY ({', '.join(keys)}))")
        con.execute(f"PRAGMA user_version = {latest_version()}")
    other = RunStore(other_dir)

    def write(store):
        run_id = store.start_run(pipeline=PIPE, inputs={"image": "x.jpg", "modification": "m", "query_id": "q"},
                                 index_dir="/i", parent_id="abc", change={"from": "caption"}, overrides={"prompts": {}})
        step = StepRecord(0, "caption", "caption", "ok", {"id": "m"}, {"k": 1}, [{"name": "t", "source": "s"}],
                          ["p"], ["r"], {"caption": "c"}, ["n"], 0.5, None, "ran")
        store.add_step(run_id, step)
        store.cache_put("key", step)
        store.finish_run(run_id, results=[{"rank": 1, "path": "a.jpg", "score": 1.0}], error=None)
        exp_id = store.add_experiment(benchmark="toy", split="val", pipeline=PIPE, data_dir="/d", index_dir="/i",
                                      metrics={"recall@1": 1.0}, runs=[("q", run_id, 1)])
        run, exp = store.get(run_id).to_dict(with_pipeline_text=True), store.experiment(exp_id)
        for volatile in ("id", "created_at"):
            run.pop(volatile), exp.pop(volatile)
        exp["runs"] = [{**r, "run_id": None} for r in exp["runs"]]
        return run, exp, store.cache_get("key")

    assert write(other) == write(reference)
    assert write(other)[0]["steps"][0]["outputs"] == {"caption": "c"}
