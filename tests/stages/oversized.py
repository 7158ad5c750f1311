"""A command stage that sends a valid hello, then announces a frame of
OVERSIZE bytes (default 64 MiB) and stalls, as a corrupt writer would."""

import os
import struct
import time

import msgpack

hello = msgpack.packb([1, {"protocol": "flowctl", "version": 1,
                           "stage": os.environ.get("FLOWCTL_STAGE_ID", "")}])
size = int(os.environ.get("OVERSIZE", str(64 * 1024 * 1024)))
os.write(1, struct.pack(">I", len(hello)) + hello)
os.write(1, struct.pack(">I", size) + b"\x92\x02")
time.sleep(600)
