"""count-by: count records per value of a field.

At the end of the stream it emits one record {"key": value, "count": n}
per value, in the order the values were first seen.  A record without
the field counts under null.  The counts are the stage's checkpoint
state, so a resumed run counts on from the last checkpoint.
"""

from __future__ import annotations

from typing import Any

import msgpack

from flowctl.stage import Checkpointable, Processor, run


class CountBy(Processor, Checkpointable):
    def open(self, config: dict[str, Any]) -> None:
        self.key = config["key"]
        self.counts: dict[Any, int] = {}

    def process(self, record: Any) -> None:
        value = record.get(self.key)
        self.counts[value] = self.counts.get(value, 0) + 1

    def process_batch(self, records: list[Any]) -> list[Any]:
        counts = self.counts
        get = counts.get
        key = self.key
        for record in records:
            value = record.get(key)
            counts[value] = get(value, 0) + 1
        return []

    def finish(self) -> list[dict[str, Any]]:
        return [{"key": value, "count": count}
                for value, count in self.counts.items()]

    def save_checkpoint(self) -> bytes:
        return msgpack.packb(list(self.counts.items()))

    def restore_checkpoint(self, data: bytes) -> None:
        self.counts = {value: count for value, count
                       in msgpack.unpackb(data, raw=False)}

    def checkpoint_info(self) -> dict[str, Any]:
        return {"keys": len(self.counts),
                "records": sum(self.counts.values())}


if __name__ == "__main__":
    run(CountBy())
