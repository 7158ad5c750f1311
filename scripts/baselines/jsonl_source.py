"""Write N JSON lines {"seq": i} to stdout (JSON-lines baseline source).

Usage: python jsonl_source.py N
"""

from __future__ import annotations

import json
import sys

WRITE_BUFFER_SIZE = 1024 * 1024


def main() -> None:
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit(f"usage: python jsonl_source.py N (N: records to write, "
                 f"got {sys.argv[1:]})")
    count = int(sys.argv[1])
    dumps = json.dumps
    with open(1, "w", encoding="utf-8", buffering=WRITE_BUFFER_SIZE,
              closefd=False) as out:
        write = out.write
        for seq in range(count):
            write(dumps({"seq": seq}) + "\n")


if __name__ == "__main__":
    main()
