"""discard: count records and drop them, for benchmarks and dry runs."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

from flowctl.stage import Sink, run


class Discard(Sink):
    def write_batch(self, records: list[Any]) -> None:
        pass


if __name__ == "__main__":
    run(Discard())
