"""The run registry: every run and its stages, in SQLite under the home.

One database file, `registry.db` in the state directory, written by each
running flowctl (a row per run, a row per stage of it) and read by
`flowctl status`, `runs`, `stop` and `logs`.  WAL mode lets readers look
while a run writes; each write is its own short transaction.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Iterable

from flowctl.lifetime import is_zombie, start_time


DATABASE_NAME = "registry.db"
BUSY_TIMEOUT_SECONDS = 5.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    source TEXT NOT NULL,
    pid INTEGER NOT NULL,
    process_started REAL NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    state TEXT NOT NULL,
    exit_code INTEGER,
    message TEXT NOT NULL DEFAULT '',
    directory TEXT NOT NULL,
    socket TEXT NOT NULL,
    checkpoint TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS stages (
    run_id TEXT NOT NULL REFERENCES runs(id),
    id TEXT NOT NULL,
    position INTEGER NOT NULL,
    role TEXT NOT NULL,
    pid INTEGER,
    state TEXT NOT NULL,
    restarts INTEGER NOT NULL DEFAULT 0,
    records_in INTEGER NOT NULL DEFAULT 0,
    records_out INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    log_path TEXT NOT NULL,
    PRIMARY KEY (run_id, id)
);
"""


@dataclass
class RunRow:
    """A run as the registry stores it."""

    id: str
    pipeline: str
    source: str
    pid: int
    process_started: float
    started_at: float
    ended_at: float | None
    state: str
    exit_code: int | None
    message: str
    directory: str
    socket: str
    # JSON: the run's newest checkpoint, as `flowctl status` shows it.
    checkpoint: str = ""

    def is_alive(self) -> bool:
        """Return whether the flowctl process of this run is still running."""
        started = start_time(self.pid)
        if started is None or abs(started - self.process_started) >= 1.0:
            return False
        # An exited flowctl whose parent has not reaped it yet.
        return not is_zombie(self.pid)


class Registry:
    """Access to the registry database of one state directory."""

    def __init__(self, home: str) -> None:
        os.makedirs(home, mode=0o700, exist_ok=True)
        self.path = os.path.join(home, DATABASE_NAME)
        self.connection = sqlite3.connect(self.path,
                                          timeout=BUSY_TIMEOUT_SECONDS,
                                          isolation_level=None)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.executescript(SCHEMA)
        columns = [row[1] for row in self.connection.execute(
            "PRAGMA table_info(runs)")]
        if "checkpoint" not in columns:
            # A registry written by an earlier flowctl.
            self.connection.execute("ALTER TABLE runs ADD COLUMN checkpoint "
                                    "TEXT NOT NULL DEFAULT ''")
        os.chmod(self.path, 0o600)

    def close(self) -> None:
        self.connection.close()

    def add_run(self, run_id: str, pipeline: str, source: str,
                directory: str, socket_path: str,
                stages: Iterable[tuple[str, str, str]]) -> None:
        """Record a new run and its stages as (id, role, log path)."""
        now = time.time()
        started = start_time(os.getpid())
        with self.connection:
            self.connection.execute("BEGIN")
            self.connection.execute(
                "INSERT INTO runs (id, pipeline, source, pid, process_started,"
                " started_at, state, directory, socket)"
                " VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?)",
                (run_id, pipeline, source, os.getpid(), started, now,
                 directory, socket_path))
            self.connection.executemany(
                "INSERT INTO stages (run_id, id, position, role, state,"
                " log_path) VALUES (?, ?, ?, ?, 'starting', ?)",
                [(run_id, stage_id, position, role, log_path)
                 for position, (stage_id, role, log_path)
                 in enumerate(stages)])

    def update_stages(self, run_id: str, rows: list[dict[str, Any]]) -> None:
        with self.connection:
            self.connection.execute("BEGIN")
            self.connection.executemany(
                "UPDATE stages SET pid = :pid, state = :state,"
                " restarts = :restarts, records_in = :records_in,"
                " records_out = :records_out, last_error = :last_error"
                " WHERE run_id = :run_id AND id = :id",
                [{**row, "run_id": run_id} for row in rows])

    def set_checkpoint(self, run_id: str, status: dict[str, Any]) -> None:
        self.connection.execute("UPDATE runs SET checkpoint = ? WHERE id = ?",
                                (json.dumps(status), run_id))

    def finish_run(self, run_id: str, state: str, exit_code: int,
                   message: str) -> None:
        self.connection.execute(
            "UPDATE runs SET ended_at = ?, state = ?, exit_code = ?,"
            " message = ? WHERE id = ?",
            (time.time(), state, exit_code, message, run_id))

    def runs(self, limit: int | None = None) -> list[RunRow]:
        query = "SELECT * FROM runs ORDER BY started_at DESC"
        if limit is not None:
            query += f" LIMIT {int(limit)}"
        cursor = self.connection.execute(query)
        names = [column[0] for column in cursor.description]
        return [RunRow(**dict(zip(names, row))) for row in cursor.fetchall()]

    def stages(self, run_id: str) -> list[dict[str, Any]]:
        cursor = self.connection.execute(
            "SELECT * FROM stages WHERE run_id = ? ORDER BY position",
            (run_id,))
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def find_run(self, prefix: str) -> RunRow:
        """Return the run whose id starts with `prefix`.

        Raise LookupError when no run or more than one run matches.
        """
        matches = [run for run in self.runs() if run.id.startswith(prefix)]
        if not matches:
            raise LookupError(f"no run id starts with {prefix!r}; "
                              f"'flowctl runs' lists them")
        if len(matches) > 1:
            ids = ", ".join(run.id for run in matches[:5])
            raise LookupError(f"run id prefix {prefix!r} is ambiguous: "
                              f"{ids}; give more characters")
        return matches[0]

    def mark_lost(self, run: RunRow) -> None:
        """Close the record of a run whose flowctl died without doing so."""
        self.connection.execute(
            "UPDATE runs SET state = 'lost', ended_at = ?, message = ?"
            " WHERE id = ? AND ended_at IS NULL",
            (time.time(), "flowctl exited without recording the end of the "
                          "run (killed?)", run.id))
