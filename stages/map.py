"""map: replace each record by a Python expression over r (None drops it)."""

from __future__ import annotations

from typing import Any

from flowctl.stage import Processor, run
from flowctl.stages._common import compile_expression


class Map(Processor):
    def open(self, config: dict[str, Any]) -> None:
        # The compiled expression is the process method itself, so the hot
        # loop makes one call per record and no more.
        self.process = compile_expression(config["expr"], "expr")


if __name__ == "__main__":
    run(Map())
