"""The stage side of a run: the environment flowctl gives a stage process,
its input and output pipes, and its control channel to the orchestrator.

The stage library (`flowctl.stage`) and the adapter for external
executables are built on this module; stage authors use `flowctl.stage`.
"""

from __future__ import annotations

import _thread
import json
import os
import select
import time
from collections import deque
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

import msgpack

from flowctl import protocol

# Environment variables set by the orchestrator for every stage process.
ENV_STAGE_ID = "FLOWCTL_STAGE_ID"
ENV_RUN_ID = "FLOWCTL_RUN_ID"
ENV_INPUT_FDS = "FLOWCTL_INPUT_FDS"
ENV_INPUT_STAGES = "FLOWCTL_INPUT_STAGES"
ENV_OUTPUT_FDS = "FLOWCTL_OUTPUT_FDS"
ENV_CONTROL_FD = "FLOWCTL_CONTROL_FD"
ENV_CONFIG = "FLOWCTL_CONFIG"
ENV_MAX_FRAME_SIZE = "FLOWCTL_MAX_FRAME_SIZE"
ENV_BATCH_SIZE = "FLOWCTL_BATCH_SIZE"
ENV_FLUSH_INTERVAL = "FLOWCTL_FLUSH_INTERVAL"
ENV_STDOUT_FD = "FLOWCTL_STDOUT_FD"
ENV_STDIN_FD = "FLOWCTL_STDIN_FD"
ENV_RESTARTS = "FLOWCTL_RESTARTS"
ENV_CHECKPOINTS = "FLOWCTL_CHECKPOINTS"
ENV_RESTORE = "FLOWCTL_RESTORE"
# Set when flowctl started this stage without binding it to flowctl's
# lifetime.  The stage then requests the parent-death signal itself.
ENV_PARENT_PID = "FLOWCTL_PARENT_PID"

DEFAULT_BATCH_SIZE = 1024
DEFAULT_FLUSH_INTERVAL = 0.05
HEARTBEAT_INTERVAL = 0.5
# Batches of large records are cut to about this many bytes, so a batch of
# 1 MB records does not hold a gigabyte in memory before it is sent.
TARGET_FRAME_BYTES = 1024 * 1024
# Records in the first batch, before their size is known.
FIRST_BATCH_LIMIT = 16

# Exit codes a stage uses so the orchestrator can tell whose fault a
# failure was: its own, an upstream stage's, or the bytes it was sent.
EXIT_FAILED = 1
EXIT_UPSTREAM_FAILED = 3
EXIT_BAD_INPUT = 4


class UpstreamFailed(Exception):
    """An upstream stage sent an error frame and will send nothing more."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"upstream stage '{stage}' failed: {message}")
        self.stage = stage
        self.message = message


class OutputsClosed(Exception):
    """Every reader of this stage's output has gone: nothing is left to do.

    Like a shell pipeline's SIGPIPE, this ends a stage quietly: when `head`
    has read enough, the stages before it stop too.
    """


class BadInput(Exception):
    """An upstream stage wrote bytes that are not valid frames."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


def _load_restore(path: str | None) -> dict[str, Any] | None:
    """Read what the orchestrator saved for this stage to resume from."""
    if not path:
        return None
    with open(path, "rb") as file:
        data = msgpack.unpackb(file.read(), raw=False)
    return data if isinstance(data, dict) else None


def _fd_list(name: str) -> list[int]:
    value = os.environ.get(name, "")
    return [int(part) for part in value.split(",") if part != ""]


class Stats:
    """Counters a stage reports to the orchestrator."""

    __slots__ = ("records_in", "records_out", "frames_in", "frames_out",
                 "bytes_in", "bytes_out")

    def __init__(self) -> None:
        self.records_in = 0
        self.records_out = 0
        self.frames_in = 0
        self.frames_out = 0
        self.bytes_in = 0
        self.bytes_out = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


MAX_FDS_PER_READ = 16


class Control:
    """The stage's end of its control channel to the orchestrator.

    Messages are frames holding a map with a "type" key.  The orchestrator
    sends "stop" to a source, and "rewire_input" or "rewire_output" with a
    new pipe attached (SCM_RIGHTS) when a neighbouring stage was restarted.
    With checkpointing on, it sends "barrier" to a source (start checkpoint
    `id`), "commit" to a sink (checkpoint `id` is complete), and "release"
    to a sink waiting at the end of its stream without a final checkpoint.
    Without a control channel (a stage started by hand) every method is a
    no-op, so a stage program also runs and tests outside flowctl.
    """

    def __init__(self, fd: int | None, stage_id: str) -> None:
        self.fd = fd
        self.stage_id = stage_id
        self.stop_requested = False
        self.on_rewire: Callable[[str, int, int], None] | None = None
        self.on_commit: Callable[[dict[str, Any]], None] | None = None
        self.barriers: deque[int] = deque()
        self.released = False
        # Kept after the orchestrator closes the channel, so later sends fail
        # quietly.
        self._send_fd = fd
        # Created for the first message received, because importing socket
        # costs a stage about 2 ms and a run without checkpoints may get none.
        self._socket: Any = None
        self._reader = None
        self._fds: deque[int] = deque()
        self._send_lock = _thread.allocate_lock()
        if fd is not None:
            self._reader = protocol.FrameReader(fd, "the orchestrator")

    def send(self, message: dict[str, Any]) -> None:
        if self._send_fd is None:
            return
        # The adapter sends from two threads; a frame must not interleave.
        with self._send_lock:
            try:
                protocol.write_all(self._send_fd, protocol.pack(message))
            except OSError:
                # The orchestrator is gone; the parent-death signal ends
                # this process.
                pass

    def hello(self, role: str) -> None:
        self.send({"type": "hello", "stage": self.stage_id, "pid": os.getpid(),
                   "role": role, "version": protocol.VERSION,
                   "features": ["rewire", "checkpoint"]})

    def poll(self, timeout: float = 0.0) -> None:
        """Read and apply any pending orchestrator messages."""
        if self._reader is None:
            return
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            self.read_pending()

    def read_pending(self) -> None:
        import socket

        if self._socket is None:
            self._socket = socket.socket(fileno=self.fd)
        try:
            data, fds, _, _ = socket.recv_fds(
                self._socket, protocol.READ_CHUNK_SIZE, MAX_FDS_PER_READ)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        self._fds.extend(fds)
        if not data:
            # The orchestrator closed the channel: treat it as a stop.
            self.stop_requested = True
            self._reader = None
            self.fd = None
            return
        for message in self._reader.feed(data):
            self.apply(message)

    def apply(self, message: Any) -> None:
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        if kind == "stop":
            self.stop_requested = True
        elif kind == "barrier":
            self.barriers.append(int(message.get("id", 0)))
        elif kind == "commit":
            if self.on_commit is not None:
                self.on_commit(message)
        elif kind == "release":
            self.released = True
        elif kind in ("rewire_input", "rewire_output") and self._fds:
            fd = self._fds.popleft()
            if self.on_rewire is None:
                os.close(fd)
                return
            self.on_rewire(kind, int(message.get("index", 0)), fd)


class Outputs:
    """Batches records and writes each batch as one frame to every output.

    Fan-out is done here: every output pipe gets the same frames, so each
    downstream stage receives every record.
    """

    def __init__(self, fds: list[int], stats: Stats, max_frame_size: int,
                 batch_size: int) -> None:
        self.fds = fds
        self.stats = stats
        self.max_frame_size = max_frame_size
        self.batch_size = batch_size
        # Records per batch right now: batch_size, or fewer for big records.
        self.limit = min(batch_size, FIRST_BATCH_LIMIT)
        self.buffer: list[Any] = []
        self.last_flush = time.monotonic()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.buffer:
            return
        records = self.buffer
        self.buffer = []
        size = 0
        for frame in self._pack_batches(records):
            size += len(frame)
            self.write_frame(frame)
        self.stats.records_out += len(records)
        per_record = size // len(records) + 1
        self.limit = max(1, min(self.batch_size,
                                TARGET_FRAME_BYTES // per_record))

    def _pack_batches(self, records: list[Any]) -> list[bytes]:
        frame = protocol.pack([protocol.BATCH, records])
        if len(frame) - protocol.HEADER.size <= self.max_frame_size:
            return [frame]
        if len(records) == 1:
            raise ValueError(
                f"a record of {len(frame)} bytes is over the maximum frame "
                f"size of {protocol.format_size(self.max_frame_size)}")
        middle = len(records) // 2
        return (self._pack_batches(records[:middle])
                + self._pack_batches(records[middle:]))

    def write_frame(self, frame: bytes) -> None:
        written = 0
        for index, fd in enumerate(self.fds):
            if fd < 0:
                continue
            try:
                protocol.write_all(fd, frame)
                written += 1
            except BrokenPipeError:
                # That reader finished and flowctl let go of its pipe; the
                # other outputs still get every frame.  An output keeps its
                # index (-1 marks it closed) because rewires name outputs by
                # index.
                os.close(fd)
                self.fds[index] = -1
        self.stats.frames_out += 1
        self.stats.bytes_out += len(frame) * written
        if self.fds and written == 0:
            raise OutputsClosed()

    def replace(self, index: int, fd: int, hello: bytes) -> None:
        """Write to a new pipe from now on, starting with a hello frame.

        Called between two frames, so the new pipe starts on a frame
        boundary; the orchestrator discards what is left in the old one.
        """
        old = self.fds[index]
        self.fds[index] = fd
        if old >= 0:
            os.close(old)
        protocol.write_all(fd, hello)


_REWIRED = object()


class Inputs:
    """Reads frames from every input pipe of a stage (fan-in).

    `next_frame()` returns `(input_index, frame)` for batch and barrier
    frames, handles hello and end frames itself, and returns None once every
    input has ended.  Before it blocks it calls `on_idle`, which is where
    the caller flushes its output batch, and while it waits it calls
    `on_idle` again every heartbeat interval.

    Barriers are aligned. Once an input has delivered barrier N, nothing
    more is read from it until every input still open has delivered N too.
    Only then is the barrier returned, once.  Records that arrive after a
    barrier on one input therefore wait, in its pipe, until the checkpoint
    has passed.
    """

    def __init__(self, fds: list[int], peers: list[str], stats: Stats,
                 control: Control, max_frame_size: int) -> None:
        self.stats = stats
        self.control = control
        self.readers = [protocol.FrameReader(fd, f"stage '{peer}'",
                                             max_frame_size)
                        for fd, peer in zip(fds, peers)]
        self.peers = peers
        self.pending: list[deque[Any]] = [deque() for _ in fds]
        self.greeted = [False] * len(fds)
        self.ended = [False] * len(fds)
        # The barrier id each input stopped at, or None while it flows.
        self.held: list[int | None] = [None] * len(fds)
        self._next = 0
        self.max_frame_size = max_frame_size
        # (index, fd) pairs from the control channel, applied by the thread
        # that reads the inputs, between two frames.
        self.rewires: deque[tuple[int, int]] = deque()
        self.on_rewired: Callable[[int], None] = lambda index: None

    @property
    def open_count(self) -> int:
        return self.ended.count(False)

    def _apply_rewires(self) -> None:
        while self.rewires:
            index, fd = self.rewires.popleft()
            # Frames already decoded from the old pipe are whole and stay
            # queued; a partial frame the restarted writer left is dropped.
            # The marker makes the new pipe's first frame a hello again.
            os.close(self.readers[index].fd)
            self.readers[index] = protocol.FrameReader(
                fd, f"stage '{self.peers[index]}'", self.max_frame_size)
            self.pending[index].append(_REWIRED)
            self.on_rewired(index)

    def next_frame(self, on_idle: Callable[[], None]) -> tuple[int, Any] | None:
        while True:
            if self.rewires:
                self._apply_rewires()
            found = self._take_pending()
            if found is not None:
                return found
            barrier = self._aligned_barrier()
            if barrier is not None:
                return barrier
            if self.open_count == 0:
                return None
            self._wait(on_idle)

    def _take_pending(self) -> tuple[int, Any] | None:
        count = len(self.pending)
        for step in range(count):
            index = (self._next + step) % count
            queue = self.pending[index]
            while queue and self.held[index] is None:
                frame = queue.popleft()
                result = self._accept(index, frame)
                if result is not None:
                    self._next = (index + 1) % count
                    return result
        return None

    def _accept(self, index: int, frame: Any) -> tuple[int, Any] | None:
        peer = self.peers[index]
        if frame is _REWIRED:
            self.greeted[index] = False
            return None
        if not self.greeted[index]:
            try:
                protocol.check_hello(frame, f"stage '{peer}'")
            except protocol.ProtocolError as error:
                raise BadInput(peer, str(error)) from None
            self.greeted[index] = True
            return None
        if not isinstance(frame, list) or not frame:
            raise BadInput(peer, f"stage '{peer}' sent "
                                 f"{protocol.describe(frame)}, not a frame")
        kind = frame[0]
        if kind == protocol.BATCH:
            if len(frame) < 2 or not isinstance(frame[1], list):
                raise BadInput(peer, f"stage '{peer}' sent a batch frame "
                                     f"without a list of records")
            self.stats.frames_in += 1
            self.stats.records_in += len(frame[1])
            return index, frame
        if kind == protocol.END:
            self.ended[index] = True
            return None
        if kind == protocol.BARRIER:
            info = frame[1] if len(frame) > 1 and isinstance(frame[1], dict) else {}
            self.held[index] = int(info.get("id", 0))
            return None
        if kind == protocol.ERROR:
            info = frame[1] if len(frame) > 1 and isinstance(frame[1], dict) else {}
            raise UpstreamFailed(str(info.get("stage", peer)),
                                 str(info.get("message", "no message")))
        raise BadInput(peer, f"stage '{peer}' sent an unknown frame type "
                             f"{kind!r}")

    def _aligned_barrier(self) -> tuple[int, Any] | None:
        """Return the barrier every open input has delivered, if any."""
        held = [self.held[index] for index in range(len(self.held))
                if not self.ended[index]]
        if not held or None in held:
            return None
        checkpoint_id = max(held)
        self.held = [None] * len(self.held)
        return 0, [protocol.BARRIER, {"id": checkpoint_id}]

    def _wait(self, on_idle: Callable[[], None]) -> None:
        watched = {reader.fd: index for index, reader in enumerate(self.readers)
                   if not self.ended[index] and not reader.eof
                   and self.held[index] is None}
        control_fd = self.control.fd
        fds = list(watched)
        if control_fd is not None:
            fds.append(control_fd)
        ready, _, _ = select.select(fds, [], [], 0)
        if not ready:
            on_idle()
            ready, _, _ = select.select(fds, [], [], HEARTBEAT_INTERVAL)
            if not ready:
                on_idle()
                return
        for fd in ready:
            if fd == control_fd:
                self.control.read_pending()
                continue
            index = watched[fd]
            reader = self.readers[index]
            try:
                frames = reader.read_frames()
            except protocol.ProtocolError as error:
                raise BadInput(self.peers[index], str(error)) from None
            self.stats.bytes_in += reader.bytes_read
            reader.bytes_read = 0
            self.pending[index].extend(frames)
            if reader.eof and not frames:
                # The writer exited cleanly without an end frame: the
                # orchestrator closes its copy of a pipe only then.
                self.ended[index] = True


class Context:
    """Everything the orchestrator passed to this stage process."""

    def __init__(self) -> None:
        env = os.environ
        parent = env.pop(ENV_PARENT_PID, None)
        if parent:
            # Imported only here: ctypes costs a stage 2 ms to import.
            from flowctl.lifetime import bind_to_parent
            bind_to_parent(int(parent))
        self.stage_id = env.get(ENV_STAGE_ID, "stage")
        self.run_id = env.get(ENV_RUN_ID, "")
        # How often flowctl has restarted this stage in this run; a sink
        # that is restarted appends to what it wrote before.
        self.restarts = int(env.get(ENV_RESTARTS) or 0)
        self.config: dict[str, Any] = json.loads(env.get(ENV_CONFIG) or "{}")
        self.max_frame_size = int(env.get(ENV_MAX_FRAME_SIZE)
                                  or protocol.DEFAULT_MAX_FRAME_SIZE)
        self.batch_size = int(env.get(ENV_BATCH_SIZE) or DEFAULT_BATCH_SIZE)
        self.flush_interval = float(env.get(ENV_FLUSH_INTERVAL)
                                    or DEFAULT_FLUSH_INTERVAL)
        self.managed = ENV_CONTROL_FD in env
        # With checkpointing on, sinks commit only on a "commit" message,
        # and every stage reports its state at each barrier and at the end.
        self.checkpointing = env.get(ENV_CHECKPOINTS) == "1"
        self.restore = _load_restore(env.get(ENV_RESTORE))
        control_fd = env.get(ENV_CONTROL_FD)
        self.control = Control(int(control_fd) if control_fd else None,
                               self.stage_id)
        self.stats = Stats()
        input_fds = _fd_list(ENV_INPUT_FDS) if self.managed else [0]
        output_fds = _fd_list(ENV_OUTPUT_FDS) if self.managed else [1]
        output_fds = [self._move_off_stdout(fd) for fd in output_fds]
        peers = env.get(ENV_INPUT_STAGES, "").split(",") if input_fds else []
        peers = (peers + ["upstream"] * len(input_fds))[:len(input_fds)]
        self.inputs = Inputs(input_fds, peers, self.stats, self.control,
                             self.max_frame_size)
        self.outputs = Outputs(output_fds, self.stats, self.max_frame_size,
                               self.batch_size)

    @staticmethod
    def _move_off_stdout(fd: int) -> int:
        """Keep frames on a private descriptor and point fd 1 at stderr.

        When the output pipe is stdout, a stray print() would corrupt the
        frame stream; after this it lands in the stage's log instead.
        """
        if fd != 1:
            return fd
        private = os.dup(1)
        os.dup2(2, 1)
        return private

    def open_stdout(self):
        """Open flowctl's own standard output, for sinks given path '-'."""
        fd = os.environ.get(ENV_STDOUT_FD)
        if fd is None:
            return os.fdopen(os.dup(1), "w", encoding="utf-8", newline="")
        return os.fdopen(int(fd), "w", encoding="utf-8", newline="")

    def open_stdin(self):
        """Open flowctl's own standard input, for sources given path '-'."""
        fd = os.environ.get(ENV_STDIN_FD)
        if fd is None:
            return os.fdopen(os.dup(0), "r", encoding="utf-8", newline="")
        return os.fdopen(int(fd), "r", encoding="utf-8", newline="")

    def _on_rewire(self, kind: str, index: int, fd: int) -> None:
        if kind == "rewire_output":
            self.outputs.replace(index, fd,
                                 protocol.hello_frame(self.stage_id))
            self.control.send({"type": "rewired", "direction": "output",
                               "index": index})
        else:
            self.inputs.rewires.append((index, fd))

    def _on_input_rewired(self, index: int) -> None:
        self.control.send({"type": "rewired", "direction": "input",
                           "index": index})

    @property
    def restored_finished(self) -> bool:
        """Whether the stage resumes from a checkpoint taken after its end."""
        return bool(self.restore and self.restore.get("finished"))

    def report_checkpoint(self, checkpoint_id: int | None, state: bytes | None,
                          info: dict[str, Any], final: bool = False) -> None:
        """Send the orchestrator this stage's part of a checkpoint."""
        self.control.send({"type": "checkpoint", "id": checkpoint_id,
                           "final": final, "state": state, "info": info,
                           **self.stats.as_dict()})

    def ready(self) -> None:
        """Tell flowctl the stage opened its resources and is running."""
        self.control.send({"type": "ready"})

    def start(self, role: str) -> None:
        self.control.on_rewire = self._on_rewire
        self.inputs.on_rewired = self._on_input_rewired
        self.control.hello(role)
        self.outputs.write_frame(protocol.hello_frame(self.stage_id))
        self.outputs.stats.frames_out = 0
        self.outputs.stats.bytes_out = 0
        self._last_report = time.monotonic()

    def report_stats(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_report >= HEARTBEAT_INTERVAL:
            self._last_report = now
            self.control.send({"type": "stats", **self.stats.as_dict()})

    def finish(self) -> None:
        """Flush, end every output and report the final counters."""
        try:
            self.outputs.flush()
            self.outputs.write_frame(protocol.end_frame())
        except OutputsClosed:
            pass
        self.done()

    def done(self) -> None:
        """Report the final counters: the stage ends cleanly."""
        self.control.send({"type": "done", **self.stats.as_dict()})

    def fail(self, message: str, exit_code: int = EXIT_FAILED,
             **details: Any) -> None:
        """Tell downstream stages and the orchestrator, then exit."""
        self.control.send({"type": "stats", **self.stats.as_dict()})
        self.control.send({"type": "error", "message": message,
                           "exit_code": exit_code, **details})
        if self.control.fd is None:
            # Without an orchestrator, the error frame is how downstream
            # stages learn why the stream stopped.  Under flowctl they keep
            # running, so that a restart of this stage can rejoin them.
            frame = protocol.error_frame(self.stage_id, message)
            for fd in self.outputs.fds:
                try:
                    protocol.write_all(fd, frame)
                except OSError:
                    pass
        os._exit(exit_code)
