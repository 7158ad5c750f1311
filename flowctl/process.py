"""One stage process: how it is started, watched and stopped.

The orchestrator (`flowctl.supervisor`) owns a `StageProcess` per stage
and creates the data pipes.  This class adds the control channel and the
stderr pipe, starts the program in its own process group, and decodes
what the stage reports on its control channel.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from flowctl import adapter, codecs, protocol, runtime
from flowctl.builtins import BUILTINS, module_argv
from flowctl.lifetime import SELF_BINDING, child_setup, descendants_of
from flowctl.pipeline import Pipeline, StageSpec

STDERR_READ_SIZE = 65536
MAX_PENDING_STDERR = 64 * 1024


def stage_path(path: str) -> str:
    """Return PATH for stages, with flowctl's own Python first.

    A stage written with the stage library is usually started as
    `python3 stage.py`.  With the directory of the interpreter running
    flowctl first, that is the Python where flowctl is installed, even
    when its virtual environment is not activated.
    """
    own = os.path.dirname(sys.executable)
    parts = [part for part in path.split(os.pathsep) if part and part != own]
    return os.pathsep.join([own] + parts)


@dataclass
class Wiring:
    """File descriptors the orchestrator created for one stage."""

    inputs: list[tuple[int, str]] = field(default_factory=list)  # fd, writer
    outputs: list[int] = field(default_factory=list)


COUNTERS = ("records_in", "records_out", "frames_in", "frames_out",
            "bytes_in", "bytes_out")


class StageProcess:
    """A stage across its incarnations: process, control channel, stderr,
    counters and restart bookkeeping.

    States: starting, running, stopping, backoff (waiting to restart),
    finished, failed, stopped.  `exit_code` is the last incarnation's exit
    status once reaped (negative for a signal, as in subprocess).  Counters
    add up over every incarnation.
    """

    def __init__(self, spec: StageSpec, pipeline: Pipeline, run_id: str,
                 log_path: str, stdio_fds: tuple[int, int]):
        self.spec = spec
        self.pipeline = pipeline
        self.run_id = run_id
        self.log_path = log_path
        self.stdin_fd, self.stdout_fd = stdio_fds
        self.wiring = Wiring()
        self.state = "starting"
        self.restarts = 0
        self.ever_ready = False
        self.base_stats: dict[str, int] = {}
        self.last_error = ""
        self.restart_at: float | None = None
        self.kill_at: float | None = None
        self.unresponsive = False
        self.popen: subprocess.Popen | None = None
        self.pid: int | None = None
        self.pidfd: int | None = None
        self.control: socket.socket | None = None
        self.control_reader: protocol.FrameReader | None = None
        self.stderr_fd: int | None = None
        self.stderr_pending = b""
        self.exit_code: int | None = None
        self.stats: dict[str, int] = {}
        self.error: dict[str, Any] | None = None
        self.greeted = False
        self.can_rewire = False
        self.can_checkpoint = False
        # Set by the checkpoint driver before each start.
        self.checkpointing = False
        self.restore_path: str | None = None
        self.ready = False
        self.done = False
        self.started_at = 0.0
        self.ended_at = 0.0
        self.first_started_at = 0.0
        self.last_message_at = 0.0

    @property
    def totals(self) -> dict[str, int]:
        """Counters over every incarnation of the stage."""
        return {key: self.base_stats.get(key, 0) + self.stats.get(key, 0)
                for key in COUNTERS if key in self.stats or key in self.base_stats}

    @property
    def runs_flowctl_program(self) -> bool:
        """True for a built-in stage and for the adapter of an executable
        with a text codec; False for an executable that speaks msgpack."""
        return (self.spec.builtin is not None
                or self.spec.codec in codecs.TEXT_CODECS)

    def argv(self) -> list[str]:
        spec = self.spec
        if spec.builtin is not None:
            return BUILTINS[spec.builtin].argv()
        if spec.codec in codecs.TEXT_CODECS:
            return module_argv("flowctl.adapter")
        return list(spec.command or [])

    def environment(self, input_fds: list[int], output_fds: list[int],
                    control_fd: int) -> dict[str, str]:
        spec = self.spec
        env = dict(os.environ)
        env["PATH"] = stage_path(os.environ.get("PATH", ""))
        env.update(spec.env)
        env.update({
            runtime.ENV_STAGE_ID: spec.id,
            runtime.ENV_RUN_ID: self.run_id,
            runtime.ENV_INPUT_FDS: ",".join(map(str, input_fds)),
            runtime.ENV_INPUT_STAGES: ",".join(
                writer for _, writer in self.wiring.inputs),
            runtime.ENV_OUTPUT_FDS: ",".join(map(str, output_fds)),
            runtime.ENV_CONTROL_FD: str(control_fd),
            runtime.ENV_CONFIG: json.dumps(spec.config, default=str),
            runtime.ENV_MAX_FRAME_SIZE: str(self.pipeline.max_frame_size),
            runtime.ENV_BATCH_SIZE: str(self.pipeline.batch_size),
            runtime.ENV_FLUSH_INTERVAL: str(self.pipeline.flush_interval),
            runtime.ENV_STDOUT_FD: str(self.stdout_fd),
            runtime.ENV_STDIN_FD: str(self.stdin_fd),
            runtime.ENV_RESTARTS: str(self.restarts),
        })
        if self.checkpointing:
            env[runtime.ENV_CHECKPOINTS] = "1"
        if self.restore_path is not None:
            env[runtime.ENV_RESTORE] = self.restore_path
        if spec.command is not None and spec.codec in codecs.TEXT_CODECS:
            env[adapter.ENV_COMMAND] = json.dumps(spec.command)
            env[adapter.ENV_CODEC] = spec.codec
            env[adapter.ENV_ROLE] = spec.role
            env[adapter.ENV_SUCCESS_EXIT_CODES] = json.dumps(
                spec.success_exit_codes)
        return env

    def start(self, wiring: Wiring) -> None:
        """Start an incarnation; raise OSError if it cannot be executed."""
        if self.stats:
            for key in COUNTERS:
                self.base_stats[key] = (self.base_stats.get(key, 0)
                                        + self.stats.get(key, 0))
        self.wiring = wiring
        self.stats = {}
        self.error = None
        self.greeted = self.ready = self.done = self.can_rewire = False
        self.can_checkpoint = False
        self.exit_code = None
        self.unresponsive = False
        self.kill_at = None
        self.restart_at = None
        self.stderr_pending = b""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        stderr_read, stderr_write = os.pipe()
        input_fds = [fd for fd, _ in self.wiring.inputs]
        output_fds = list(self.wiring.outputs)
        stdin: Any = subprocess.DEVNULL
        stdout: Any = stderr_write
        direct = (self.spec.command is not None
                  and self.spec.codec == "msgpack")
        if direct and len(input_fds) == 1:
            stdin, input_fds = input_fds[0], [0]
        if direct and len(output_fds) == 1:
            stdout, output_fds = output_fds[0], [1]
        passed = [fd for fd in input_fds + output_fds if fd > 2]
        passed += [theirs.fileno(), self.stdin_fd, self.stdout_fd]
        env = self.environment(input_fds, output_fds, theirs.fileno())
        options: dict[str, Any]
        if SELF_BINDING and self.runs_flowctl_program:
            # flowctl's own stage programs bind themselves to this process
            # when they start, so Popen can use vfork.
            env[runtime.ENV_PARENT_PID] = str(os.getpid())
            options = {"process_group": 0}
        else:
            options = {"preexec_fn": child_setup(new_process_group=True)}
        try:
            self.popen = subprocess.Popen(
                self.argv(), stdin=stdin, stdout=stdout, stderr=stderr_write,
                env=env, cwd=self.spec.cwd, pass_fds=passed, **options)
        finally:
            theirs.close()
            os.close(stderr_write)
        self.pid = self.popen.pid
        self.pidfd = os.pidfd_open(self.pid)
        self.control = ours
        self.control_reader = protocol.FrameReader(
            ours.fileno(), f"stage '{self.spec.id}' (control channel)")
        os.set_blocking(stderr_read, False)
        self.stderr_fd = stderr_read
        self.state = "running"
        self.started_at = time.time()
        self.first_started_at = self.first_started_at or self.started_at
        self.last_message_at = time.monotonic()

    # Control channel

    def read_control(self) -> list[dict[str, Any]]:
        """Read what the stage sent; return the messages, newest last."""
        try:
            messages = self.control_reader.read_frames()
        except protocol.ProtocolError as error:
            self.error = self.error or {"message": str(error)}
            messages = []
        if self.control_reader.eof:
            self.close_control()
        if messages:
            self.last_message_at = time.monotonic()
        for message in messages:
            if not isinstance(message, dict):
                continue
            kind = message.get("type")
            if kind == "hello":
                self.greeted = True
                features = message.get("features")
                features = features if isinstance(features, list) else []
                self.can_rewire = "rewire" in features
                self.can_checkpoint = "checkpoint" in features
            elif kind == "ready":
                self.ready = self.ever_ready = True
            elif kind in ("stats", "done"):
                self.stats = {key: value for key, value in message.items()
                              if key in COUNTERS}
                self.done = self.done or kind == "done"
            elif kind == "error":
                self.error = message
                self.last_error = str(message.get("message", ""))
        return messages

    def send(self, message: dict[str, Any], fd: int | None = None) -> bool:
        """Send a control message, with a file descriptor attached."""
        if self.control is None:
            return False
        try:
            data = protocol.pack(message)
            if fd is None:
                self.control.sendall(data)
            else:
                sent = socket.send_fds(self.control, [data], [fd])
                if sent < len(data):
                    self.control.sendall(data[sent:])
            return True
        except OSError:
            return False

    def request_stop(self) -> None:
        """Ask a source to stop producing; without a channel, signal it."""
        if self.state != "running":
            return
        self.state = "stopping"
        if not (self.greeted and self.send({"type": "stop"})):
            self.signal(self.stop_signal)

    @property
    def stop_signal(self) -> int:
        return int(getattr(signal, self.spec.stop_signal))

    def terminate(self, now: float) -> None:
        """Send the stop signal and arm the SIGKILL after stop_timeout."""
        if not self.alive:
            return
        self.state = "stopping"
        self.signal(self.stop_signal)
        if self.kill_at is None:
            self.kill_at = now + self.spec.stop_timeout

    def close_control(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None

    # stderr

    def read_stderr(self) -> list[str]:
        """Return the complete lines the stage wrote to stderr so far."""
        try:
            data = os.read(self.stderr_fd, STDERR_READ_SIZE)
        except BlockingIOError:
            return []
        if not data:
            return self.close_stderr()
        data = self.stderr_pending + data
        lines = data.split(b"\n")
        self.stderr_pending = lines.pop()
        if len(self.stderr_pending) > MAX_PENDING_STDERR:
            lines.append(self.stderr_pending)
            self.stderr_pending = b""
        return [line.decode("utf-8", "replace") for line in lines]

    def close_stderr(self) -> list[str]:
        rest = self.stderr_pending
        self.stderr_pending = b""
        if self.stderr_fd is not None:
            os.close(self.stderr_fd)
            self.stderr_fd = None
        return [rest.decode("utf-8", "replace")] if rest else []

    # Lifetime

    def reap(self) -> int:
        """Collect the exit status once the pidfd reports that the process
        ended."""
        code = self.popen.wait()
        self.exit_code = code
        self.ended_at = time.time()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        return code

    def signal(self, signum: int) -> None:
        """Send a signal to the stage's whole process group."""
        if self.pid is None:
            return
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        """SIGKILL the process group and every descendant that left it.

        A child that called setsid() is no longer in the group, so the
        descendants found through /proc are killed one by one as well.
        """
        if self.pid is None:
            return
        # Once reaped, the pid may belong to another process. What the stage
        # left behind was adopted by flowctl, which kills it at the end of
        # the run.
        children = descendants_of(self.pid) if self.exit_code is None else []
        self.signal(signal.SIGKILL)
        for child in children:
            try:
                os.kill(child, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.exit_code is None
