"""read-lines: one record {"line": text} per line, without the newline."""

from __future__ import annotations

from typing import Any, Iterator

from flowctl.stage import IDLE, run
from flowctl.stages._files import FileSource


class ReadLines(FileSource):
    def records(self) -> Iterator[Any]:
        for line in self.lines(idle=True):
            if line is IDLE:
                yield IDLE
                continue
            self.records_read += 1
            text = line.decode("utf-8", "replace")
            if text.endswith("\n"):
                text = text[:-2] if text.endswith("\r\n") else text[:-1]
            yield {"line": text}


if __name__ == "__main__":
    run(ReadLines())
