"""generate: records {"seq": i} for i from 0, for tests and benchmarks."""

from __future__ import annotations

import itertools
import time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterator

import msgpack

from flowctl.stage import IDLE, Checkpointable, Source, context, run

BATCH = 1024


class Generate(Source, Checkpointable):
    # Lists of records: building a list per batch costs far less than a
    # step of the stage library per record.
    batched = True

    def open(self, config: dict[str, Any]) -> None:
        self.count = config.get("count")
        self.rate = config.get("rate")
        size = config.get("payload")
        self.payload = "x" * size if size else None
        # Lists no longer than a frame's batch, so frames.batch_size holds.
        self.batch = min(BATCH, context().batch_size)
        # The next sequence number: what a checkpoint saves.
        self.next_seq = 0

    def save_checkpoint(self) -> bytes:
        return msgpack.packb({"next_seq": self.next_seq})

    def restore_checkpoint(self, data: bytes) -> None:
        self.next_seq = int(msgpack.unpackb(data)["next_seq"])

    def checkpoint_info(self) -> dict[str, Any]:
        return {"next_seq": self.next_seq}

    def records(self) -> Iterator[Any]:
        if self.rate is None and self.payload is None:
            yield from self._fast()
            return
        started = time.monotonic()
        first = self.next_seq
        numbers = (range(first, self.count) if self.count is not None
                   else itertools.count(first))
        for seq in numbers:
            if self.rate:
                delay = started + (seq - first) / self.rate - time.monotonic()
                if delay > 0:
                    # IDLE first, so the batch so far goes out before the
                    # pause instead of after it.
                    yield IDLE
                    time.sleep(delay)
            self.next_seq = seq + 1
            if self.payload is None:
                yield [{"seq": seq}]
            else:
                yield [{"seq": seq, "data": self.payload}]

    def _fast(self) -> Iterator[list[dict[str, int]]]:
        first = self.next_seq
        batch = self.batch
        starts = (range(first, self.count, batch) if self.count is not None
                  else itertools.count(first, batch))
        for start in starts:
            end = start + batch
            if self.count is not None:
                end = min(end, self.count)
            self.next_seq = end
            yield [{"seq": seq} for seq in range(start, end)]


if __name__ == "__main__":
    run(Generate())
