"""map: replace each record by a Python expression over r (None drops it)."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

from flowctl.stage import Processor, run
from flowctl.stages._common import compile_batch, compile_expression

# One list comprehension per frame: no Python call per record.  The walrus
# keeps each value once, so None can be dropped without evaluating twice.
BATCH_TEMPLATE = ("[_flowctl_value for r in records "
                  "if (_flowctl_value := EXPR) is not None]")


class Map(Processor):
    def open(self, config: dict[str, Any]) -> None:
        self.process = compile_expression(config["expr"], "expr")
        self.process_batch = compile_batch(BATCH_TEMPLATE, config["expr"],
                                           "expr")


if __name__ == "__main__":
    run(Map())
