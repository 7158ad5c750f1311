"""generate: records {"seq": i} for i from 0, for tests and benchmarks."""

from __future__ import annotations

import itertools
import time
from typing import Any, Iterator

from flowctl.stage import IDLE, run_source


def generate(config: dict[str, Any]) -> Iterator[Any]:
    count = config.get("count")
    rate = config.get("rate")
    payload = "x" * config["payload"] if config.get("payload") else None
    numbers = range(count) if count is not None else itertools.count()
    if rate is None and payload is None:
        for seq in numbers:
            yield {"seq": seq}
        return
    started = time.monotonic()
    for seq in numbers:
        if rate:
            delay = started + seq / rate - time.monotonic()
            if delay > 0:
                # Yield IDLE first so the batch so far goes out before the
                # pause instead of after it.
                yield IDLE
                time.sleep(delay)
        yield {"seq": seq} if payload is None else {"seq": seq, "data": payload}


if __name__ == "__main__":
    run_source(generate)
