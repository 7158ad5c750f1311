"""Decode each JSON line on stdin and encode it again on stdout.

This is the pass-through processor of the JSON-lines baseline.
"""

from __future__ import annotations

import json

BUFFER_SIZE = 1024 * 1024


def main() -> None:
    loads = json.loads
    dumps = json.dumps
    with open(0, "r", encoding="utf-8", buffering=BUFFER_SIZE,
              closefd=False) as source, \
            open(1, "w", encoding="utf-8", buffering=BUFFER_SIZE,
                 closefd=False) as out:
        write = out.write
        for line in source:
            write(dumps(loads(line)) + "\n")


if __name__ == "__main__":
    main()
