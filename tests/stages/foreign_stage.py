"""A flowctl processor that uses only the standard library and msgpack.

It follows docs/protocol.md and does not import flowctl, so the tests that
run it show that the document is enough to write a stage in any language.
The stage doubles one numeric field of every map record: the field named by
the config key "field" ("value" when absent). Records without that field
pass through unchanged. It reads any number of inputs, writes every frame to
every output, and forwards barriers. When FLOWCTL_CONTROL_FD is set, it
also speaks the control channel: hello, ready, stats as a heartbeat, done
or error, and the rewire messages that switch it to new pipes when a
neighbouring stage is restarted.

At start it writes its input and output descriptors to stderr, which flowctl
keeps in the stage's log, so tests can see how the pipes were wired.
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import sys
import time
import traceback
from collections import deque
from typing import Any

import msgpack

HEADER = struct.Struct(">I")
PROTOCOL = "flowctl"
VERSION = 1
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024
CONTROL_MAX_FRAME_SIZE = 16 * 1024 * 1024
READ_SIZE = 1 << 16
MAX_FDS_PER_READ = 16
# Stats double as the heartbeat that flowctl's liveness check waits for.
HEARTBEAT_SECONDS = 0.5

HELLO = 1
BATCH = 2
BARRIER = 3
END = 4
ERROR = 5

EXIT_FAILED = 1
EXIT_UPSTREAM_FAILED = 3
EXIT_BAD_INPUT = 4


class StageFailed(Exception):
    """A failure to report downstream and to flowctl, with its exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED,
                 upstream: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.upstream = upstream


class InvalidFrame(Exception):
    """Bytes that do not split into valid frames."""


def encode_frame(value: Any) -> bytes:
    payload = msgpack.packb(value, use_bin_type=True)
    return HEADER.pack(len(payload)) + payload


def split_frames(buffer: bytearray,
                 max_frame_size: int) -> list[tuple[bytes, Any]]:
    """Remove every complete frame from `buffer` and return (bytes, value).

    Raise InvalidFrame for a length over `max_frame_size`, checked before the
    payload has arrived, or for a payload that is not one msgpack value.
    """
    frames = []
    position = 0
    while len(buffer) - position >= HEADER.size:
        (size,) = HEADER.unpack_from(buffer, position)
        if size > max_frame_size:
            raise InvalidFrame(f"a frame of {size} bytes, over the maximum "
                               f"of {max_frame_size} bytes")
        end = position + HEADER.size + size
        if end > len(buffer):
            break
        payload = bytes(buffer[position + HEADER.size:end])
        try:
            value = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException) as error:
            raise InvalidFrame(f"a frame that is not valid msgpack: "
                               f"{error}") from None
        frames.append((bytes(buffer[position:end]), value))
        position = end
    del buffer[:position]
    return frames


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def parse_fds(name: str) -> list[int]:
    return [int(part) for part in os.environ.get(name, "").split(",") if part]


class Counters:
    """Totals since start, in the fields of the control `stats` message."""

    def __init__(self) -> None:
        self.records_in = 0
        self.records_out = 0
        self.frames_in = 0
        self.frames_out = 0
        self.bytes_in = 0
        self.bytes_out = 0

    def as_message(self, kind: str) -> dict[str, Any]:
        return {"type": kind, **vars(self)}


class Control:
    """The stage's end of the control channel, or nothing when it has none.

    Messages from flowctl may carry a file descriptor (SCM_RIGHTS). The
    descriptors are queued in arrival order, and each rewire message takes
    the next one.
    """

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self.socket = socket.socket(fileno=fd) if fd is not None else None
        self.buffer = bytearray()
        self.received_fds: deque[int] = deque()
        self.last_stats = 0.0

    def send(self, message: dict[str, Any]) -> None:
        if self.socket is None:
            return
        try:
            self.socket.sendall(encode_frame(message))
        except OSError:
            # flowctl is gone, and the kernel ends this process with it.
            self.close()

    def send_heartbeat(self, counters: Counters) -> None:
        now = time.monotonic()
        if now - self.last_stats >= HEARTBEAT_SECONDS:
            self.last_stats = now
            self.send(counters.as_message("stats"))

    def read_messages(self) -> list[Any]:
        """Read once and return the complete messages, none at end of file."""
        data, fds, _, _ = socket.recv_fds(self.socket, READ_SIZE,
                                          MAX_FDS_PER_READ)
        self.received_fds.extend(fds)
        if not data:
            # Only a source stops when flowctl goes away, and this stage is
            # a processor, so it just stops listening.
            self.close()
            return []
        self.buffer += data
        try:
            frames = split_frames(self.buffer, CONTROL_MAX_FRAME_SIZE)
        except InvalidFrame as error:
            raise StageFailed(f"flowctl sent {error} on the control "
                              f"channel") from None
        return [value for _, value in frames]

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()
        self.socket = None
        self.fd = None


class Input:
    """One input pipe: its writer's id, unread bytes and protocol state."""

    def __init__(self, fd: int, stage: str, max_frame_size: int) -> None:
        self.fd = fd
        self.stage = stage
        self.max_frame_size = max_frame_size
        self.buffer = bytearray()
        self.greeted = False
        self.ended = False

    def bad_input(self, problem: str) -> StageFailed:
        return StageFailed(f"stage '{self.stage}' {problem}", EXIT_BAD_INPUT,
                           self.stage)

    def read_frames(self, counters: Counters) -> list[tuple[bytes, Any]]:
        """Read once and return each complete frame as (bytes, value).

        End of file at a frame boundary marks the input ended.
        """
        chunk = os.read(self.fd, READ_SIZE)
        if not chunk:
            if self.buffer:
                raise self.bad_input(f"closed its output in the middle of a "
                                     f"frame ({len(self.buffer)} bytes left)")
            self.ended = True
            return []
        counters.bytes_in += len(chunk)
        self.buffer += chunk
        try:
            return split_frames(self.buffer, self.max_frame_size)
        except InvalidFrame as error:
            raise self.bad_input(f"sent {error}") from None

    def switch_to(self, fd: int) -> None:
        """Read from a new pipe, which starts with a hello of its own.

        A partial frame left in the old pipe by the writer that failed is
        dropped with it.
        """
        os.close(self.fd)
        self.fd = fd
        self.buffer = bytearray()
        self.greeted = False
        self.ended = False


class DoubleStage:
    """The processor: wiring from the environment, and the frame loop."""

    def __init__(self) -> None:
        env = os.environ
        self.stage_id = env.get("FLOWCTL_STAGE_ID", "foreign")
        managed = "FLOWCTL_CONTROL_FD" in env
        control_fd = env.get("FLOWCTL_CONTROL_FD")
        self.control = Control(int(control_fd) if control_fd else None)
        self.max_frame_size = int(env.get("FLOWCTL_MAX_FRAME_SIZE")
                                  or DEFAULT_MAX_FRAME_SIZE)
        config = json.loads(env.get("FLOWCTL_CONFIG") or "{}")
        self.field = config.get("field", "value")
        self.counters = Counters()
        # Started by hand, a stage reads frames on stdin and writes stdout.
        input_fds = parse_fds("FLOWCTL_INPUT_FDS") if managed else [0]
        output_fds = parse_fds("FLOWCTL_OUTPUT_FDS") if managed else [1]
        sys.stderr.write(f"input fds: {','.join(map(str, input_fds))}\n"
                         f"output fds: {','.join(map(str, output_fds))}\n")
        sys.stderr.flush()
        self.output_fds = [self.protect_stdout(fd) for fd in output_fds]
        writers = [name for name in env.get("FLOWCTL_INPUT_STAGES", "")
                   .split(",") if name]
        writers += ["upstream"] * (len(input_fds) - len(writers))
        self.inputs = [Input(fd, writer, self.max_frame_size)
                       for fd, writer in zip(input_fds, writers)]

    @staticmethod
    def protect_stdout(fd: int) -> int:
        """Move the output pipe off fd 1 and point fd 1 at stderr.

        After this, a stray write to stdout lands in the log instead of
        corrupting the frame stream.
        """
        if fd != 1:
            return fd
        private = os.dup(1)
        os.dup2(2, 1)
        return private

    def hello_frame(self) -> bytes:
        return encode_frame([HELLO, {"protocol": PROTOCOL, "version": VERSION,
                                     "stage": self.stage_id}])

    def write_frame(self, frame: bytes) -> None:
        for fd in self.output_fds:
            write_all(fd, frame)
        self.counters.frames_out += 1
        self.counters.bytes_out += len(frame) * len(self.output_fds)

    def write_batch(self, records: list[Any]) -> None:
        """Write records as one batch, or as halves if over the maximum."""
        frame = encode_frame([BATCH, records])
        if len(frame) - HEADER.size > self.max_frame_size:
            if len(records) == 1:
                raise StageFailed(f"a record of {len(frame)} bytes is over "
                                  f"the maximum frame size of "
                                  f"{self.max_frame_size} bytes")
            middle = len(records) // 2
            self.write_batch(records[:middle])
            self.write_batch(records[middle:])
            return
        self.write_frame(frame)
        self.counters.records_out += len(records)

    def double(self, record: Any) -> Any:
        if not isinstance(record, dict) or self.field not in record:
            return record
        value = record[self.field]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise StageFailed(f"field {self.field!r} is not a number in "
                              f"record {record!r}")
        return {**record, self.field: value * 2}

    def run(self) -> None:
        self.control.send({"type": "hello", "stage": self.stage_id,
                           "pid": os.getpid(), "role": "processor",
                           "version": VERSION, "features": ["rewire"]})
        for fd in self.output_fds:
            write_all(fd, self.hello_frame())
        # This stage opens nothing before it can work, so it is ready now.
        self.control.send({"type": "ready"})
        while any(not item.ended for item in self.inputs):
            watched = [item.fd for item in self.inputs if not item.ended]
            if self.control.fd is not None:
                watched.append(self.control.fd)
            ready, _, _ = select.select(watched, [], [], HEARTBEAT_SECONDS)
            if self.control.fd is not None and self.control.fd in ready:
                for message in self.control.read_messages():
                    self.apply_control(message)
            for item in self.inputs:
                if item.fd in ready and not item.ended:
                    self.read_input(item)
            self.control.send_heartbeat(self.counters)
        self.write_frame(encode_frame([END]))
        self.control.send(self.counters.as_message("done"))

    def read_input(self, item: Input) -> None:
        for frame_bytes, frame in item.read_frames(self.counters):
            self.handle(item, frame_bytes, frame)
            if item.ended:
                # The end frame is the last one a pipe carries.
                return

    def apply_control(self, message: Any) -> None:
        """Apply a rewire message from flowctl, between two frames.

        `index` is the position in FLOWCTL_INPUT_FDS or FLOWCTL_OUTPUT_FDS.
        A processor never gets `stop`, and other types are ignored.
        """
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        if kind not in ("rewire_input", "rewire_output"):
            return
        if not self.control.received_fds:
            raise StageFailed(f"flowctl sent {kind} without a file "
                              f"descriptor")
        fd = self.control.received_fds.popleft()
        index = int(message.get("index", 0))
        if kind == "rewire_output":
            old = self.output_fds[index]
            self.output_fds[index] = fd
            os.close(old)
            write_all(fd, self.hello_frame())
            direction = "output"
        else:
            self.inputs[index].switch_to(fd)
            direction = "input"
        sys.stderr.write(f"rewired {direction} {index}\n")
        sys.stderr.flush()
        self.control.send({"type": "rewired", "direction": direction,
                           "index": index})

    def handle(self, source: Input, frame_bytes: bytes, frame: Any) -> None:
        if not source.greeted:
            check_hello(source, frame)
            source.greeted = True
            return
        if (not isinstance(frame, list) or not frame
                or not isinstance(frame[0], int)):
            raise source.bad_input(f"sent {frame!r:.60}, not a frame")
        kind = frame[0]
        if kind == BATCH:
            if len(frame) < 2 or not isinstance(frame[1], list):
                raise source.bad_input("sent a batch frame without a "
                                       "list of records")
            self.counters.frames_in += 1
            self.counters.records_in += len(frame[1])
            results = [self.double(record) for record in frame[1]]
            if results:
                self.write_batch(results)
        elif kind == BARRIER:
            # Each batch is written out as soon as it is processed, so
            # nothing is buffered and the barrier can go on at once.
            self.write_frame(frame_bytes)
        elif kind == END:
            source.ended = True
        elif kind == ERROR:
            info = {}
            if len(frame) > 1 and isinstance(frame[1], dict):
                info = frame[1]
            upstream = str(info.get("stage", source.stage))
            message = str(info.get("message", "no message"))
            raise StageFailed(f"upstream stage '{upstream}' failed: {message}",
                              EXIT_UPSTREAM_FAILED, upstream)
        else:
            raise source.bad_input(f"sent an unknown frame type {kind!r}")

    def fail(self, failure: StageFailed) -> None:
        """Report the failure, then exit with its code.

        Under flowctl the report goes on the control channel only, so that
        the readers keep running and a restart of this stage can rejoin
        them. Started by hand, the stage writes an error frame instead.
        """
        sys.stderr.write(f"{failure.message}\n")
        sys.stderr.flush()
        if self.control.fd is not None:
            self.control.send(self.counters.as_message("stats"))
            message = {"type": "error", "message": failure.message,
                       "exit_code": failure.exit_code}
            if failure.upstream is not None:
                message["upstream"] = failure.upstream
            self.control.send(message)
        else:
            frame = encode_frame([ERROR, {"stage": self.stage_id,
                                          "message": failure.message}])
            for fd in self.output_fds:
                try:
                    write_all(fd, frame)
                except OSError:
                    pass
        os._exit(failure.exit_code)


def check_hello(source: Input, frame: Any) -> None:
    if (not isinstance(frame, list) or len(frame) < 2 or frame[0] != HELLO
            or not isinstance(frame[1], dict)):
        raise source.bad_input(f"sent {frame!r:.60} as its first frame, "
                               f"not a hello")
    info = frame[1]
    if info.get("protocol") != PROTOCOL:
        raise source.bad_input(f"speaks protocol {info.get('protocol')!r}, "
                               f"not {PROTOCOL!r}")
    if info.get("version") != VERSION:
        raise source.bad_input(f"speaks protocol version "
                               f"{info.get('version')!r}, not {VERSION}")


def main() -> None:
    stage = DoubleStage()
    try:
        stage.run()
    except StageFailed as failure:
        stage.fail(failure)
    except BrokenPipeError:
        stage.fail(StageFailed("a downstream stage closed its input"))
    except Exception as error:  # noqa: BLE001 - every failure is reported
        traceback.print_exc(file=sys.stderr)
        stage.fail(StageFailed(f"{type(error).__name__}: {error}"))
    sys.exit(0)


if __name__ == "__main__":
    main()
