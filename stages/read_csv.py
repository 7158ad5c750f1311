"""read-csv: one record per row, a mapping keyed by the header row.

With `types: auto`, fields that read as integers or decimals become
numbers, except those with a leading zero (007 and 02134 stay text), and
the values listed in `nulls` (by default only the empty string) become
null.  By default every value stays a string.
"""

from __future__ import annotations

import csv
import re
from typing import Any, Iterator

from flowctl.stage import run
from flowctl.stages._files import FileSource


NUMBER_START = frozenset("0123456789+-.")
# A leading zero (a zip code, an id such as 007) keeps a field text.
INTEGER = re.compile(r"[+-]?(0|[1-9][0-9]*)")
DECIMAL = re.compile(
    r"[+-]?((0|[1-9][0-9]*)\.[0-9]*|\.[0-9]+|(0|[1-9][0-9]*))([eE][+-]?[0-9]+)?")


def convert(value: str, nulls: frozenset[str]) -> Any:
    # Only plain ASCII numerals count: int() would also take "1_000" and
    # other scripts' digits, which a CSV file means as text.
    if value in nulls:
        return None
    if value[:1] not in NUMBER_START:
        return value
    if INTEGER.fullmatch(value):
        return int(value)
    if DECIMAL.fullmatch(value):
        return float(value)
    return value


class ReadCsv(FileSource):
    """Rows as mappings; the header is saved with the offset, so a resumed
    run starts in the middle of the file with the same keys."""

    def open(self, config: dict[str, Any]) -> None:
        super().open(config)
        self.auto = config.get("types", "text") == "auto"
        self.delimiter = config.get("delimiter", ",")
        self.nulls = frozenset(config.get("nulls", [""]))
        self.header: list[str] | None = None

    def extra_state(self) -> Any:
        return self.header

    def restore_extra(self, extra: Any) -> None:
        self.header = extra

    def _text_lines(self) -> Iterator[str]:
        # NOTE: rows from a pipe or terminal wait in a batch until more
        # rows come or the input ends, because the CSV reader pulls lines
        # itself and cannot pass IDLE on as read-lines and read-jsonl do.
        for line in self.lines():
            yield line.decode("utf-8", "replace")

    def records(self) -> Iterator[dict[str, Any]]:
        reader = csv.DictReader(self._text_lines(), fieldnames=self.header,
                                delimiter=self.delimiter)
        auto, nulls = self.auto, self.nulls
        for row in reader:
            self.header = reader.fieldnames
            self.records_read += 1
            if auto:
                row = {key: convert(value, nulls) if isinstance(value, str)
                       else value for key, value in row.items()}
            yield row


if __name__ == "__main__":
    run(ReadCsv())
