"""Decode each batch frame on stdin and print how many records there were.

This is the sink of the bare msgpack baseline.  The count goes to stdout.
"""

from __future__ import annotations

import struct
import sys

import msgpack

HEADER = struct.Struct(">I")
# The frame type of a batch frame, the first element of its array.
BATCH_FRAME_TYPE = 2
READ_BUFFER_SIZE = 1024 * 1024


def main() -> None:
    unpackb = msgpack.unpackb
    unpack_header = HEADER.unpack
    count = 0
    with open(0, "rb", buffering=READ_BUFFER_SIZE, closefd=False) as source:
        read = source.read
        while header := read(HEADER.size):
            (size,) = unpack_header(header)
            kind, records = unpackb(read(size))
            if kind != BATCH_FRAME_TYPE:
                sys.exit(f"msgpack_sink: expected a batch frame (type "
                         f"{BATCH_FRAME_TYPE}), got frame type {kind!r}")
            count += len(records)
    print(count)


if __name__ == "__main__":
    main()
