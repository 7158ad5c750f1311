"""generate: records {"seq": i} for i from 0, for tests and benchmarks."""

from __future__ import annotations

import itertools
import time
from typing import Any, Iterator

from flowctl.stage import IDLE, Source, run

BATCH = 1024


class Generate(Source):
    # Lists of records: building a list per batch costs far less than a
    # step of the stage library per record.
    batched = True

    def open(self, config: dict[str, Any]) -> None:
        self.count = config.get("count")
        self.rate = config.get("rate")
        size = config.get("payload")
        self.payload = "x" * size if size else None

    def records(self) -> Iterator[Any]:
        if self.rate is None and self.payload is None:
            yield from self._fast()
            return
        started = time.monotonic()
        numbers = (range(self.count) if self.count is not None
                   else itertools.count())
        for seq in numbers:
            if self.rate:
                delay = started + seq / self.rate - time.monotonic()
                if delay > 0:
                    # IDLE first, so the batch so far goes out before the
                    # pause instead of after it.
                    yield IDLE
                    time.sleep(delay)
            if self.payload is None:
                yield [{"seq": seq}]
            else:
                yield [{"seq": seq, "data": self.payload}]

    def _fast(self) -> Iterator[list[dict[str, int]]]:
        starts = (range(0, self.count, BATCH) if self.count is not None
                  else itertools.count(0, BATCH))
        for start in starts:
            end = start + BATCH
            if self.count is not None:
                end = min(end, self.count)
            yield [{"seq": seq} for seq in range(start, end)]


if __name__ == "__main__":
    run(Generate())
