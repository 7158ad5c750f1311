"""The orchestrator: wire the stages, start them, watch them, stop them.

`Run.execute()` is the whole lifetime of one pipeline run.  One thread runs
one selector loop over every stage's control channel, stderr pipe and pidfd,
plus a wake-up pipe for signals.  Records never pass through this process:
the pipes between stages are created here and handed to the stages.

Stopping: the first SIGINT or SIGTERM asks the sources to stop; everything
downstream drains and exits by itself.  Stages still alive when the stop
timeout has passed get SIGKILL, as does everything at a second signal.  A
stage that fails ends the run: the others get SIGTERM, then SIGKILL after
the stop timeout, and the run exits with code 1.
"""

from __future__ import annotations

import fcntl
import os
import selectors
import signal
import time
from dataclasses import dataclass

from flowctl import runtime
from flowctl.display import View
from flowctl.home import run_directory
from flowctl.pipeline import Pipeline
from flowctl.process import StageProcess, Wiring

TICK_SECONDS = 0.1
PIPE_SIZE = 1024 * 1024
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

EXIT_OK = 0
EXIT_FAILED = 1
SIGNAL_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


@dataclass
class Outcome:
    """How a run ended: its exit code and, on failure, the reason."""

    exit_code: int
    message: str = ""


def _enlarge_pipe(fd: int) -> None:
    # A bigger pipe buffer means fewer context switches per record; the
    # default 64 KiB holds only a few batches.  Unprivileged users may be
    # capped lower by /proc/sys/fs/pipe-max-size, which is fine.
    try:
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass


class Run:
    """One run of a pipeline, from wiring to the final summary.

    Usage::

        run = Run(pipeline, home, view_factory)
        outcome = run.execute()
        sys.exit(outcome.exit_code)
    """

    def __init__(self, pipeline: Pipeline, home: str, run_id: str,
                 view: View) -> None:
        self.pipeline = pipeline
        self.home = home
        self.run_id = run_id
        self.view = view
        self.directory = run_directory(home, run_id)
        self.stages: dict[str, StageProcess] = {}
        self.log_files: dict[str, object] = {}
        self.pipe_fds: set[int] = set()
        self.selector = selectors.DefaultSelector()
        self.signal_received: int | None = None
        self.stop_deadline: float | None = None
        self.failing = False
        self.signal_read, self.signal_write = os.pipe()

    # Set-up

    def _wire(self) -> dict[str, Wiring]:
        wiring = {stage.id: Wiring() for stage in self.pipeline.stages}
        for stage in self.pipeline.stages:
            for writer in stage.inputs:
                read_end, write_end = os.pipe()
                _enlarge_pipe(write_end)
                wiring[stage.id].inputs.append((read_end, writer))
                wiring[writer].outputs.append(write_end)
                self.pipe_fds.update((read_end, write_end))
        return wiring

    def _start_stages(self) -> None:
        wiring = self._wire()
        stdio = (os.dup(0), os.dup(1))
        try:
            for spec in self.pipeline.stages:
                log_path = os.path.join(self.directory, f"{spec.id}.log")
                stage = StageProcess(spec, self.pipeline, self.run_id,
                                     wiring[spec.id], log_path, stdio)
                self.stages[spec.id] = stage
                self.log_files[spec.id] = open(log_path, "ab", buffering=0)
            for stage in self.stages.values():
                self._start(stage)
        finally:
            os.close(stdio[0])
            os.close(stdio[1])

    def _start(self, stage: StageProcess) -> None:
        try:
            stage.start()
        except OSError as error:
            stage.state = "failed"
            stage.exit_code = 127
            stage.error = {"message": f"cannot start "
                                      f"{stage.argv()[0]!r}: {error.strerror}"}
            self._begin_failure()
            return
        self.selector.register(stage.control, selectors.EVENT_READ,
                               ("control", stage))
        self.selector.register(stage.stderr_fd, selectors.EVENT_READ,
                               ("stderr", stage))
        self.selector.register(stage.pidfd, selectors.EVENT_READ,
                               ("exit", stage))
        self.view.event(f"started pid={stage.pid} ({stage.spec.label})",
                        stage.spec.id)

    def _install_signal_handlers(self) -> dict[int, object]:
        os.set_blocking(self.signal_write, False)
        previous = {}
        for signum in SIGNAL_EXIT_CODES:
            previous[signum] = signal.signal(signum, self._on_signal)
        self.previous_wakeup = signal.set_wakeup_fd(self.signal_write)
        self.selector.register(self.signal_read, selectors.EVENT_READ,
                               ("signal", None))
        return previous

    def _on_signal(self, signum: int, frame: object) -> None:
        # The real work happens in the loop; set_wakeup_fd makes select()
        # return at once instead of finishing its timeout first.
        self.pending_signals.append(signum)

    # The loop

    def execute(self) -> Outcome:
        self.pending_signals: list[int] = []
        previous = self._install_signal_handlers()
        started = time.time()
        try:
            self._start_stages()
            self.view.start(list(self.stages.values()))
            while any(stage.alive for stage in self.stages.values()):
                self._loop_once()
        finally:
            self._cleanup(previous)
        self.view.stop()
        outcome = self._outcome()
        self.view.summary(time.time() - started)
        return outcome

    def _loop_once(self) -> None:
        for key, _ in self.selector.select(TICK_SECONDS):
            kind, stage = key.data
            if kind == "control":
                self._on_control(stage)
            elif kind == "stderr":
                self._on_stderr(stage)
            elif kind == "exit":
                self._on_exit(stage)
            elif kind == "signal":
                try:
                    os.read(self.signal_read, 512)
                except BlockingIOError:
                    pass
        while self.pending_signals:
            self._on_stop_signal(self.pending_signals.pop(0))
        if self.stop_deadline is not None and time.monotonic() > self.stop_deadline:
            self._kill_all("the stop timeout of "
                           f"{self.pipeline.stop_timeout:g}s has passed")
            self.stop_deadline = None
        self.view.tick()

    def _on_control(self, stage: StageProcess) -> None:
        stage.read_control()
        if stage.control is None:
            self._unregister_fileobj(("control", stage))

    def _unregister_fileobj(self, data: tuple) -> None:
        for key in list(self.selector.get_map().values()):
            if key.data == data:
                self.selector.unregister(key.fileobj)

    def _on_stderr(self, stage: StageProcess) -> None:
        fd = stage.stderr_fd
        lines = stage.read_stderr()
        if stage.stderr_fd is None:
            self.selector.unregister(fd)
        self._show_stderr(stage, lines)

    def _show_stderr(self, stage: StageProcess, lines: list[str]) -> None:
        log = self.log_files[stage.spec.id]
        for line in lines:
            log.write(line.encode("utf-8", "replace") + b"\n")
            self.view.stderr_line(stage.spec.id, line)

    def _on_exit(self, stage: StageProcess) -> None:
        self.selector.unregister(stage.pidfd)
        code = stage.reap()
        # Drain what the stage wrote last before judging its exit.
        if stage.control is not None:
            self._unregister_fileobj(("control", stage))
            while stage.control is not None:
                before = stage.control_reader.eof
                stage.read_control()
                if before or stage.control is None:
                    break
        if stage.stderr_fd is not None:
            self.selector.unregister(stage.stderr_fd)
            self._drain_stderr(stage)
        if code == 0:
            stage.state = "finished"
            self.view.event(self._finish_message(stage), stage.spec.id)
            self._release_pipes(stage)
            return
        if self.signal_received is not None or self.failing:
            stage.state = "stopped"
            return
        stage.state = "failed"
        self.view.event(f"exited with code {code}", stage.spec.id)
        self._begin_failure()

    def _drain_stderr(self, stage: StageProcess) -> None:
        # The stage has exited, but a child it left behind may still hold
        # the pipe open; read only what is there now and do not wait.
        lines: list[str] = []
        while stage.stderr_fd is not None:
            chunk = stage.read_stderr()
            if not chunk:
                lines += stage.close_stderr()
                break
            lines += chunk
        self._show_stderr(stage, lines)

    def _finish_message(self, stage: StageProcess) -> str:
        stats = stage.stats
        if not stats:
            return "finished"
        return (f"finished in={stats.get('records_in', 0):,} "
                f"out={stats.get('records_out', 0):,}")

    def _release_pipes(self, stage: StageProcess) -> None:
        """Close our copies of a finished stage's pipe ends.

        The orchestrator keeps a copy of every pipe end so that a reader
        does not see end-of-file just because its writer died; it lets go of
        a writer's ends only when that writer exits cleanly, so a reader can
        still finish when a foreign stage exits without an end frame.
        """
        for fd in stage.wiring.outputs:
            self._close_pipe_fd(fd)
        for fd, _ in stage.wiring.inputs:
            self._close_pipe_fd(fd)

    def _close_pipe_fd(self, fd: int) -> None:
        if fd in self.pipe_fds:
            self.pipe_fds.discard(fd)
            os.close(fd)

    # Stopping

    def _on_stop_signal(self, signum: int) -> None:
        if self.signal_received is not None:
            self.view.event("second signal: stopping every stage now")
            self._kill_all("a second signal arrived")
            return
        self.signal_received = signum
        name = signal.Signals(signum).name
        self.view.event(f"{name} received: stopping the sources and draining "
                        f"(again to stop at once)")
        for stage in self.stages.values():
            if stage.spec.role == "source":
                stage.request_stop()
        self.stop_deadline = time.monotonic() + self.pipeline.stop_timeout

    def _begin_failure(self) -> None:
        if self.failing:
            return
        self.failing = True
        for stage in self.stages.values():
            if stage.alive:
                stage.state = "stopping"
                stage.signal(signal.SIGTERM)
        self.stop_deadline = time.monotonic() + self.pipeline.stop_timeout

    def _kill_all(self, reason: str) -> None:
        alive = [stage for stage in self.stages.values() if stage.alive]
        if alive:
            names = ", ".join(stage.spec.id for stage in alive)
            self.view.event(f"killing {names}: {reason}")
        for stage in alive:
            stage.signal(signal.SIGKILL)

    def _cleanup(self, previous: dict[int, object]) -> None:
        # Whatever happened, no stage and no child of a stage survives the
        # run: the process groups get SIGKILL even after a clean finish.
        for stage in self.stages.values():
            if stage.alive:
                stage.signal(signal.SIGKILL)
                stage.reap()
            stage.signal(signal.SIGKILL)
            stage.close_control()
            if stage.stderr_fd is not None:
                stage.close_stderr()
        for fd in list(self.pipe_fds):
            self._close_pipe_fd(fd)
        for log in self.log_files.values():
            log.close()
        signal.set_wakeup_fd(self.previous_wakeup)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        self.selector.close()
        os.close(self.signal_read)
        os.close(self.signal_write)

    # The result

    def _outcome(self) -> Outcome:
        if self.signal_received is not None:
            return Outcome(SIGNAL_EXIT_CODES[self.signal_received])
        failed = [stage for stage in self.stages.values()
                  if stage.state == "failed"]
        if not failed and not self.failing:
            return Outcome(EXIT_OK)
        return Outcome(EXIT_FAILED, self._failure_message(failed))

    def _failure_message(self, failed: list[StageProcess]) -> str:
        # Other stages often fail because of the first one: a stage that got
        # an error frame exits too, and a stage that read invalid frames
        # names the writer.  The cause is the stage that reported a failure
        # of its own; the others only point to it.
        relayed = (runtime.EXIT_UPSTREAM_FAILED, runtime.EXIT_BAD_INPUT)
        stages = list(self.stages.values())
        for stage in stages:
            if (stage.error and stage.exit_code not in (None, 0)
                    and stage.error.get("exit_code") not in relayed):
                return self._describe_failure(stage)
        for stage in stages:
            if stage.exit_code == runtime.EXIT_BAD_INPUT and stage.error:
                culprit = stage.error.get("upstream", "?")
                return (f"stage '{culprit}' wrote output that is not flowctl "
                        f"frames, read by stage '{stage.spec.id}': "
                        f"{stage.error.get('message')}; see "
                        f"{self._log_of(culprit)}")
        for stage in failed:
            if stage.exit_code != runtime.EXIT_UPSTREAM_FAILED:
                return self._describe_failure(stage)
        if failed:
            return self._describe_failure(failed[0])
        return "the run failed"

    def _describe_failure(self, stage: StageProcess) -> str:
        for other in self.stages.values():
            if other.state == "failed" and other is not stage:
                other.state = "stopped"
        stage.state = "failed"
        code = stage.exit_code
        if code is not None and code < 0:
            how = f"was killed by signal {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}"
        if stage.error and stage.error.get("message"):
            # The exit status adds nothing to the stage's own report; it may
            # even be the SIGTERM sent while the run was being stopped.
            return (f"stage '{stage.spec.id}' failed: "
                    f"{stage.error['message']}; see {stage.log_path}")
        return f"stage '{stage.spec.id}' {how}; see {stage.log_path}"

    def _log_of(self, stage_id: str) -> str:
        stage = self.stages.get(stage_id)
        return stage.log_path if stage else self.directory
