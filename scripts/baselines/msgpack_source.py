"""Write N records {"seq": i} to stdout as flowctl batch frames.

Usage: python msgpack_source.py N

A frame is a 4-byte big-endian payload length and a msgpack payload
[2, [record, ...]], the same framing flowctl stages use, with up to
BATCH_SIZE records a frame.  End of stream is the end of the pipe.
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
BATCH_SIZE = 1024


def enlarge_stdout_pipe() -> None:
    try:
        fcntl.fcntl(1, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # stdout is not a pipe, or the size is over pipe-max-size


def main() -> None:
    enlarge_stdout_pipe()
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit(f"usage: python msgpack_source.py N (N: records to write, "
                 f"got {sys.argv[1:]})")
    count = int(sys.argv[1])
    pack = msgpack.Packer(use_bin_type=True).pack
    pack_header = HEADER.pack
    with open(1, "wb", closefd=False) as out:
        write = out.write
        for start in range(0, count, BATCH_SIZE):
            stop = min(start + BATCH_SIZE, count)
            records = [{"seq": seq} for seq in range(start, stop)]
            payload = pack([BATCH_FRAME_TYPE, records])
            write(pack_header(len(payload)) + payload)


if __name__ == "__main__":
    main()
