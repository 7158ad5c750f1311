"""write-csv: write mapping records as CSV rows under a header row.

The columns are `columns` from the config, or else the keys of the first
record; keys of later records that are not columns are left out, and the
stage names them once on stderr.  Lines end with a line feed.  After a
restart the stage appends to its file without writing the header again.
With checkpointing on, rows are committed at checkpoints (see FileSink).
"""

from __future__ import annotations

import csv
import sys
from typing import Any

from flowctl.stage import run
from flowctl.stages._files import FileSink


class WriteCsv(FileSink):
    def open(self, config: dict[str, Any]) -> None:
        super().open(config)
        self.columns = config.get("columns")
        self.delimiter = config.get("delimiter", ",")
        self.fieldnames: list[str] | None = None
        self.writer: csv.DictWriter | None = None
        self.bound: Any = None
        self.dropped: set[str] = set()

    def write_batch(self, records: list[Any]) -> None:
        header = False
        if self.fieldnames is None:
            first = records[0]
            if not isinstance(first, dict):
                raise TypeError(f"write-csv takes mapping records, got "
                                f"{type(first).__name__}")
            self.fieldnames = self.columns or list(first)
            header = self.written() == 0
        if self.writer is None or self.bound is not self.file:
            # After a checkpoint the sink writes to a new pending file.
            self.writer = csv.DictWriter(
                self.file, fieldnames=self.fieldnames,
                delimiter=self.delimiter, extrasaction="ignore",
                lineterminator="\n")
            self.bound = self.file
        if header:
            self.writer.writeheader()
        self._report_dropped_keys(records)
        self.writer.writerows(records)

    def _report_dropped_keys(self, records: list[Any]) -> None:
        columns = set(self.fieldnames)
        extra = {key for record in records for key in record
                 if key not in columns} - self.dropped
        if extra:
            self.dropped |= extra
            print(f"keys that are not columns are left out: "
                  f"{', '.join(sorted(map(str, extra)))}; set 'columns' to "
                  f"keep them", file=sys.stderr)



if __name__ == "__main__":
    run(WriteCsv())
