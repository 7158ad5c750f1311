"""read-csv: one record per row, a mapping keyed by the header row.

With `types: auto`, fields that read as integers or decimals become numbers
and empty fields become null; by default every value stays a string.
"""

from __future__ import annotations

import csv
from typing import Any, Iterator

from flowctl.stage import run_source
from flowctl.stages._common import open_input


def convert(value: str) -> Any:
    if value == "":
        return None
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value


def read_csv(config: dict[str, Any]) -> Iterator[dict[str, Any]]:
    auto = config.get("types", "text") == "auto"
    delimiter = config.get("delimiter", ",")
    with open_input(config["path"], newline="") as file:
        for row in csv.DictReader(file, delimiter=delimiter):
            if auto:
                row = {key: convert(value) if isinstance(value, str) else value
                       for key, value in row.items()}
            yield row


if __name__ == "__main__":
    run_source(read_csv)
