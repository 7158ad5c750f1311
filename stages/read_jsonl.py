"""read-jsonl: one record per line of JSON; blank lines are skipped."""

from __future__ import annotations

import json
from typing import Any, Iterator

from flowctl.stage import IDLE, run
from flowctl.stages._files import FileSource


class ReadJsonl(FileSource):
    def records(self) -> Iterator[Any]:
        loads = json.loads
        for line in self.lines(idle=True):
            if line is IDLE:
                yield IDLE
                continue
            if not line.strip():
                continue
            try:
                record = loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{self.path}:{self.lines_read}: invalid "
                                 f"JSON: {error.msg}") from None
            self.records_read += 1
            yield record


if __name__ == "__main__":
    run(ReadJsonl())
