"""Decode each JSON line on stdin and print how many there were.

This is the sink of the JSON-lines baseline.  The count goes to stdout.
"""

from __future__ import annotations

import json

READ_BUFFER_SIZE = 1024 * 1024


def main() -> None:
    loads = json.loads
    count = 0
    with open(0, "r", encoding="utf-8", buffering=READ_BUFFER_SIZE,
              closefd=False) as source:
        for line in source:
            loads(line)
            count += 1
    print(count)


if __name__ == "__main__":
    main()
