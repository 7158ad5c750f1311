"""write-csv: write mapping records as CSV rows under a header row.

The columns are `columns` from the config, or else the keys of the first
record; keys of later records that are not columns are left out, and the
stage names them once on stderr.  Lines end with a line feed.  After a
restart the stage appends to its file without writing the header again.
"""

from __future__ import annotations

import csv
import sys
from typing import Any

from flowctl.stage import Sink, run
from flowctl.stages._common import open_output


class WriteCsv(Sink):
    def open(self, config: dict[str, Any]) -> None:
        self.file = open_output(config["path"])
        self.columns = config.get("columns")
        self.delimiter = config.get("delimiter", ",")
        self.writer: csv.DictWriter | None = None
        self.dropped: set[str] = set()

    def write_batch(self, records: list[Any]) -> None:
        if self.writer is None:
            first = records[0]
            if not isinstance(first, dict):
                raise TypeError(f"write-csv takes mapping records, got "
                                f"{type(first).__name__}")
            self.writer = csv.DictWriter(
                self.file, fieldnames=self.columns or list(first),
                delimiter=self.delimiter, extrasaction="ignore",
                lineterminator="\n")
            if not self.file.seekable() or self.file.tell() == 0:
                self.writer.writeheader()
        self._report_dropped_keys(records)
        self.writer.writerows(records)

    def _report_dropped_keys(self, records: list[Any]) -> None:
        columns = set(self.writer.fieldnames)
        extra = {key for record in records for key in record
                 if key not in columns} - self.dropped
        if extra:
            self.dropped |= extra
            print(f"keys that are not columns are left out: "
                  f"{', '.join(sorted(map(str, extra)))}; set 'columns' to "
                  f"keep them", file=sys.stderr)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


if __name__ == "__main__":
    run(WriteCsv())
