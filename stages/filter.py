"""filter: keep the records for which a Python expression over r is true."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

from flowctl.stage import Processor, run
from flowctl.stages._common import compile_batch, compile_expression

BATCH_TEMPLATE = "[r for r in records if EXPR]"


class Filter(Processor):
    def open(self, config: dict[str, Any]) -> None:
        self.predicate = compile_expression(config["where"], "where")
        self.process_batch = compile_batch(BATCH_TEMPLATE, config["where"],
                                           "where")

    def process(self, record: Any) -> Any:
        if self.predicate(record):
            return record
        return None


if __name__ == "__main__":
    run(Filter())
