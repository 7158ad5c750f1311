"""The wire format that stages speak: length-prefixed msgpack frames.

Every frame is a 4-byte big-endian unsigned length followed by that many
bytes of msgpack.  On the data pipes between stages, the msgpack value is
an array whose first element is the frame type.  The control channel
between a stage and the orchestrator uses the same framing around maps
with a "type" key.  `docs/protocol.md`
is the reference for authors of stages in other languages.
"""

from __future__ import annotations

import errno
import os
import struct
# typing is imported only by type checkers: a stage process starts
# faster without it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

import msgpack

VERSION = 1
PROTOCOL_NAME = "flowctl"

HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024
# Bytes per read from a pipe.  Small enough that the frames decoded from
# one read are few: decoding a megabyte at once allocates and faults in
# about a hundred thousand records before the first is processed.
READ_CHUNK_SIZE = 64 * 1024

# Data frame types: the first element of every data frame's array.
HELLO = 1
BATCH = 2
BARRIER = 3
END = 4
ERROR = 5

FRAME_NAMES = {HELLO: "hello", BATCH: "batch", BARRIER: "barrier",
               END: "end", ERROR: "error"}


class ProtocolError(Exception):
    """A peer sent bytes that are not a valid frame sequence."""


def pack(value: Any) -> bytes:
    """Encode one msgpack value as a frame (header and payload)."""
    payload = msgpack.packb(value, use_bin_type=True)
    return HEADER.pack(len(payload)) + payload


def hello_frame(stage_id: str) -> bytes:
    return pack([HELLO, {"protocol": PROTOCOL_NAME, "version": VERSION,
                         "stage": stage_id}])


def end_frame() -> bytes:
    return pack([END])


def barrier_frame(checkpoint_id: int) -> bytes:
    return pack([BARRIER, {"id": checkpoint_id}])


def error_frame(stage_id: str, message: str) -> bytes:
    return pack([ERROR, {"stage": stage_id, "message": message}])


def check_hello(frame: Any, peer: str) -> None:
    """Raise ProtocolError unless `frame` is a hello of our version."""
    if (not isinstance(frame, list) or not frame or frame[0] != HELLO
            or len(frame) < 2 or not isinstance(frame[1], dict)):
        raise ProtocolError(
            f"expected a hello frame from {peer} as its first frame, "
            f"got {describe(frame)}")
    info = frame[1]
    if info.get("protocol") != PROTOCOL_NAME:
        raise ProtocolError(f"{peer} speaks protocol "
                            f"{info.get('protocol')!r}, not {PROTOCOL_NAME!r}")
    if info.get("version") != VERSION:
        raise ProtocolError(
            f"{peer} speaks protocol version {info.get('version')}, "
            f"this flowctl speaks version {VERSION}")


def describe(frame: Any) -> str:
    """Name a frame for an error message without dumping all of it."""
    if isinstance(frame, list) and frame and frame[0] in FRAME_NAMES:
        return f"a {FRAME_NAMES[frame[0]]} frame"
    text = repr(frame)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"the value {text}"


def format_size(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} bytes"


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte to a blocking file descriptor.

    A pipe write larger than the free space in the pipe may return after a
    partial write when a signal arrives, so the remainder is written in a
    loop rather than assumed gone.
    """
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class FrameReader:
    """Decode frames from one file descriptor, bounding each frame's size.

    `read_frames()` blocks for at most one read and returns every complete
    frame that read made available.  An empty list with `eof` set means
    the writer closed its end.
    """

    def __init__(self, fd: int, peer: str,
                 max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.fd = fd
        self.peer = peer
        self.max_frame_size = max_frame_size
        self.eof = False
        self.bytes_read = 0
        self._buffer = bytearray()

    def read_frames(self) -> list[Any]:
        try:
            chunk = os.read(self.fd, READ_CHUNK_SIZE)
        except BlockingIOError:
            return []
        except OSError as error:
            if error.errno in (errno.ECONNRESET, errno.EPIPE):
                chunk = b""
            else:
                raise
        if not chunk:
            self.eof = True
            if self._buffer:
                raise ProtocolError(
                    f"{self.peer} closed its output in the middle of a "
                    f"frame ({len(self._buffer)} bytes left over)")
            return []
        return self.feed(chunk)

    def feed(self, chunk: bytes) -> list[Any]:
        """Add bytes read elsewhere and return the frames now complete."""
        self.bytes_read += len(chunk)
        self._buffer += chunk
        return self.split_frames()

    def split_frames(self) -> list[Any]:
        frames = []
        buffer = self._buffer
        position = 0
        available = len(buffer)
        while available - position >= HEADER.size:
            (size,) = HEADER.unpack_from(buffer, position)
            if size > self.max_frame_size:
                raise ProtocolError(self._oversize_message(size, position))
            end = position + HEADER.size + size
            if end > available:
                break
            payload = bytes(buffer[position + HEADER.size:end])
            try:
                frames.append(msgpack.unpackb(
                    payload, raw=False, strict_map_key=False))
            except (ValueError, msgpack.UnpackException) as error:
                raise ProtocolError(
                    f"{self.peer} sent a frame of {size} bytes that is not "
                    f"valid msgpack: {error}") from None
            position = end
        if position:
            del buffer[:position]
        return frames

    def _oversize_message(self, size: int, position: int) -> str:
        head = bytes(self._buffer[position:position + 16])
        message = (f"{self.peer} sent a frame of {size} bytes, over the "
                   f"maximum frame size of {format_size(self.max_frame_size)}")
        if head[:4].isascii() and bytes(head[:4]).strip().isalnum():
            message += (f"; its output starts with {head!r}, which looks "
                        f"like text rather than flowctl frames (a text "
                        f"program needs a codec such as 'lines')")
        return message
