"""read-jsonl: one record per line of JSON; blank lines are skipped."""

from __future__ import annotations

import json
from typing import Any, Iterator

from flowctl.stage import run_source
from flowctl.stages._common import open_input


def read_jsonl(config: dict[str, Any]) -> Iterator[Any]:
    path = config["path"]
    loads = json.loads
    with open_input(path) as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                yield loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: invalid JSON: "
                                 f"{error.msg}") from None


if __name__ == "__main__":
    run_source(read_jsonl)
