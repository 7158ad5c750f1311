"""The orchestrator: wire the stages, start them, watch them, restart
them, stop them.

`Run.execute()` is the whole lifetime of one pipeline run.  One thread runs
one selector loop over every stage's control channel, stderr pipe and
pidfd, the run's control socket, and a wake-up pipe for signals.  Records
never pass through this process: the pipes between stages are created
here and handed to the stages.

Stopping: the first SIGINT, SIGTERM or SIGHUP (or `flowctl stop`) sends
the sources a stop request, and everything downstream drains and exits by
itself.  When the drain timeout has passed, each stage still alive gets
its stop signal, and SIGKILL after its own stop timeout; a second signal
(other than SIGHUP) kills everything at once.

Failures: when a stage fails, its restart policy decides (see
`flowctl.restarts`).  A restarted stage gets fresh pipes, and its
neighbours, which keep running, are handed the other ends over their
control channels (`_rewire`).  Records the failed stage had read but not
yet passed on are lost, and so is what was left in its pipes: without
checkpointing, a restart gives at-most-once delivery for the records in
flight at that moment.  A restarted source starts its stream again.
When the policy says no, or the restart limit is reached, the run fails:
the other stages get their stop signals and the run exits with code 1.

With checkpointing on, a failed stage is not wired back alone: every stage
is stopped and started again from the newest complete checkpoint
(`flowctl.checkpoints.driver`), so no record is lost or repeated.
"""

from __future__ import annotations

import os
import random
import selectors
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowctl import protocol, runtime
from flowctl.display import RateMeter, View
from flowctl.home import run_directory
from flowctl.lifetime import become_subreaper, children_of, is_zombie
from flowctl.pipeline import Pipeline
from flowctl.process import StageProcess, Wiring
from flowctl.restarts import RestartTracker
from flowctl.runcontrol import ControlServer
from flowctl.wiring import Edge, Graph

if TYPE_CHECKING:
    from flowctl.checkpoints.coordinator import Coordinator
    from flowctl.checkpoints.driver import CheckpointDriver
    from flowctl.checkpoints.recovery import RestorePlan
    from flowctl.registry import Registry

TICK_SECONDS = 0.1
REGISTRY_INTERVAL = 1.0
# A stage without a control channel counts as started after this long.
STARTUP_GRACE_SECONDS = 1.0
# How long a neighbour of a restarted stage has to switch to its new pipe.
REWIRE_TIMEOUT = 30.0
# Seconds after the stop message before a built-in source still running
# gets SIGINT, which ends a read that blocks (on a quiet stdin, say).
SOURCE_INTERRUPT_DELAY = 1.0
DRAIN_READ_SIZE = 1024 * 1024

EXIT_OK = 0
EXIT_FAILED = 1
# The signals that stop a run gracefully, with the exit code of a run they
# stopped (128 + the signal number, as a shell reports it).  SIGHUP is what
# flowctl gets when its terminal closes.
SIGNAL_EXIT_CODES = {signal.SIGHUP: 129, signal.SIGINT: 130,
                     signal.SIGTERM: 143}


@dataclass
class Outcome:
    """The end of a run: its exit code and, on failure, the reason."""

    exit_code: int
    message: str = ""


class CannotRestart(Exception):
    """A stage cannot be wired back into the running graph."""


class Run:
    """One run of a pipeline, from wiring to the final summary.

    Usage::

        run = Run(pipeline, home, run_id, PlainView(run_id))
        outcome = run.execute()
        sys.exit(outcome.exit_code)
    """

    def __init__(self, pipeline: Pipeline, home: str, run_id: str,
                 view: View, rng: random.Random | None = None,
                 checkpoints: tuple[Coordinator, RestorePlan] | None = None
                 ) -> None:
        self.pipeline = pipeline
        self.home = home
        self.run_id = run_id
        self.view = view
        self.directory = run_directory(home, run_id)
        self.stages: dict[str, StageProcess] = {}
        self.trackers: dict[str, RestartTracker] = {}
        self.log_files: dict[str, Any] = {}
        self.graph = Graph()
        self.selector = selectors.DefaultSelector()
        self.rng = rng or random.Random()
        self.pending_signals: list[int] = []
        self.signal_received: int | None = None
        self.stop_requested = False
        self.drain_deadline: float | None = None
        self.interrupt_sources_at: float | None = None
        self.failing = False
        self.failure_message = ""
        self.retired: dict[tuple[str, str, int], tuple[int, int]] = {}
        self.rewire_deadlines: dict[tuple[str, str, int], float] = {}
        self.registry: Registry | None = None
        self.control_server: ControlServer | None = None
        self.next_registry_write = 0.0
        self.started_at = time.time()
        self.rates = RateMeter()
        self.current_rates: dict[str, float | None] = {}
        self.signal_read, self.signal_write = os.pipe()
        self.recovering = False
        self.recovery_at = 0.0
        self.checkpoints: CheckpointDriver | None = None
        if checkpoints is not None:
            from flowctl.checkpoints.driver import CheckpointDriver

            self.checkpoints = CheckpointDriver(self, *checkpoints)

    # Set-up

    def _wiring_for(self, stage_id: str) -> Wiring:
        return Wiring(
            inputs=[(edge.read_fd, edge.writer)
                    for edge in self.graph.inputs_of(stage_id)],
            outputs=[edge.write_fd for edge in self.graph.outputs_of(stage_id)])

    def _start_stages(self) -> None:
        self.graph = Graph.build(self.pipeline.stages)
        stdio = (os.dup(0), os.dup(1))
        self.stdio = stdio
        for spec in self.pipeline.stages:
            log_path = os.path.join(self.directory, f"{spec.id}.log")
            stage = StageProcess(spec, self.pipeline, self.run_id, log_path,
                                 stdio)
            self.stages[spec.id] = stage
            self.trackers[spec.id] = RestartTracker(spec.restart, self.rng)
            self.log_files[spec.id] = open(log_path, "ab", buffering=0)
        # The stages start first: their interpreters boot while the
        # registry and the control socket are set up.
        if self.checkpoints is not None:
            self.checkpoints.announce_start()
        for stage in self.stages.values():
            self._start(stage)
        self._open_registry()

    def _open_registry(self) -> None:
        # Imported here, after the stages have been started: SQLite need
        # not delay them.
        from flowctl.registry import Registry

        self.control_server = ControlServer(self.directory, self.run_id,
                                            self._handle_request)
        self.selector.register(self.control_server.socket,
                               selectors.EVENT_READ, ("request", None))
        self.registry = Registry(self.home)
        self.registry.add_run(
            self.run_id, self.pipeline.name, self.pipeline.source,
            self.directory, self.control_server.path,
            [(stage.spec.id, stage.spec.role, stage.log_path)
             for stage in self.stages.values()])

    def _start(self, stage: StageProcess) -> bool:
        if self.checkpoints is not None:
            self.checkpoints.prepare_start(stage)
        try:
            stage.start(self._wiring_for(stage.spec.id))
        except OSError as error:
            stage.state = "failed"
            stage.exit_code = 127
            stage.last_error = (f"cannot start {stage.argv()[0]!r}: "
                                f"{error.strerror}")
            stage.error = {"message": stage.last_error}
            self._begin_failure(self._describe_failure(stage))
            return False
        self.selector.register(stage.control, selectors.EVENT_READ,
                               ("control", stage))
        self.selector.register(stage.stderr_fd, selectors.EVENT_READ,
                               ("stderr", stage))
        self.selector.register(stage.pidfd, selectors.EVENT_READ,
                               ("exit", stage))
        self.view.event(f"started pid={stage.pid} ({stage.spec.label})",
                        stage.spec.id)
        return True

    def _install_signal_handlers(self) -> dict[int, Any]:
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
        previous = self._install_signal_handlers()
        become_subreaper()
        try:
            self._start_stages()
            self.view.start(list(self.stages.values()))
            while self._has_work():
                self._loop_once()
        finally:
            self._cleanup(previous)
        self.view.stop()
        outcome = self._outcome()
        self._record_end(outcome)
        self.view.summary(time.time() - self.started_at)
        return outcome

    def _has_work(self) -> bool:
        return self.recovering or any(
            stage.alive or stage.state == "backoff"
            for stage in self.stages.values())

    def _loop_once(self) -> None:
        for key, _ in self.selector.select(TICK_SECONDS):
            # An earlier event of the same batch may have closed this one.
            # A closed socket has no descriptor left, and the selector then
            # raises ValueError instead of finding no entry.
            try:
                current = self.selector.get_map().get(key.fileobj)
            except ValueError:
                continue
            if current is None or current.data != key.data:
                continue
            kind, item = key.data
            if kind == "control":
                self._on_control(item)
            elif kind == "stderr":
                self._on_stderr(item)
            elif kind == "exit":
                self._on_exit(item)
            elif kind == "drain":
                self._on_drain(key.fileobj)
            elif kind == "request":
                self.control_server.accept()
            elif kind == "signal":
                try:
                    os.read(self.signal_read, 512)
                except BlockingIOError:
                    pass
        while self.pending_signals:
            self._on_stop_signal(self.pending_signals.pop(0))
        now = time.monotonic()
        self._run_timers(now)
        self._check_liveness(now)
        if self.checkpoints is not None:
            self.checkpoints.tick(now)
        if now >= self.next_registry_write:
            self.next_registry_write = now + REGISTRY_INTERVAL
            self._measure_rates(now)
            self._write_registry()
            self._reap_orphans(kill=False)
        self.view.tick()

    def _run_timers(self, now: float) -> None:
        if self.recovering:
            self._recovery_timer(now)
        for stage in self.stages.values():
            if stage.state == "backoff" and stage.restart_at <= now:
                if self.failing or self.stop_requested:
                    stage.state = "stopped"
                else:
                    self._restart(stage)
            if stage.alive and stage.kill_at is not None and now >= stage.kill_at:
                stage.kill_at = None
                self.view.event(f"still running {stage.spec.stop_timeout:g}s "
                                f"after {stage.spec.stop_signal}; sending "
                                f"SIGKILL", stage.spec.id)
                stage.kill()
        for key, deadline in list(self.rewire_deadlines.items()):
            if now >= deadline and not self.failing:
                self.rewire_deadlines.pop(key)
                self._begin_failure(
                    f"stage '{key[0]}' did not switch its {key[1]} {key[2]} "
                    f"to a new pipe within {REWIRE_TIMEOUT:g}s after a "
                    f"neighbour restarted; records could be lost, so the "
                    f"run stops")
        if (self.interrupt_sources_at is not None
                and now >= self.interrupt_sources_at):
            self.interrupt_sources_at = None
            for stage in self.stages.values():
                if (stage.spec.role == "source" and stage.alive
                        and stage.spec.builtin is not None):
                    stage.signal(signal.SIGINT)
        if self.drain_deadline is not None and now >= self.drain_deadline:
            self.drain_deadline = None
            self.view.event(f"the drain timeout of "
                            f"{self.pipeline.drain_timeout:g}s has passed; "
                            f"stopping the stages still running")
            for stage in self.stages.values():
                stage.terminate(now)

    def _check_liveness(self, now: float) -> None:
        for stage in self.stages.values():
            timeout = stage.spec.liveness_timeout
            if (timeout is None or not stage.alive or not stage.greeted
                    or stage.unresponsive or stage.state != "running"
                    or now - stage.last_message_at < timeout):
                continue
            # A stage blocked on a full pipe is waiting for a slow reader,
            # not hung: backpressure is not a liveness failure.
            if any(edge.is_full() for edge in self.graph.outputs_of(
                    stage.spec.id)):
                continue
            stage.unresponsive = True
            self.view.event(f"sent nothing on its control channel for "
                            f"{timeout:g}s (liveness_timeout); killing it",
                            stage.spec.id)
            stage.kill()

    # Events from stages

    def _on_control(self, stage: StageProcess) -> None:
        self._handle_messages(stage, stage.read_control())
        if stage.control is None:
            self._unregister_data(("control", stage))

    def _handle_messages(self, stage: StageProcess,
                         messages: list[dict[str, Any]]) -> None:
        for message in messages:
            kind = message.get("type")
            if kind == "rewired":
                self._close_retired((stage.spec.id,
                                     str(message.get("direction")),
                                     int(message.get("index", 0))))
            elif (kind == "checkpoint" and self.checkpoints is not None
                  and not self.recovering):
                self.checkpoints.on_report(stage, message)

    def _unregister_data(self, data: tuple) -> None:
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

    def _collect_last_words(self, stage: StageProcess) -> None:
        """Read what an exited stage left on its control channel and stderr."""
        if stage.control is not None:
            self._unregister_data(("control", stage))
            while stage.control is not None:
                messages = stage.read_control()
                # A stage's last report (its final state, say) may come
                # together with its exit.
                self._handle_messages(stage, messages)
                if not messages and stage.control is not None:
                    break
            stage.close_control()
        if stage.stderr_fd is not None:
            self.selector.unregister(stage.stderr_fd)
            # A child the stage left behind may still hold the pipe open;
            # read only what is there now and do not wait for it.
            lines: list[str] = []
            while stage.stderr_fd is not None:
                chunk = stage.read_stderr()
                if not chunk:
                    lines += stage.close_stderr()
                    break
                lines += chunk
            self._show_stderr(stage, lines)

    def _on_exit(self, stage: StageProcess) -> None:
        self.selector.unregister(stage.pidfd)
        code = stage.reap()
        self._collect_last_words(stage)
        self._forget_retired(stage.spec.id)
        if self.recovering:
            # Stopped for a recovery: it starts again with the others.
            stage.state = "recovering"
            return
        clean = self._is_clean_exit(stage, code)
        if self.failing or self.stop_requested:
            stage.state = "finished" if clean and stage.done else "stopped"
            if clean or not self.failing:
                # While stopping, the readers of a stage that died (a source
                # stopped before it started, say) see the end of its output
                # at once instead of waiting for the drain timeout.
                self._release_pipes(stage)
            return
        if clean and (stage.done or not stage.greeted):
            stage.state = "finished"
            self.view.event(self._finish_message(stage), stage.spec.id)
            self._release_pipes(stage)
            return
        tracker = self.trackers[stage.spec.id]
        if clean:
            if not tracker.wants_restart(failed=False):
                stage.state = "finished"
                self.view.event("exited with code 0 before the end of its "
                                "stream; its output ends here",
                                stage.spec.id)
                self._release_pipes(stage)
                return
            reason = "exited with code 0 before the end of its stream"
        else:
            reason = self._exit_reason(stage)
            stage.last_error = stage.last_error or reason
        self._after_failure(stage, reason)

    def _is_clean_exit(self, stage: StageProcess, code: int) -> bool:
        if stage.unresponsive:
            return False
        if stage.spec.command is not None and stage.spec.codec == "msgpack":
            return code in stage.spec.success_exit_codes
        return code == 0

    def _exit_reason(self, stage: StageProcess) -> str:
        if stage.unresponsive:
            return (f"stopped answering for "
                    f"{stage.spec.liveness_timeout:g}s")
        if stage.error and stage.error.get("message"):
            return str(stage.error["message"])
        code = stage.exit_code
        if code is not None and code < 0:
            return f"was killed by signal {signal.Signals(-code).name}"
        return f"exited with code {code}"

    def _after_failure(self, stage: StageProcess, reason: str) -> None:
        """Restart a failed stage or fail the run, following its policy."""
        now = time.monotonic()
        tracker = self.trackers[stage.spec.id]
        # A program that cannot start would fail again on every restart.
        # A stage killed by a signal while starting is no sign of that.
        killed = stage.exit_code is not None and stage.exit_code < 0
        if (not self._started_properly(stage) and not stage.ever_ready
                and not killed):
            stage.state = "failed"
            self._begin_failure(
                f"stage '{stage.spec.id}' failed at start: {reason}; see "
                f"{stage.log_path}")
            return

        # These codes put the fault upstream only when the stage library
        # reported it, because a program may exit with 3 or 4 for its own
        # reasons.
        relayed = bool(stage.error) and stage.error.get("exit_code") in (
            runtime.EXIT_UPSTREAM_FAILED, runtime.EXIT_BAD_INPUT)
        if relayed:
            # Restarting the reader cannot mend what its writer sends.
            stage.state = "failed"
            self._begin_failure(self._failure_message())
            return

        if not tracker.wants_restart(failed=True):
            stage.state = "failed"
            self._begin_failure(self._stage_failure(stage, reason))
            return
        policy = tracker.policy
        if tracker.over_limit(now):
            stage.state = "failed"
            self._begin_failure(
                f"stage '{stage.spec.id}' failed {policy.max_restarts + 1} "
                f"times within {policy.window:g}s, over its limit of "
                f"max_restarts: {policy.max_restarts}; last failure: "
                f"{reason}; see {stage.log_path}")
            return

        ran_for = time.time() - stage.started_at
        delay = tracker.next_delay(now, ran_for)
        stage.restarts += 1
        if self.checkpoints is not None:
            self._recover_all(stage, reason, delay)
            return
        stage.state = "backoff"
        stage.restart_at = now + delay
        self.view.event(f"{reason}; restarting in {delay:.1f}s "
                        f"(restart {stage.restarts})", stage.spec.id)

    def _recover_all(self, stage: StageProcess, reason: str,
                     delay: float) -> None:
        """Stop every stage, to start them all again from the newest
        complete checkpoint (or, in manual mode, fail the run)."""
        driver = self.checkpoints
        last = driver.coordinator.last
        if driver.config.recovery.mode != "auto":
            stage.state = "failed"
            where = (f"checkpoint {last.id}" if last is not None
                     else "the beginning")
            if driver.config.recovery.mode == "manual":
                advice = (f"The pipeline does not recover by itself "
                          f"(recovery.mode: manual); run it with --resume "
                          f"to go on from {where}")
            else:
                advice = ("Checkpoints are not restored (recovery.mode: "
                          "off)")
            self._begin_failure(f"{self._stage_failure(stage, reason)}. "
                                f"{advice}")
            return
        self.recovering = True
        self.recovery_at = time.monotonic() + delay
        driver.begin_recovery(stage.spec.id,
                              f"{reason} (restart {stage.restarts})", delay)
        for other in self.stages.values():
            if other.alive:
                other.kill()
            else:
                other.state = "recovering"

    def _recovery_timer(self, now: float) -> None:
        if self.failing or self.stop_requested:
            self.recovering = False
            for stage in self.stages.values():
                if not stage.alive:
                    stage.state = "stopped"
            return
        if now < self.recovery_at or any(stage.alive for stage
                                         in self.stages.values()):
            return
        from flowctl.checkpoints.storage import StorageError
        try:
            self.checkpoints.plan_recovery()
        except StorageError as error:
            self.recovering = False
            self._begin_failure(f"cannot recover: {error}")
            return
        for key in list(self.retired):
            self._close_retired(key)
        for key in list(self.selector.get_map().values()):
            if key.data[0] == "drain":
                self.selector.unregister(key.fileobj)
        self.graph.close()
        self.graph = Graph.build(self.pipeline.stages)
        self.recovering = False
        for stage in self.stages.values():
            if not self._start(stage):
                return
        self.view.event("every stage restarted")

    def _started_properly(self, stage: StageProcess) -> bool:
        if stage.ready:
            return True
        if not stage.greeted:
            return (stage.ended_at - stage.started_at) >= STARTUP_GRACE_SECONDS
        return False

    def _finish_message(self, stage: StageProcess) -> str:
        totals = stage.totals
        if not totals:
            return "finished"
        return (f"finished in={totals.get('records_in', 0):,} "
                f"out={totals.get('records_out', 0):,}")

    # Restarting

    def _restart(self, stage: StageProcess) -> None:
        try:
            self._rewire(stage)
        except CannotRestart as error:
            stage.state = "failed"
            self._begin_failure(f"stage '{stage.spec.id}' cannot be "
                                f"restarted: {error}")
            return
        if self._start(stage):
            self.view.event(f"restarted (restart {stage.restarts})",
                            stage.spec.id)
            if stage.spec.role == "source":
                self.view.event("a restarted source starts its stream "
                                "again: the records it produced before "
                                "are produced again", stage.spec.id)

    def _rewire(self, stage: StageProcess) -> None:
        """Give a stage fresh pipes and hand the other ends to its
        neighbours, which switch to them between two frames."""
        for edge in self.graph.inputs_of(stage.spec.id):
            writer = self.stages[edge.writer]
            self._check_rewirable(writer)
            old = self.graph.replace(edge)
            if writer.alive:
                writer.send({"type": "rewire_output",
                             "index": edge.writer_index}, fd=edge.write_fd)
                self._retire((writer.spec.id, "output", edge.writer_index),
                             old, drain=True)
            else:
                self._close_fds(old)
                if writer.state == "finished":
                    self._end_stream(edge)
        for edge in self.graph.outputs_of(stage.spec.id):
            reader = self.stages[edge.reader]
            self._check_rewirable(reader)
            old = self.graph.replace(edge)
            if reader.alive:
                reader.send({"type": "rewire_input",
                             "index": edge.reader_index}, fd=edge.read_fd)
                self._retire((reader.spec.id, "input", edge.reader_index),
                             old, drain=False)
            else:
                self._close_fds(old)

    def _check_rewirable(self, neighbour: StageProcess) -> None:
        if neighbour.alive and not (neighbour.can_rewire
                                    and neighbour.control):
            raise CannotRestart(
                f"its neighbour '{neighbour.spec.id}' cannot be handed a new "
                f"pipe (its hello on the control channel did not list the "
                f"'rewire' feature)")

    def _end_stream(self, edge: Edge) -> None:
        """Close a new pipe from a writer that has already finished."""
        protocol.write_all(edge.write_fd, protocol.hello_frame(edge.writer)
                           + protocol.end_frame())
        os.close(edge.write_fd)
        edge.write_fd = -1

    def _retire(self, key: tuple[str, str, int], old: tuple[int, int],
                drain: bool) -> None:
        """Keep an old pipe until the neighbour reports that it switched.

        The old pipe's writer may be blocked on it, since its reader is
        gone; reading and discarding what it writes lets it reach the
        point between two frames where it switches.
        """
        previous = self.retired.pop(key, None)
        if previous is not None:
            self._drop_retired(previous)
        self.retired[key] = old
        self.rewire_deadlines[key] = time.monotonic() + REWIRE_TIMEOUT
        if drain:
            os.set_blocking(old[0], False)
            self.selector.register(old[0], selectors.EVENT_READ,
                                   ("drain", key))

    def _on_drain(self, fd: int) -> None:
        try:
            os.read(fd, DRAIN_READ_SIZE)
        except BlockingIOError:
            pass

    def _close_retired(self, key: tuple[str, str, int]) -> None:
        self.rewire_deadlines.pop(key, None)
        old = self.retired.pop(key, None)
        if old is not None:
            self._drop_retired(old)

    def _drop_retired(self, old: tuple[int, int]) -> None:
        if old[0] in self.selector.get_map():
            self.selector.unregister(old[0])
        self._close_fds(old)

    def _forget_retired(self, stage_id: str) -> None:
        for key in [key for key in self.retired if key[0] == stage_id]:
            self._close_retired(key)

    @staticmethod
    def _close_fds(fds: tuple[int, int]) -> None:
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    def _release_pipes(self, stage: StageProcess) -> None:
        """Close our copies of a finished stage's pipe ends.

        A reader then sees end-of-file after the last frame, which is how a
        foreign stage that exits without an end frame ends its stream.
        """
        for edge in self.graph.outputs_of(stage.spec.id):
            if edge.write_fd >= 0:
                os.close(edge.write_fd)
                edge.write_fd = -1
        for edge in self.graph.inputs_of(stage.spec.id):
            if edge.read_fd >= 0:
                os.close(edge.read_fd)
                edge.read_fd = -1

    # Stopping

    def _on_stop_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP and self.stop_requested:
            # A closing terminal can send SIGHUP more than once (bash
            # passes its own on to its jobs): only Ctrl-C, SIGTERM or
            # `flowctl stop` stop every stage at once.
            return
        if self.signal_received is not None or self.stop_requested:
            self.view.event("second signal: stopping every stage now")
            self.signal_received = self.signal_received or signum
            self._kill_all()
            return
        self.signal_received = signum
        self._begin_stop(f"{signal.Signals(signum).name} received")

    def _begin_stop(self, reason: str) -> None:
        self.stop_requested = True
        self.view.event(f"{reason}: stopping the sources and draining "
                        f"(again to stop at once)")
        if self.checkpoints is not None and self.checkpoints.stop_requested():
            # The sources are stopped once the checkpoint is stored.
            return
        self.stop_sources()

    def stop_sources(self) -> None:
        """Ask the sources to stop and give the rest time to drain."""
        if self.checkpoints is not None:
            self.checkpoints.release_sinks()
        for stage in self.stages.values():
            if stage.spec.role == "source":
                stage.request_stop()
            if stage.state == "backoff":
                stage.state = "stopped"
                if self.checkpoints is None:
                    self._close_gap(stage)
        now = time.monotonic()
        self.interrupt_sources_at = now + SOURCE_INTERRUPT_DELAY
        self.drain_deadline = now + self.pipeline.drain_timeout

    def _close_gap(self, stage: StageProcess) -> None:
        """Let the stream drain around a stage that will not restart.

        Its readers get a new pipe holding just an end frame, and what its
        writers still send is read and discarded, so neither side waits
        for it until the drain timeout.
        """
        for edge in self.graph.outputs_of(stage.spec.id):
            reader = self.stages[edge.reader]
            if not (reader.alive and reader.can_rewire and reader.control):
                continue
            old = self.graph.replace(edge)
            reader.send({"type": "rewire_input", "index": edge.reader_index},
                        fd=edge.read_fd)
            self._retire((reader.spec.id, "input", edge.reader_index), old,
                         drain=False)
            self._end_stream(edge)
        for edge in self.graph.inputs_of(stage.spec.id):
            if edge.read_fd >= 0 and edge.read_fd not in \
                    self.selector.get_map():
                os.set_blocking(edge.read_fd, False)
                self.selector.register(edge.read_fd, selectors.EVENT_READ,
                                       ("drain", (stage.spec.id, "gap",
                                                  edge.reader_index)))

    def fail(self, message: str) -> None:
        """Fail the run: stop every stage; the run exits with code 1."""
        self._begin_failure(message)

    def _begin_failure(self, message: str) -> None:
        if self.failing:
            return
        self.failing = True
        self.failure_message = message
        if self.checkpoints is not None:
            self.checkpoints.release_sinks()
        now = time.monotonic()
        for stage in self.stages.values():
            if stage.alive:
                stage.terminate(now)
            elif stage.state == "backoff":
                stage.state = "stopped"

    def _kill_all(self) -> None:
        for stage in self.stages.values():
            if stage.alive:
                stage.kill()
            elif stage.state == "backoff":
                stage.state = "stopped"

    # Operators: the control socket and the registry

    def _handle_request(self, request: dict[str, Any]) -> dict[str, Any]:
        kind = request.get("type")
        if kind == "status":
            return {"ok": True, "run": self.status()}
        if kind == "stop":
            if request.get("kill"):
                self.view.event("flowctl stop --kill: stopping every stage "
                                "now")
                self.stop_requested = True
                self.signal_received = self.signal_received or signal.SIGTERM
                self._kill_all()
            elif not self.stop_requested:
                self.signal_received = signal.SIGTERM
                self._begin_stop("stop requested by flowctl stop")
            else:
                # A second stop escalates, as a second Ctrl-C does.
                self.view.event("second stop request: stopping every stage "
                                "now")
                self._kill_all()
            return {"ok": True}
        return {"ok": False, "error": f"unknown request {kind!r}"}

    def status(self) -> dict[str, Any]:
        """Return the run and its stages as `flowctl status --json` prints
        them."""
        return {
            "id": self.run_id,
            "pipeline": self.pipeline.name,
            "source": self.pipeline.source,
            "pid": os.getpid(),
            "state": self._run_state(),
            "started_at": self.started_at,
            "stages": [{**self._stage_row(stage),
                        "rate": self.current_rates.get(stage.spec.id)}
                       for stage in self.stages.values()],
            "checkpoint": (self.checkpoints.status()
                           if self.checkpoints is not None else None),
        }

    def record_checkpoint(self, status: dict[str, Any]) -> None:
        """Store the newest checkpoint in the registry for `flowctl status`."""
        if self.registry is not None:
            self.registry.set_checkpoint(self.run_id, status)

    def _run_state(self) -> str:
        if self.failing:
            return "failing"
        if self.recovering:
            return "recovering"
        if self.stop_requested:
            return "stopping"
        return "running"

    @staticmethod
    def _stage_row(stage: StageProcess) -> dict[str, Any]:
        totals = stage.totals
        return {
            "id": stage.spec.id,
            "role": stage.spec.role,
            "pid": stage.pid if stage.alive else None,
            "state": stage.state,
            "restarts": stage.restarts,
            "records_in": totals.get("records_in", 0),
            "records_out": totals.get("records_out", 0),
            "last_error": stage.last_error,
        }

    def _measure_rates(self, now: float) -> None:
        for stage in self.stages.values():
            key = "records_in" if stage.spec.role == "sink" else "records_out"
            self.current_rates[stage.spec.id] = self.rates.update(
                stage.spec.id, stage.totals.get(key, 0), now)

    def _write_registry(self) -> None:
        if self.registry is not None:
            self.registry.update_stages(
                self.run_id, [self._stage_row(stage)
                              for stage in self.stages.values()])

    def _record_end(self, outcome: Outcome) -> None:
        if self.registry is None:
            return
        if outcome.exit_code == EXIT_OK:
            state = "finished"
        elif outcome.exit_code == EXIT_FAILED:
            state = "failed"
        else:
            state = "stopped"
        self._write_registry()
        self.registry.finish_run(self.run_id, state, outcome.exit_code,
                                 outcome.message)
        self.registry.close()

    def _reap_orphans(self, kill: bool) -> None:
        """Reap (and with `kill`, first kill) adopted orphans of stages.

        Only processes that are not stages are touched: a stage's exit
        status belongs to its Popen object.
        """
        stage_pids = {stage.pid for stage in self.stages.values()
                      if stage.alive}
        for child in children_of(os.getpid()):
            if child in stage_pids:
                continue
            try:
                if kill:
                    os.kill(child, signal.SIGKILL)
                elif not is_zombie(child):
                    continue
                os.waitpid(child, 0 if kill else os.WNOHANG)
            except (ProcessLookupError, ChildProcessError):
                pass

    # Clean-up and the result

    def _cleanup(self, previous: dict[int, Any]) -> None:
        # Whatever happened, no stage and no child of a stage survives the
        # run: the process groups get SIGKILL even after a clean finish.
        for stage in self.stages.values():
            if stage.alive:
                stage.kill()
                stage.reap()
            stage.kill()
            stage.close_control()
            if stage.stderr_fd is not None:
                stage.close_stderr()
            if stage.pidfd is not None:
                os.close(stage.pidfd)
                stage.pidfd = None
        self._reap_orphans(kill=True)
        for key in list(self.retired):
            self._close_retired(key)
        self.graph.close()
        for log in self.log_files.values():
            log.close()
        for fd in getattr(self, "stdio", ()):
            os.close(fd)
        if self.control_server is not None:
            self.control_server.close()
        signal.set_wakeup_fd(self.previous_wakeup)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        self.selector.close()
        os.close(self.signal_read)
        os.close(self.signal_write)

    def _outcome(self) -> Outcome:
        if self.failing:
            return Outcome(EXIT_FAILED, self.failure_message)
        if self.signal_received is not None:
            return Outcome(SIGNAL_EXIT_CODES.get(self.signal_received, 143))
        return Outcome(EXIT_OK)

    def _failure_message(self) -> str:
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
        failed = [stage for stage in stages if stage.state == "failed"]
        for stage in failed:
            if stage.exit_code != runtime.EXIT_UPSTREAM_FAILED:
                return self._describe_failure(stage)
        if failed:
            return self._describe_failure(failed[0])
        return "the run failed"

    @staticmethod
    def _stage_failure(stage: StageProcess, reason: str) -> str:
        if stage.error and stage.error.get("message"):
            return (f"stage '{stage.spec.id}' failed: "
                    f"{stage.error['message']}; see {stage.log_path}")
        return f"stage '{stage.spec.id}' {reason}; see {stage.log_path}"

    def _describe_failure(self, stage: StageProcess) -> str:
        code = stage.exit_code
        if stage.error and stage.error.get("message"):
            # The exit status adds nothing to the stage's own report; it may
            # even be the SIGTERM sent while the run was being stopped.
            return (f"stage '{stage.spec.id}' failed: "
                    f"{stage.error['message']}; see {stage.log_path}")
        if code is not None and code < 0:
            how = f"was killed by signal {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}"
        return f"stage '{stage.spec.id}' {how}; see {stage.log_path}"

    def _log_of(self, stage_id: str) -> str:
        stage = self.stages.get(stage_id)
        return stage.log_path if stage else self.directory
