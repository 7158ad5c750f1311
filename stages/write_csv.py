"""write-csv: write mapping records as CSV rows under a header row.

The columns are `columns` from the config, or else the keys of the first
record; keys of later records that are not columns are left out.
"""

from __future__ import annotations

import csv
from typing import Any

from flowctl.stage import Sink, run
from flowctl.stages._common import open_output


class WriteCsv(Sink):
    def open(self, config: dict[str, Any]) -> None:
        self.file = open_output(config["path"])
        self.columns = config.get("columns")
        self.delimiter = config.get("delimiter", ",")
        self.writer: csv.DictWriter | None = None

    def write_batch(self, records: list[Any]) -> None:
        if self.writer is None:
            first = records[0]
            if not isinstance(first, dict):
                raise TypeError(f"write-csv takes mapping records, got "
                                f"{type(first).__name__}")
            self.writer = csv.DictWriter(
                self.file, fieldnames=self.columns or list(first),
                delimiter=self.delimiter, extrasaction="ignore")
            self.writer.writeheader()
        self.writer.writerows(records)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


if __name__ == "__main__":
    run(WriteCsv())
