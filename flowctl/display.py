"""What a run shows while it runs: a live table or plain log lines.

`LiveView` (in `flowctl.liveview`) redraws a per-stage table on a
terminal; `PlainView` writes one log line per event, for pipes, files and
CI, and `JsonView` one JSON object per event.  Both print each stage's
stderr lines prefixed with the stage id, and both end with a summary line
per stage.  Everything goes to flowctl's stderr except the live table,
which is drawn on the terminal flowctl's stdout is attached to.

Output is wrapped in a `GuardedStream`: when the reader of flowctl's
output goes away, the run goes on and its messages are dropped.
"""

from __future__ import annotations

import errno
import json
import sys
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from flowctl.process import StageProcess

REFRESH_INTERVAL = 0.25
PLAIN_PROGRESS_INTERVAL = 10.0
RATE_WINDOW = 2.0
STDERR_LINES_PER_SECOND = 200
# Write errors after which nothing more can reach the reader: a pipe or
# socket whose reader has gone (EPIPE, ECONNRESET) and a terminal that
# was hung up (EIO).
READER_GONE_ERRNOS = frozenset({errno.EPIPE, errno.ECONNRESET, errno.EIO})


def format_count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def format_rate(rate: float | None) -> str:
    if rate is None:
        return "-"
    if rate >= 1_000_000:
        return f"{rate / 1_000_000:.1f}M/s"
    if rate >= 1_000:
        return f"{rate / 1_000:.1f}k/s"
    return f"{rate:.0f}/s"


class RateMeter:
    """Records per second over the last few seconds, per stage."""

    def __init__(self) -> None:
        self.samples: dict[str, list[tuple[float, int]]] = {}

    def update(self, stage_id: str, count: int, now: float) -> float | None:
        samples = self.samples.setdefault(stage_id, [])
        samples.append((now, count))
        while len(samples) > 2 and now - samples[0][0] > RATE_WINDOW:
            samples.pop(0)
        first_time, first_count = samples[0]
        if now - first_time < 0.2:
            return None
        return (count - first_count) / (now - first_time)


def throughput_count(stage: StageProcess) -> int | None:
    """Return the count that measures a stage's progress: records out, or
    records in for sinks."""
    key = "records_in" if stage.spec.role == "sink" else "records_out"
    return stage.totals.get(key)


class StderrBudget:
    """Limits how many stderr lines per stage reach the terminal.

    A stage that floods stderr would otherwise drown every other message;
    the log file still gets every line.
    """

    def __init__(self) -> None:
        self.window_start = time.monotonic()
        self.counts: dict[str, int] = {}
        self.dropped: dict[str, int] = {}

    def allow(self, stage_id: str) -> bool:
        count = self.counts.get(stage_id, 0) + 1
        self.counts[stage_id] = count
        if count <= STDERR_LINES_PER_SECOND:
            return True
        self.dropped[stage_id] = self.dropped.get(stage_id, 0) + 1
        return False

    def take_dropped(self, now: float, force: bool = False
                     ) -> list[tuple[str, int]]:
        if now - self.window_start < 1.0 and not force:
            return []
        self.window_start = now
        self.counts = {}
        dropped, self.dropped = list(self.dropped.items()), {}
        return dropped


class GuardedStream:
    """A text stream for flowctl's own output that does not raise OSError
    from write() or flush().

    The run matters more than its messages, and the stages' log files get
    every stderr line anyway.  After an error in `READER_GONE_ERRNOS` the
    stream drops every later write, and `error` keeps that error.  After
    any other OSError (a full disk, say) it tries again with the next
    write.  Every other attribute is the wrapped stream's.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.error: OSError | None = None

    def write(self, text: str) -> int:
        if self.error is None:
            try:
                self.stream.write(text)
            except OSError as error:
                self._on_write_error(error)
        return len(text)

    def flush(self) -> None:
        if self.error is None:
            try:
                self.stream.flush()
            except OSError as error:
                self._on_write_error(error)

    def _on_write_error(self, error: OSError) -> None:
        if error.errno in READER_GONE_ERRNOS:
            self.error = error

    def __getattr__(self, name: str) -> object:
        return getattr(self.stream, name)


def guarded(stream: TextIO) -> GuardedStream:
    """Wrap a stream in a `GuardedStream` unless it already is one."""
    if isinstance(stream, GuardedStream):
        return stream
    return GuardedStream(stream)


class View:
    """Base of the two views; it also writes the closing summary.

    `stream` is wrapped in a `GuardedStream`, so a view does not raise
    when its output is closed.
    """

    def __init__(self, run_id: str, stream: TextIO) -> None:
        self.run_id = run_id
        self.stream = guarded(stream)
        self.rates = RateMeter()

    def start(self, stages: list[StageProcess]) -> None:
        self.stages = stages

    def event(self, message: str, stage_id: str | None = None) -> None:
        raise NotImplementedError

    def stderr_line(self, stage_id: str, line: str) -> None:
        raise NotImplementedError

    def error(self, message: str) -> None:
        """Print why the run failed, as the last line of the run."""
        self.stream.write(f"flowctl: {message}\n")
        self.stream.flush()

    def tick(self) -> None:
        """Called a few times a second by the orchestrator's loop."""

    def stop(self) -> None:
        """Tear down any live display before the summary is printed."""

    def summary(self, elapsed: float) -> None:
        width = max(len(stage.spec.id) for stage in self.stages)
        for stage in self.stages:
            duration = (stage.ended_at or time.time()) - (
                stage.first_started_at or time.time())
            count = throughput_count(stage)
            rate = (format_rate(count / duration)
                    if count is not None and duration > 0 else "-")
            totals = stage.totals
            line = (f"  {stage.spec.id:<{width}}  {stage.state:<9} "
                    f"in {format_count(totals.get('records_in')):>12}  "
                    f"out {format_count(totals.get('records_out')):>12}  "
                    f"{duration:7.1f}s  {rate:>9}")
            if stage.restarts:
                line += f"  restarts {stage.restarts}"
            if stage.exit_code not in (None, 0):
                line += f"  exit {stage.exit_code}"
            self.stream.write(line + "\n")
        self.stream.flush()


class PlainView(View):
    """One log line per event, for output that is not a terminal."""

    def __init__(self, run_id: str, stream: TextIO | None = None) -> None:
        # sys.stderr is looked up here, not bound as the default at import:
        # the command line may replace it first (see flowctl.cli).
        super().__init__(run_id, sys.stderr if stream is None else stream)
        self.last_progress = time.monotonic()
        self.stderr_budget = StderrBudget()

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def event(self, message: str, stage_id: str | None = None) -> None:
        stamp = time.strftime("%H:%M:%S")
        where = f"run={self.run_id}" + (f" stage={stage_id}" if stage_id else "")
        self._write(f"{stamp} {where} {message}")

    def stderr_line(self, stage_id: str, line: str) -> None:
        if self.stderr_budget.allow(stage_id):
            self._write(f"[{stage_id}] {line}")

    def _report_dropped(self, force: bool) -> None:
        now = time.monotonic()
        for stage_id, dropped in self.stderr_budget.take_dropped(now, force):
            self.event(f"{dropped} more stderr lines are only in the log "
                       f"file", stage_id)

    def stop(self) -> None:
        self._report_dropped(force=True)

    def tick(self) -> None:
        self._report_dropped(force=False)
        now = time.monotonic()
        if now - self.last_progress < PLAIN_PROGRESS_INTERVAL:
            return
        self.last_progress = now
        parts = []
        for stage in self.stages:
            count = throughput_count(stage)
            parts.append(f"{stage.spec.id}={format_count(count)}")
        self.event("progress " + " ".join(parts))


class JsonView(PlainView):
    """One JSON object per line for each event, for log collectors."""

    def event(self, message: str, stage_id: str | None = None) -> None:
        self._write(json.dumps({
            "time": datetime.now(timezone.utc).isoformat(
                timespec="milliseconds"),
            "level": "info", "run": self.run_id, "stage": stage_id,
            "event": message}))

    def stderr_line(self, stage_id: str, line: str) -> None:
        if self.stderr_budget.allow(stage_id):
            self._write(json.dumps({
                "time": datetime.now(timezone.utc).isoformat(
                    timespec="milliseconds"),
                "level": "info", "run": self.run_id, "stage": stage_id,
                "stderr": line}))

    def error(self, message: str) -> None:
        self._write(json.dumps({
            "time": datetime.now(timezone.utc).isoformat(
                timespec="milliseconds"),
            "level": "error", "run": self.run_id, "stage": None,
            "event": "run failed", "message": message}))

    def summary(self, elapsed: float) -> None:
        for stage in self.stages:
            totals = stage.totals
            self._write(json.dumps({
                "time": datetime.now(timezone.utc).isoformat(
                    timespec="milliseconds"),
                "level": "info", "run": self.run_id, "stage": stage.spec.id,
                "event": "summary", "state": stage.state,
                "records_in": totals.get("records_in", 0),
                "records_out": totals.get("records_out", 0),
                "restarts": stage.restarts, "exit_code": stage.exit_code}))
