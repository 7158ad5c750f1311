"""read-lines: one record {"line": text} per line, without the newline."""

from __future__ import annotations

from typing import Any, Iterator

from flowctl.stage import run_source
from flowctl.stages._common import open_input


def read_lines(config: dict[str, Any]) -> Iterator[dict[str, str]]:
    with open_input(config["path"]) as file:
        for line in file:
            yield {"line": line[:-1] if line.endswith("\n") else line}


if __name__ == "__main__":
    run_source(read_lines)
