"""Decode each batch frame on stdin, apply the map to every record, and
encode the batch again on stdout.

This is the `map r` processor of the bare msgpack baseline: the map
function returns its record, as `map expr=r` does in flowctl.  Frames
are a 4-byte big-endian payload length and a msgpack payload
[2, [record, ...]], as in flowctl.
"""

from __future__ import annotations

import fcntl
import struct
import sys

import msgpack

HEADER = struct.Struct(">I")
# The frame type of a batch frame, the first element of its array.
BATCH_FRAME_TYPE = 2
# flowctl gives each pipe between stages 1 MiB, so the baseline does too
# and the comparison is between the code at either end, not pipe sizes.
PIPE_SIZE = 1024 * 1024
READ_BUFFER_SIZE = 1024 * 1024


def enlarge_stdout_pipe() -> None:
    try:
        fcntl.fcntl(1, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # stdout is not a pipe, or the size is over pipe-max-size


def transform(record: object) -> object:
    """Return the record itself: the benchmark's map, `r`."""
    return record


def main() -> None:
    enlarge_stdout_pipe()
    pack = msgpack.Packer(use_bin_type=True).pack
    unpackb = msgpack.unpackb
    pack_header = HEADER.pack
    unpack_header = HEADER.unpack
    with open(0, "rb", buffering=READ_BUFFER_SIZE, closefd=False) as source, \
            open(1, "wb", closefd=False) as out:
        read = source.read
        write = out.write
        while header := read(HEADER.size):
            (size,) = unpack_header(header)
            kind, records = unpackb(read(size))
            if kind != BATCH_FRAME_TYPE:
                sys.exit(f"msgpack_pass: expected a batch frame (type "
                         f"{BATCH_FRAME_TYPE}), got frame type {kind!r}")
            records = [transform(record) for record in records]
            payload = pack([BATCH_FRAME_TYPE, records])
            write(pack_header(len(payload)) + payload)


if __name__ == "__main__":
    main()
