"""The run store's schema, as an ordered list of migrations.

The store's schema version is SQLite's `PRAGMA user_version`: the number of migrations applied.
Opening a store applies the missing ones in order, each in its own transaction together with the
version bump, so a migration that fails leaves the file as it was. A migration, once released,
never changes: a new schema change is a new function appended to MIGRATIONS.

Release 0.1 wrote no version (user_version 0) and created migration 1's tables at every open; such
a store is upgraded from version 0 like a new one (migration 1 creates only what is missing).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from cirkit.errors import CirkitError, one_line

Migration = Callable[[sqlite3.Connection], None]

MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append(fn)
    return fn


# the columns release 0.1 wrote; a version-0 `runs` table without them belongs to something else
_RUNS_0_1 = {"id", "created_at", "status", "pipeline_name", "pipeline_hash", "pipeline_source", "pipeline_text",
             "index_dir", "inputs", "results", "error", "parent_id", "change"}


@migration
def m001_initial(db: sqlite3.Connection) -> None:
    """Runs, steps, the step cache and experiments, as release 0.1 made them."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
    if columns and not _RUNS_0_1 <= columns:
        raise CirkitError("its 'runs' table is not a cirkit run store's")
    for statement in (
        """CREATE TABLE IF NOT EXISTS runs (
            id TEXT PRIMARY KEY,
            created_at TEXT NOT NULL,
            status TEXT NOT NULL,            -- running | ok | failed
            pipeline_name TEXT NOT NULL,
            pipeline_hash TEXT NOT NULL,
            pipeline_source TEXT NOT NULL,
            pipeline_text TEXT NOT NULL,
            index_dir TEXT,
            inputs TEXT NOT NULL,            -- JSON: image path and sha256, modification text
            results TEXT,                    -- JSON: ranked gallery images
            error TEXT,
            parent_id TEXT,                  -- the run this one was derived from (edit, re-run)
            change TEXT                      -- JSON: what differs from the parent
        )""",
        """CREATE TABLE IF NOT EXISTS steps (
            run_id TEXT NOT NULL REFERENCES runs(id),
            position INTEGER NOT NULL,
            name TEXT NOT NULL,
            kind TEXT NOT NULL,
            status TEXT NOT NULL,            -- ok | failed
            model TEXT,                      -- JSON: engine, model id, revision, ...
            params TEXT NOT NULL,            -- JSON
            templates TEXT NOT NULL,         -- JSON: [{name, source}] of the prompt templates used
            prompts TEXT NOT NULL,           -- JSON: exactly what was sent to the model
            raw TEXT NOT NULL,               -- JSON: exactly what the model answered
            outputs TEXT NOT NULL,           -- JSON: parsed outputs
            notes TEXT NOT NULL,             -- JSON: fallbacks, truncations, ...
            seconds REAL NOT NULL,           -- this query's share of the step's batch time
            error TEXT,
            origin TEXT NOT NULL,            -- ran | cache | copied (from the parent run) | edited (by hand)
            PRIMARY KEY (run_id, position)
        )""",
        # step outputs by content address (step kind, model, params, templates, inputs)
        """CREATE TABLE IF NOT EXISTS cache (
            key TEXT PRIMARY KEY,
            record TEXT NOT NULL,            -- JSON of the step record that produced it
            created_at TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS runs_created ON runs(created_at)",
        # an evaluation: one benchmark split run through one pipeline, with every query's run
        """CREATE TABLE IF NOT EXISTS experiments (
            id TEXT PRIMARY KEY,
            created_at TEXT NOT NULL,
            benchmark TEXT NOT NULL,
            split TEXT NOT NULL,
            pipeline_name TEXT NOT NULL,
            pipeline_hash TEXT NOT NULL,
            data_dir TEXT NOT NULL,
            index_dir TEXT NOT NULL,
            metrics TEXT NOT NULL            -- JSON
        )""",
        """CREATE TABLE IF NOT EXISTS experiment_runs (
            experiment_id TEXT NOT NULL REFERENCES experiments(id),
            query_id TEXT NOT NULL,
            run_id TEXT NOT NULL REFERENCES runs(id),
            target_rank INTEGER,             -- first target's rank under the protocol; NULL: not in the ranking
            PRIMARY KEY (experiment_id, query_id)
        )""",
    ):
        db.execute(statement)


@migration
def m002_run_overrides(db: sqlite3.Connection) -> None:
    """runs.overrides: JSON of what the command line replaced for the run ({"models": {name: spec},
    "prompts": {step: [templates]}}); NULL when nothing was, and for older runs."""
    db.execute("ALTER TABLE runs ADD COLUMN overrides TEXT")


@migration
def m003_sweeps(db: sqlite3.Connection) -> None:
    """Sweeps (a parameter grid and/or repeats over one benchmark split) and, on each experiment, the
    sweep it belongs to, its setting and its repeat; NULL for a single evaluation and for older ones."""
    db.execute(
        """CREATE TABLE sweeps (
            id TEXT PRIMARY KEY,
            created_at TEXT NOT NULL,
            benchmark TEXT NOT NULL,
            split TEXT NOT NULL,
            pipeline_name TEXT NOT NULL,
            pipeline_hash TEXT NOT NULL,     -- of the base pipeline, before the grid's parameters
            grid TEXT NOT NULL,              -- JSON: [{"step", "param", "values"}]
            repeats INTEGER NOT NULL,
            metric TEXT                      -- what the settings are ranked by
        )"""
    )
    db.execute("ALTER TABLE experiments ADD COLUMN sweep_id TEXT REFERENCES sweeps(id)")
    db.execute("ALTER TABLE experiments ADD COLUMN setting TEXT")  # JSON: {"STEP.PARAM": value}
    db.execute("ALTER TABLE experiments ADD COLUMN repeat INTEGER")  # 0, 1, ... within the setting
    db.execute("CREATE INDEX experiments_sweep ON experiments(sweep_id)")


@migration
def m004_step_tokens(db: sqlite3.Connection) -> None:
    """steps.tokens: JSON {"input": n, "output": n}, the query's share of the tokens its step's model
    calls read and wrote; NULL where none were counted, and for older steps."""
    db.execute("ALTER TABLE steps ADD COLUMN tokens TEXT")


@migration
def m005_step_rounds(db: sqlite3.Connection) -> None:
    """steps.round: the loop round a step record ran in (0 outside loops, and for older steps). A run's
    records are numbered by `position` in the order they ran, which is the pipeline's order unless a
    loop repeated steps."""
    db.execute("ALTER TABLE steps ADD COLUMN round INTEGER NOT NULL DEFAULT 0")


def latest_version() -> int:
    return len(MIGRATIONS)


def schema_version(db: sqlite3.Connection) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


def check_version(db: sqlite3.Connection, path: Path) -> int:
    """The store's schema version; CirkitError if this code is too old to read it."""
    version = schema_version(db)
    if version > latest_version():
        raise CirkitError(
            f"the run store {path} has schema version {version}, newer than this cirkit reads "
            f"(up to {latest_version()}): upgrade cirkit, or give another --data-dir"
        )
    return version


def migrate(db: sqlite3.Connection, path: Path) -> int:
    """Apply the missing migrations in order, each with its version bump in one transaction;
    returns the new version. The connection must be in autocommit mode (isolation_level=None)."""
    version = check_version(db, path)
    while version < latest_version():
        target = version + 1
        try:
            db.execute("BEGIN IMMEDIATE")  # the write lock first: another process may be upgrading too
            version = check_version(db, path)
            if version < target:
                MIGRATIONS[version](db)
                db.execute(f"PRAGMA user_version = {target}")
                version = target
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, (CirkitError, sqlite3.Error)):
                raise CirkitError(
                    f"cannot upgrade the run store {path} to schema version {target} "
                    f"({MIGRATIONS[target - 1].__name__}): {one_line(exc)}; it stays at version {version}, unchanged"
                ) from None
            raise
    return version
