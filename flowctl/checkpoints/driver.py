"""Checkpoints and recoveries inside a run's supervisor loop.

`CheckpointDriver` connects the `Coordinator` with the running stages.
It gives each stage what to restore when it starts, and sends barriers to
the sources and commits to the sinks. It takes a checkpoint before a stop
when `on_shutdown` is set. When a stage fails, it restarts the whole
pipeline from the newest complete checkpoint.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import msgpack

from flowctl import faults
from flowctl.checkpoints.coordinator import Coordinator
from flowctl.checkpoints.recovery import RestorePlan, read_states
from flowctl.checkpoints.storage import StorageError

# A stage without a hello after this long is not waited for (the
# supervisor's start-up grace).
STARTUP_GRACE_SECONDS = 1.0
# The same checkpoint failure is logged at most this often (seconds).
FAILURE_LOG_INTERVAL = 60.0

if TYPE_CHECKING:
    from flowctl.process import StageProcess
    from flowctl.supervisor import Run


class CheckpointDriver:
    """The checkpoint side of one `Run`."""

    def __init__(self, run: Run, coordinator: Coordinator,
                 plan: RestorePlan) -> None:
        self.run = run
        self.coordinator = coordinator
        self.plan = plan
        self.config = coordinator.config
        self.restore_dir = os.path.join(run.directory, "restore")
        self.shutdown_pending = False
        self.warned: set[str] = set()
        self.last_failure = ""
        self.last_failure_logged = 0.0
        self.failures_unlogged = 0
        self.first_start = True

    # Starting stages

    def prepare_start(self, stage: StageProcess) -> None:
        """Set what the stage restores from before it is started."""
        stage.checkpointing = True
        restore = self.plan.restore_for(stage.spec.id)
        stage.restore_path = None
        if restore is None:
            return
        os.makedirs(self.restore_dir, mode=0o700, exist_ok=True)
        path = os.path.join(self.restore_dir, f"{stage.spec.id}.restore")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(msgpack.packb(restore, use_bin_type=True))
        stage.restore_path = path
        entry = self.plan.manifest.stages.get(stage.spec.id, {})
        if not stage.base_stats and not stage.stats:
            stage.base_stats = dict(entry.get("metrics") or {})

    def announce_start(self) -> None:
        manifest = self.plan.manifest
        if manifest is None:
            return
        what = "the final checkpoint" if manifest.final else "checkpoint"
        taken = time.strftime("%Y-%m-%d %H:%M:%S",
                              time.localtime(manifest.created_at))
        self.run.view.event(f"resuming from {what} {manifest.id} of {taken} "
                            f"in {self.coordinator.storage.location}")
        if manifest.final:
            self.run.view.event("that run had finished, so this one only "
                                "completes its commits: input added since "
                                "is not read (run without --resume to read "
                                "everything again)")

    # The loop

    def expected(self) -> list[str]:
        """Return the stages whose part every checkpoint needs.

        These are the stages whose hello listed the `checkpoint` feature,
        and those started moments ago whose hello has not arrived yet.
        """
        now = time.time()
        expected = []
        for stage in self.run.stages.values():
            starting = (stage.alive and not stage.greeted
                        and now - stage.started_at < STARTUP_GRACE_SECONDS)
            if stage.can_checkpoint or starting:
                expected.append(stage.spec.id)
        return expected

    def source_records(self) -> int:
        return sum(stage.totals.get("records_out", 0)
                   for stage in self.run.stages.values()
                   if stage.spec.role == "source")

    def tick(self, now: float) -> None:
        run = self.run
        coordinator = self.coordinator
        if run.recovering:
            return
        expected = self.expected()
        if coordinator.in_flight is not None:
            if coordinator.complete_ready(expected):
                self._complete(now)
            elif coordinator.timed_out(now):
                missing = self._holding_up(coordinator.missing(expected))
                run.view.event(
                    f"checkpoint {coordinator.in_flight.number:06d} timed out "
                    f"after {self.config.timeout:g}s waiting for "
                    f"{_stage_list(missing)}; it is abandoned")
                shutdown = coordinator.in_flight.shutdown
                coordinator.abort()
                if shutdown:
                    self._proceed_with_stop()
        if (not run.failing and not run.stop_requested
                and coordinator.in_flight is None
                and coordinator.final_ready(expected)):
            self._complete(now, final=True)
        if (coordinator.in_flight is None and self._can_begin()
                and coordinator.due(now, self.source_records())):
            self._begin(now)

    def _holding_up(self, missing: list[str]) -> list[str]:
        """Return the missing stages whose inputs have all reported: the
        barrier stopped there, and the stages after them only wait."""
        waiting = set(missing)
        first = [stage_id for stage_id in missing
                 if not waiting & set(self.run.pipeline.stage(stage_id).inputs)]
        return first or missing

    def _can_begin(self, stopping: bool = False) -> bool:
        run = self.run
        if run.failing or (run.stop_requested and not stopping) \
                or self.coordinator.final_done:
            return False
        finals = self.coordinator.finals
        expected = set(self.expected())
        sources_running = False
        for stage in run.stages.values():
            if stage.spec.id in finals:
                continue
            if stage.spec.id not in expected:
                # Takes no part (a foreign stage without the feature): it
                # only has to pass barriers on, if it is still running.
                continue
            if not (stage.alive and stage.greeted and stage.state == "running"):
                return False
            sources_running = sources_running or stage.spec.role == "source"
        return sources_running

    def _begin(self, now: float, shutdown: bool = False) -> None:
        number = self.coordinator.begin(now, self.source_records(), shutdown)
        for stage in self.run.stages.values():
            if (stage.spec.role == "source" and stage.alive
                    and stage.spec.id not in self.coordinator.finals):
                stage.send({"type": "barrier", "id": number})

    def _complete(self, now: float, final: bool = False) -> None:
        run = self.run
        coordinator = self.coordinator
        flight = coordinator.in_flight
        shutdown = flight is not None and flight.shutdown
        try:
            manifest = coordinator.complete(now, final)
        except StorageError as error:
            last = coordinator.last.id if coordinator.last else "none"
            if final:
                run.fail(f"the final checkpoint could not be stored: {error}. "
                         f"The output since checkpoint {last} is not "
                         f"committed; fix the storage and run again with "
                         f"--resume")
                return
            self._report_failure(f"checkpoint failed: {error}; the run goes "
                                 f"on, and the newest complete checkpoint is "
                                 f"still {last}")
            if shutdown:
                self._proceed_with_stop()
            return
        faults.hit("published")
        label = "final checkpoint" if final else "checkpoint"
        run.view.event(f"{label} {manifest.id} stored in "
                       f"{manifest.duration:.2f}s")
        for stage in run.stages.values():
            if stage.spec.role == "sink" and stage.alive:
                stage.send({"type": "commit", "id": manifest.number,
                            "final": final})
        run.record_checkpoint(self.status())
        if shutdown:
            self._proceed_with_stop()

    def _report_failure(self, message: str) -> None:
        """Log a failed checkpoint.

        The same message again is logged at most once per
        FAILURE_LOG_INTERVAL, with the number of repeats in between.
        """
        now = time.monotonic()
        if (message == self.last_failure
                and now - self.last_failure_logged < FAILURE_LOG_INTERVAL):
            self.failures_unlogged += 1
            return
        self.last_failure = message
        if self.failures_unlogged:
            message += (f" (the same failure happened "
                        f"{self.failures_unlogged} more times since it was "
                        f"last logged)")
        self.run.view.event(message)
        self.last_failure_logged = now
        self.failures_unlogged = 0

    def on_report(self, stage: StageProcess, message: dict[str, Any]) -> None:
        # The stage counts from zero in each incarnation; the checkpoint
        # keeps the counts over the whole run.
        message = {**message, **{key: stage.base_stats.get(key, 0)
                                 + int(message.get(key) or 0)
                                 for key in ("records_in", "records_out")}}
        self.coordinator.report(stage.spec.id, message)
        run = self.run
        if (message.get("final") and stage.spec.role == "sink"
                and (run.stop_requested or run.failing)):
            stage.send({"type": "release"})
        if (stage.spec.role == "source" and message.get("state") is None
                and stage.spec.id not in self.warned):
            self.warned.add(stage.spec.id)
            run.view.event("keeps no position in its checkpoints: after a "
                           "recovery it starts its stream again, so its "
                           "records may arrive twice downstream",
                           stage.spec.id)

    # Stopping

    def stop_requested(self) -> bool:
        """Start a checkpoint before the stop when `on_shutdown` is set.

        Return whether the stop waits for that checkpoint.
        """
        if not self.config.on_shutdown or self.run.recovering:
            return False
        coordinator = self.coordinator
        if coordinator.in_flight is not None:
            coordinator.in_flight.shutdown = True
        elif self._can_begin(stopping=True):
            self._begin(time.monotonic(), shutdown=True)
        else:
            return False
        self.shutdown_pending = True
        self.run.view.event("taking a checkpoint before stopping")
        return True

    def _proceed_with_stop(self) -> None:
        if self.shutdown_pending:
            self.shutdown_pending = False
            self.run.stop_sources()

    def release_sinks(self) -> None:
        """Let sinks waiting for a final commit end without one."""
        for stage in self.run.stages.values():
            if (stage.spec.role == "sink" and stage.alive
                    and stage.spec.id in self.coordinator.finals):
                stage.send({"type": "release"})

    # Recovering

    def begin_recovery(self, stage_id: str, reason: str,
                       delay: float) -> None:
        """Stop every stage; they start again from the newest complete
        checkpoint once `delay` has passed."""
        coordinator = self.coordinator
        coordinator.abort()
        coordinator.finals.clear()
        # A failure during the final commit: the restarted stages resume
        # from the final checkpoint and take it again, so the sinks commit.
        coordinator.final_done = False
        self.shutdown_pending = False
        last = coordinator.last
        where = (f"from checkpoint {last.id}" if last is not None
                 else "from the beginning (no checkpoint is complete yet)")
        self.run.view.event(f"{reason}; restarting every stage {where} in "
                            f"{delay:.1f}s", stage_id)

    def plan_recovery(self) -> None:
        """Load the states of the newest complete checkpoint."""
        last = self.coordinator.last
        if last is None:
            self.plan = RestorePlan()
            return
        states = read_states(self.coordinator.storage, last)
        self.plan = RestorePlan(
            manifest=last, states=states,
            finished={stage_id: bool(entry.get("finished"))
                      for stage_id, entry in last.stages.items()})

    def status(self) -> dict[str, Any]:
        coordinator = self.coordinator
        last = coordinator.last
        flight = coordinator.in_flight
        return {
            "directory": coordinator.storage.location,
            "last": last.id if last else None,
            "last_at": last.created_at if last else None,
            "last_duration": last.duration if last else None,
            "completed": coordinator.completed,
            "failed": coordinator.failed,
            "last_error": coordinator.last_error,
            "in_flight": f"{flight.number:06d}" if flight else None,
            "interval": coordinator.interval,
        }


def _stage_list(stage_ids: list[str]) -> str:
    names = ", ".join(f"'{stage_id}'" for stage_id in stage_ids)
    return f"stage {names}" if len(stage_ids) == 1 else f"stages {names}"
