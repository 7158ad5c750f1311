"""Codecs that turn records into the text an executable reads on stdin,
and the text it writes on stdout back into records.

`lines`: a record goes in as one line: a string as itself, a mapping with a
"line" key as that value, anything else as JSON.  Every output line becomes
a record {"line": text} without its newline.

`jsonl`: a record goes in as one line of JSON; every non-blank output line
is parsed as JSON and becomes one record.

`csv`: mapping records go in as CSV rows after a header row taken from the
first record's keys (keys that later records add are left out, with a
message on stderr); output is read as CSV with a header row, and every row
becomes a mapping of column to string.

Text is UTF-8; bytes that are not valid UTF-8 are replaced with U+FFFD.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from typing import Any

TEXT_CODECS = ("lines", "jsonl", "csv")
CODECS = ("msgpack",) + TEXT_CODECS


class CodecError(Exception):
    """Output of an executable that its codec cannot turn into records."""


def _json_line(record: Any) -> str:
    return json.dumps(record, ensure_ascii=False, default=str,
                      separators=(",", ":"))


class LinesCodec:
    def __init__(self) -> None:
        self._rest = b""

    def encode(self, records: list[Any]) -> bytes:
        lines = []
        for record in records:
            if isinstance(record, str):
                lines.append(record)
            elif isinstance(record, dict) and "line" in record:
                lines.append(str(record["line"]))
            else:
                lines.append(_json_line(record))
        lines.append("")
        return "\n".join(lines).encode("utf-8", "replace")

    def split(self, data: bytes) -> list[str]:
        """Return the complete lines in `data`, keeping a partial last one."""
        data = self._rest + data
        parts = data.split(b"\n")
        self._rest = parts.pop()
        return [part.decode("utf-8", "replace") for part in parts]

    def split_end(self) -> list[str]:
        rest, self._rest = self._rest, b""
        return [rest.decode("utf-8", "replace")] if rest else []

    def decode(self, data: bytes) -> list[Any]:
        return [{"line": line} for line in self.split(data)]

    def decode_end(self) -> list[Any]:
        return [{"line": line} for line in self.split_end()]


class JsonlCodec(LinesCodec):
    def encode(self, records: list[Any]) -> bytes:
        text = "".join([_json_line(record) + "\n" for record in records])
        return text.encode("utf-8", "replace")

    def _parse(self, lines: list[str]) -> list[Any]:
        records = []
        for line in lines:
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                preview = line if len(line) <= 80 else line[:77] + "..."
                raise CodecError(f"output line is not JSON ({error.msg}): "
                                 f"{preview!r}") from None
        return records

    def decode(self, data: bytes) -> list[Any]:
        return self._parse(self.split(data))

    def decode_end(self) -> list[Any]:
        return self._parse(self.split_end())


class CsvCodec(LinesCodec):
    def __init__(self) -> None:
        super().__init__()
        self._columns: list[str] | None = None
        self._dropped: set[str] = set()
        self._header: list[str] | None = None
        self._pending = ""

    def encode(self, records: list[Any]) -> bytes:
        if not records:
            return b""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        if self._columns is None:
            first = records[0]
            if not isinstance(first, dict):
                raise CodecError(f"the csv codec takes mapping records, got "
                                 f"{type(first).__name__}")
            self._columns = list(first)
            writer.writerow(self._columns)
        columns = set(self._columns)
        for record in records:
            if not isinstance(record, dict):
                raise CodecError(f"the csv codec takes mapping records, got "
                                 f"{type(record).__name__}")
            writer.writerow([record.get(column, "") for column in self._columns])
            if not columns.issuperset(record):
                self._report_dropped(set(record) - columns)
        return out.getvalue().encode("utf-8", "replace")

    def _report_dropped(self, keys: set[str]) -> None:
        new = keys - self._dropped
        if new:
            self._dropped |= new
            print(f"csv codec: keys that are not columns are left out: "
                  f"{', '.join(sorted(map(str, new)))} (the columns are the "
                  f"first record's keys)", file=sys.stderr)

    def _rows(self, lines: list[str]) -> list[Any]:
        # A quoted field may hold a newline; an odd number of quote marks so
        # far means the row continues on the next line.
        complete = []
        for line in lines:
            self._pending = f"{self._pending}\n{line}" if self._pending else line
            if self._pending.count('"') % 2 == 0:
                complete.append(self._pending)
                self._pending = ""
        records = []
        for row in csv.reader(complete):
            if not row:
                continue
            if self._header is None:
                self._header = row
                continue
            records.append(dict(zip(self._header, row)))
        return records

    def decode(self, data: bytes) -> list[Any]:
        return self._rows(self.split(data))

    def decode_end(self) -> list[Any]:
        records = self._rows(self.split_end())
        if self._pending:
            preview = self._pending[:77]
            raise CodecError(f"output ends inside a quoted CSV field: "
                             f"{preview!r}")
        return records


def make_codec(name: str) -> LinesCodec:
    codecs = {"lines": LinesCodec, "jsonl": JsonlCodec, "csv": CsvCodec}
    return codecs[name]()
