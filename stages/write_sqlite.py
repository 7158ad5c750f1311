"""write-sqlite: insert mapping records as rows of a SQLite table.

The table is created from the first record when it does not exist, with a
column per key typed by its value (INTEGER, REAL or TEXT); a later record
with a new key adds a column.  Nested values are stored as JSON text, and a
record that is not a mapping is stored in a column named "value".  Rows are
committed whenever the input is idle and at the end of the stream.  With
`mode: replace`, the table is emptied when the run starts, not when the
stage is restarted.

With checkpointing on, the sink commits in two phases.  Records are first
stored in a staging table, `_flowctl_staged`, under a token for the
checkpoint interval they belong to; a checkpoint commits the staging
transaction (prepare), and the checkpoint's completion moves the staged
rows into the table in one transaction that also records, in
`_flowctl_commits`, the token and the range of rowids it filled.
Restoring a checkpoint finishes its commit if needed, deletes the rows
that later commits added (by their rowid ranges), and drops the staged
rows of later intervals.  The rowid ranges assume the table's rowids are
assigned by SQLite, as they are in the tables this stage creates.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from typing import Any

import msgpack

from flowctl import faults
from flowctl.stage import Checkpointable, Sink, context, run

SQL_TYPES = {bool: "INTEGER", int: "INTEGER", float: "REAL"}
# Commit records kept per table; restoring needs those after the oldest
# retained checkpoint.
COMMITS_KEPT = 1000


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def to_sql_value(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bytes)):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


class WriteSqlite(Sink, Checkpointable):
    def open(self, config: dict[str, Any]) -> None:
        path = config["path"]
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        self.table = config["table"]
        self.connection = sqlite3.connect(path, isolation_level=None)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.columns = self._existing_columns()
        self.in_transaction = False
        ctx = context()
        self.transactional = ctx.checkpointing
        if self.transactional:
            self._open_transactional(config, fresh=ctx.restore is None)
        elif config.get("mode") == "replace" and self.columns \
                and ctx.restarts == 0:
            self.connection.execute(f"DELETE FROM {quote(self.table)}")

    def _open_transactional(self, config: dict[str, Any],
                            fresh: bool) -> None:
        execute = self.connection.execute
        execute("PRAGMA synchronous=FULL")
        execute("CREATE TABLE IF NOT EXISTS _flowctl_staged "
                "(tbl TEXT NOT NULL, token TEXT NOT NULL, row BLOB)")
        execute("CREATE TABLE IF NOT EXISTS _flowctl_commits "
                "(seq INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT NOT NULL, "
                "token TEXT NOT NULL, first_rowid INTEGER, "
                "last_rowid INTEGER)")
        self.token = uuid.uuid4().hex
        self.token_rows = 0
        self.pending: list[str] = []
        if fresh:
            execute("BEGIN IMMEDIATE")
            execute("DELETE FROM _flowctl_staged WHERE tbl = ?",
                    (self.table,))
            if config.get("mode") == "replace":
                if self.columns:
                    execute(f"DELETE FROM {quote(self.table)}")
                execute("DELETE FROM _flowctl_commits WHERE tbl = ?",
                        (self.table,))
            execute("COMMIT")

    def _existing_columns(self) -> list[str]:
        rows = self.connection.execute(
            f"PRAGMA table_info({quote(self.table)})").fetchall()
        return [row[1] for row in rows]

    def _ensure_columns(self, record: dict[str, Any]) -> None:
        missing = [key for key in record if key not in self.columns]
        if not missing:
            return
        definitions = [f"{quote(key)} {SQL_TYPES.get(type(record[key]), 'TEXT')}"
                       for key in missing]
        if not self.columns:
            self.connection.execute(
                f"CREATE TABLE IF NOT EXISTS {quote(self.table)} "
                f"({', '.join(definitions)})")
        else:
            for definition in definitions:
                self.connection.execute(
                    f"ALTER TABLE {quote(self.table)} ADD COLUMN {definition}")
        self.columns.extend(missing)

    def _begin(self) -> None:
        if not self.in_transaction:
            self.connection.execute("BEGIN")
            self.in_transaction = True

    def write_batch(self, records: list[Any]) -> None:
        self._begin()
        if self.transactional:
            packb = msgpack.packb
            self.connection.executemany(
                "INSERT INTO _flowctl_staged (tbl, token, row) VALUES (?, ?, ?)",
                [(self.table, self.token, packb(record, default=str))
                 for record in records])
            self.token_rows += len(records)
        else:
            self._insert(records)

    def _insert(self, records: list[Any]) -> None:
        rows = [record if isinstance(record, dict) else {"value": record}
                for record in records]
        start = 0
        while start < len(rows):
            keys = list(rows[start])
            self._ensure_columns(rows[start])
            end = start + 1
            while end < len(rows) and list(rows[end]) == keys:
                end += 1
            statement = (f"INSERT INTO {quote(self.table)} "
                         f"({', '.join(quote(key) for key in keys)}) "
                         f"VALUES ({', '.join('?' * len(keys))})")
            self.connection.executemany(
                statement,
                [[to_sql_value(row[key]) for key in keys]
                 for row in rows[start:end]])
            start = end

    def flush(self) -> None:
        if self.in_transaction:
            self.connection.execute("COMMIT")
            self.in_transaction = False

    # Two-phase commit

    def _last_commit(self) -> int:
        row = self.connection.execute(
            "SELECT max(seq) FROM _flowctl_commits WHERE tbl = ?",
            (self.table,)).fetchone()
        return int(row[0] or 0)

    def save_checkpoint(self) -> bytes:
        if not self.transactional:
            return b""
        self.flush()
        if self.token_rows:
            self.pending.append(self.token)
            self.token = uuid.uuid4().hex
            self.token_rows = 0
        return msgpack.packb({"after": self._last_commit(),
                              "pending": self.pending})

    def checkpoint_info(self) -> dict[str, Any]:
        return {"table": self.table, "pending_intervals": len(self.pending)}

    def commit_checkpoint(self, data: bytes) -> None:
        if not self.transactional:
            return
        state = msgpack.unpackb(data, raw=False)
        self.flush()
        self.connection.execute("BEGIN IMMEDIATE")
        self._commit_tokens(state["pending"])
        faults.hit("commit", context().stage_id)
        self.connection.execute("COMMIT")
        done = set(state["pending"])
        self.pending = [token for token in self.pending if token not in done]

    def _commit_tokens(self, tokens: list[str]) -> None:
        execute = self.connection.execute
        for token in tokens:
            rows = execute("SELECT row FROM _flowctl_staged WHERE tbl = ? AND "
                           "token = ? ORDER BY rowid",
                           (self.table, token)).fetchall()
            if not rows:
                continue    # committed before, or an empty interval
            unpackb = msgpack.unpackb
            records = [unpackb(row[0], raw=False) for row in rows]
            first = self._max_rowid() + 1
            self._insert(records)
            execute("INSERT INTO _flowctl_commits (tbl, token, first_rowid, "
                    "last_rowid) VALUES (?, ?, ?, ?)",
                    (self.table, token, first, self._max_rowid()))
            execute("DELETE FROM _flowctl_staged WHERE tbl = ? AND token = ?",
                    (self.table, token))
        execute("DELETE FROM _flowctl_commits WHERE tbl = ? AND seq <= "
                "(SELECT max(seq) FROM _flowctl_commits WHERE tbl = ?) - ?",
                (self.table, self.table, COMMITS_KEPT))

    def _max_rowid(self) -> int:
        if not self.columns:
            return 0
        row = self.connection.execute(
            f"SELECT max(rowid) FROM {quote(self.table)}").fetchone()
        return int(row[0] or 0)

    def restore_checkpoint(self, data: bytes) -> None:
        if not self.transactional or not data:
            return
        state = msgpack.unpackb(data, raw=False)
        tokens = list(state["pending"])
        execute = self.connection.execute
        execute("BEGIN IMMEDIATE")
        # Commits made after this checkpoint, by later checkpoints, are
        # undone: their records come again from the restored sources.
        later = execute("SELECT seq, token, first_rowid, last_rowid FROM "
                        "_flowctl_commits WHERE tbl = ? AND seq > ?",
                        (self.table, int(state["after"]))).fetchall()
        for seq, token, first, last in later:
            if token in tokens:
                continue
            if self.columns:
                execute(f"DELETE FROM {quote(self.table)} WHERE rowid "
                        f"BETWEEN ? AND ?", (first, last))
            execute("DELETE FROM _flowctl_commits WHERE seq = ?", (seq,))
        self._commit_tokens(tokens)
        placeholders = ", ".join("?" * len(tokens))
        execute(f"DELETE FROM _flowctl_staged WHERE tbl = ? AND token NOT IN "
                f"({placeholders})", (self.table, *tokens))
        execute("COMMIT")

    def close(self) -> None:
        self.flush()
        self.connection.close()


if __name__ == "__main__":
    run(WriteSqlite())
