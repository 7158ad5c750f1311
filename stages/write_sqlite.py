"""write-sqlite: insert mapping records as rows of a SQLite table.

The table is created from the first record when it does not exist, with a
column per key typed by its value (INTEGER, REAL or TEXT); a later record
with a new key adds a column.  Nested values are stored as JSON text, and a
record that is not a mapping is stored in a column named "value".  Rows are
committed whenever the input is idle and at the end of the stream.  With
`mode: replace`, the table is emptied when the run starts, not when the
stage is restarted.
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

from flowctl.stage import Sink, context, run

SQL_TYPES = {bool: "INTEGER", int: "INTEGER", float: "REAL"}


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def to_sql_value(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bytes)):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


class WriteSqlite(Sink):
    def open(self, config: dict[str, Any]) -> None:
        path = config["path"]
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        self.table = config["table"]
        self.connection = sqlite3.connect(path, isolation_level=None)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.columns = self._existing_columns()
        first_start = context().restarts == 0
        if config.get("mode") == "replace" and self.columns and first_start:
            self.connection.execute(f"DELETE FROM {quote(self.table)}")
        self.in_transaction = False

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

    def write_batch(self, records: list[Any]) -> None:
        rows = [record if isinstance(record, dict) else {"value": record}
                for record in records]
        if not self.in_transaction:
            self.connection.execute("BEGIN")
            self.in_transaction = True
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

    def close(self) -> None:
        self.flush()
        self.connection.close()


if __name__ == "__main__":
    run(WriteSqlite())
