"""The orchestrator's side of checkpointing: when to take a checkpoint,
collecting each stage's part, and storing the result.

On every tick the supervisor calls `due()`. When it returns true, the
supervisor calls `begin()` and sends a barrier to the sources. Every
"checkpoint" report from a stage goes to `report()`. Once
`complete_ready()` returns true, `complete()` stores the parts and then
the manifest, and the supervisor sends the sinks their commit.

Only one checkpoint is in flight at a time.  A stage that has reached the
end of its stream takes part in later checkpoints with its final state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from flowctl import faults
from flowctl.checkpoints.config import CheckpointConfig
from flowctl.checkpoints.manifest import (Manifest, checkpoint_name,
                                          encode_part)
from flowctl.checkpoints.recovery import definition, fingerprint
from flowctl.checkpoints.storage import CheckpointStorage, StorageError
from flowctl.pipeline import Pipeline

# Weight of the newest measurement in the moving average of checkpoint cost.
COST_SMOOTHING = 0.3
# The records trigger never fires more often than this.
MIN_RECORDS_INTERVAL = 0.2


@dataclass
class InFlight:
    """A checkpoint whose barrier is on its way through the pipeline."""

    number: int
    started: float                 # monotonic
    shutdown: bool = False
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)


class Coordinator:
    """Checkpoints of one run: schedule, collection, storage, retention."""

    def __init__(self, config: CheckpointConfig, storage: CheckpointStorage,
                 pipeline: Pipeline, run_id: str,
                 last: Manifest | None = None) -> None:
        self.config = config
        self.storage = storage
        self.pipeline = pipeline
        self.run_id = run_id
        self.in_flight: InFlight | None = None
        self.finals: dict[str, dict[str, Any]] = {}
        self.final_done = False
        # The newest complete checkpoint: what a recovery restores.
        self.last: Manifest | None = last
        self.next_number = self._first_number()
        now = time.monotonic()
        self.last_started = now
        self.records_at_last = 0
        self.cost: float | None = None
        self.completed = 0
        self.failed = 0
        self.last_error = ""

    def _first_number(self) -> int:
        try:
            found = self.storage.list_checkpoints()
        except StorageError:
            found = []
        numbers = [int(info.id) for info in found if info.id.isdigit()]
        return max(numbers, default=0) + 1

    # Scheduling

    @property
    def interval(self) -> float:
        """Seconds between checkpoints under the configured strategy.

        Adaptive: the moving average of a checkpoint's cost divided by the
        share of wall time checkpoints may take, within the bounds.
        """
        if self.config.strategy != "adaptive" or self.cost is None:
            return self.config.interval
        bounds = self.config.adaptive
        wanted = self.cost / bounds.target_share
        return min(max(wanted, bounds.min_interval), bounds.max_interval)

    def due(self, now: float, source_records: int) -> bool:
        if self.in_flight is not None:
            return False
        since = now - self.last_started
        if since >= self.interval:
            return True
        records = self.config.records
        if records is None or source_records - self.records_at_last < records:
            return False
        floor = (self.config.adaptive.min_interval
                 if self.config.strategy == "adaptive"
                 else MIN_RECORDS_INTERVAL)
        return since >= floor

    def begin(self, now: float, source_records: int,
              shutdown: bool = False) -> int:
        """Start checkpoint number N; the caller sends the barriers."""
        number = self.next_number
        self.next_number += 1
        self.in_flight = InFlight(number, now, shutdown)
        self.last_started = now
        self.records_at_last = source_records
        return number

    def abort(self) -> None:
        """Forget the checkpoint in flight (a stage died, or it timed out)."""
        self.in_flight = None

    def timed_out(self, now: float) -> bool:
        return (self.in_flight is not None
                and now - self.in_flight.started > self.config.timeout)

    # Reports

    def report(self, stage_id: str, message: dict[str, Any]) -> None:
        if message.get("final"):
            self.finals[stage_id] = message
            return
        flight = self.in_flight
        if flight is not None and message.get("id") == flight.number:
            flight.reports[stage_id] = message

    def missing(self, expected: list[str]) -> list[str]:
        """Stages whose part of the checkpoint in flight has not come."""
        flight = self.in_flight
        if flight is None:
            return []
        return [stage_id for stage_id in expected
                if stage_id not in flight.reports
                and stage_id not in self.finals]

    def complete_ready(self, expected: list[str]) -> bool:
        return self.in_flight is not None and not self.missing(expected)

    def final_ready(self, expected: list[str]) -> bool:
        return (not self.final_done and bool(expected)
                and all(stage_id in self.finals for stage_id in expected))

    # Storing

    def complete(self, now: float, final: bool = False) -> Manifest:
        """Store the checkpoint in flight (or the final one) and return its
        manifest; raise StorageError if it could not be stored."""
        if final:
            number = self.next_number
            self.next_number += 1
            started = now
            reports = dict(self.finals)
            self.final_done = True
        else:
            flight = self.in_flight
            number, started = flight.number, flight.started
            reports = {**self.finals, **flight.reports}
        self.in_flight = None
        manifest = Manifest(id=checkpoint_name(number),
                            pipeline=self.pipeline.name, run_id=self.run_id,
                            final=final)
        try:
            self._store(manifest, reports, started)
        except StorageError as error:
            self.failed += 1
            self.last_error = str(error)
            self._discard(manifest.id)
            raise
        self._measure(time.monotonic() - started)
        self.last = manifest
        self.completed += 1
        self._apply_retention()
        return manifest

    def _store(self, manifest: Manifest, reports: dict[str, dict],
               started: float) -> None:
        include = self.config.include
        written = 0
        for spec in self.pipeline.stages:
            report = reports.get(spec.id, {})
            state = report.get("state")
            wanted = (spec.role == "sink"
                      or (spec.role == "source" and "source_offsets" in include)
                      or (spec.role == "processor"
                          and "processor_state" in include))
            entry: dict[str, Any] = {
                "role": spec.role, "fingerprint": fingerprint(spec),
                "definition": definition(spec), "part": None,
                "finished": bool(report.get("final")),
                "info": report.get("info") or {}}
            if "metrics" in include:
                entry["metrics"] = {key: report[key] for key in
                                    ("records_in", "records_out")
                                    if key in report}
            if state is not None and wanted:
                name = f"{spec.id}.state"
                if self.config.compression == "zstd":
                    name += ".zst"
                stored, part = encode_part(name, state,
                                           self.config.compression)
                self.storage.write_part(manifest.id, name, stored)
                written += 1
                if written == 1:
                    faults.hit("parts")
                manifest.parts[name] = part
                entry["part"] = name
            manifest.stages[spec.id] = entry
        manifest.duration = time.monotonic() - started
        self.storage.publish(manifest)

    def _discard(self, checkpoint_id: str) -> None:
        try:
            self.storage.delete(checkpoint_id)
        except StorageError:
            pass

    def _measure(self, seconds: float) -> None:
        if self.cost is None:
            self.cost = seconds
        else:
            self.cost += COST_SMOOTHING * (seconds - self.cost)

    def _apply_retention(self) -> None:
        """Keep the newest `retain` complete checkpoints, and no partial
        one older than the newest complete checkpoint."""
        try:
            found = self.storage.list_checkpoints()
        except StorageError:
            return
        complete = [info for info in found if info.state == "complete"
                    and info.manifest.pipeline == self.pipeline.name]
        keep = {info.id for info in complete[-self.config.retain:]}
        newest = int(self.last.id) if self.last else 0
        for info in found:
            if info.id in keep or int(info.id) > newest:
                continue
            if info.state == "partial" or info in complete:
                self._discard(info.id)
