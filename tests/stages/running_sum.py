"""A stateful processor written with the stage library: it adds up the
field "seq" and emits {"seq": n, "sum": total so far} for every record.

Its running total is its checkpoint state, so after a recovery the sums
go on from the checkpoint instead of starting again from zero.
"""

from __future__ import annotations

import json
from typing import Any

import flowctl
from flowctl import Checkpointable, Processor


class RunningSum(Processor, Checkpointable):
    def open(self, config: dict[str, Any]) -> None:
        self.total = 0

    def process(self, record: Any) -> Any:
        self.total += record["seq"]
        return {"seq": record["seq"], "sum": self.total}

    def save_checkpoint(self) -> bytes:
        return json.dumps({"total": self.total}).encode()

    def restore_checkpoint(self, data: bytes) -> None:
        self.total = json.loads(data)["total"]

    def checkpoint_info(self) -> dict[str, Any]:
        return {"total": self.total}


if __name__ == "__main__":
    flowctl.run(RunningSum())
