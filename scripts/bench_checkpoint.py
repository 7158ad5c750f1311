"""Measure what checkpointing costs flowctl: throughput, checkpoint time
and recovery time.

The pipeline is the same in every part of the benchmark:

    generate -> map -> count-by -> write-jsonl

`map` adds a key (`seq % K`, K = --keys) to each record, `count-by` keeps a
count per key as its checkpoint state and emits the K counts at the end of
the stream, and `write-jsonl` writes them with two-phase commit.  Each
run gets its own temporary directory with the pipeline file, the
checkpoint directory (`retain: 1000`, so no checkpoint is deleted) and the
output file.

1. Throughput.  N records (--records) with checkpointing off and with each
   interval of --intervals, each run as the real CLI
   (`python -m flowctl run FILE --no-live`) and timed wall-clock around
   the whole command, interpreter start-up included.  A run counts only if
   it exits 0 and its output contains K counts that add up to N.  Runs are
   interleaved (round 1 of every contender, then round 2, ...), and
   records/s and the ratio to the run without checkpoints are given for
   the best (shortest) and the median run.
2. Checkpoint time.  The `duration` field of each periodic checkpoint's
   manifest.json from the throughput runs: seconds from the injection of
   the barriers at the sources until every part was stored.  The final
   checkpoint is left out, because its duration only counts the storing.
3. Recovery time.  A separate run with an endless source limited to
   --rate records/s, checkpoints every second and a restart backoff of
   0.1 s without jitter.  The script kills one processor (--kill-stage)
   with SIGKILL --kills times and timestamps flowctl's log lines as they
   arrive.  Recovery time is from the kill until flowctl logs the first
   checkpoint stored after "every stage restarted": at that point a
   barrier has passed through every restarted stage behind the records
   the source produced after the restart.  The script checks, in that
   checkpoint's manifest, that count-by's state covers more records than
   in the checkpoint it was restored from.  Each kill comes 0.2 s before
   the next checkpoint is due, so that checkpoint starts as soon as every
   restarted stage has sent its hello.  A kill just after a checkpoint
   began would add up to one interval of waiting for the schedule.

Before the runs, the script compiles flowctl's modules to bytecode as
scripts/bench.py does, and it measures how much CPU time other processes
took during the runs.  It warns above 5% of the machine's capacity.

Usage::

    python scripts/bench_checkpoint.py
    python scripts/bench_checkpoint.py --records 4000000 --repeat 5 --json

Exit codes: 0 every run was valid, 1 a run failed or its output was
wrong, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import (BrokenRun, _children_cpu_seconds, _machine_busy_seconds,
                   _tail, compile_flowctl, describe_machine)

# At 2 million records/s (a 2-CPU VM) a run lasts about 12 s, long enough
# for one checkpoint with `interval: 10s`.  Faster machines need more.
DEFAULT_RECORDS = 24_000_000
DEFAULT_REPEAT = 3
DEFAULT_KEYS = 10_000
DEFAULT_INTERVALS = "1s,10s"
DEFAULT_KILLS = 5
DEFAULT_RATE = 50_000
DEFAULT_KILL_STAGE = "count"
DEFAULT_TIMEOUT_SECONDS = 900.0

# The recovery run: checkpoints every second, and the restart backoff of
# every stage is a constant 0.1 s (multiplier 1, no jitter), so each
# recovery waits the same delay.
RECOVERY_INTERVAL_SECONDS = 1.0
RECOVERY_BACKOFF_SECONDS = 0.1
# After a recovery, the run goes on for this long before the next kill,
# so that the next kill hits a pipeline in its steady state.
SETTLE_SECONDS = 2.0
# Each kill comes this long before the next checkpoint is due, so that
# the checkpoint is overdue by the time the stages are back and starts as
# soon as every stage has sent its hello.  A kill just after a checkpoint
# began would add up to one interval of waiting for the schedule.
KILL_LEAD_SECONDS = 0.2
# Limit for each step of one recovery (the kill logged, every stage
# restarted, a checkpoint stored).
RECOVERY_STEP_TIMEOUT_SECONDS = 60.0
# Limit for flowctl to stop after SIGTERM at the end of the recovery run.
STOP_TIMEOUT_SECONDS = 60.0

OTHER_LOAD_WARNING_SHARE = 0.05

EXIT_OK = 0
EXIT_BROKEN_RUN = 1

PIPELINE_NAME = "bench-checkpoint"
# The id of the count-by stage, whose checkpoint info reports the records
# it has counted.
COUNTING_STAGE = "count"
STAGE_ENV = "FLOWCTL_STAGE_ID"
OFF = "off"

# flowctl's plain log lines, e.g.
# "12:00:01 run=ab12 checkpoint 000003 stored in 0.16s" (a final
# checkpoint's line starts with "final checkpoint" and does not match),
# "12:00:02 run=ab12 stage=count was killed by signal SIGKILL (restart 1);
# restarting every stage from checkpoint 000003 in 0.1s" and
# "12:00:02 run=ab12 every stage restarted".
CHECKPOINT_STORED = re.compile(r" run=\S+ checkpoint (\d+) stored in ")
RECOVERY_STARTED = re.compile(
    r"restarting every stage from checkpoint (\d+) in ")
EVERY_STAGE_RESTARTED = re.compile(r" run=\S+ every stage restarted$")
INTERVAL_PATTERN = re.compile(r"^\d+(\.\d+)?(ms|s|m)?$")


@dataclass
class ThroughputRun:
    """The measurements of one throughput run."""

    seconds: float
    cpu_seconds: float
    other_cpu_seconds: float | None
    # Manifest `duration` of each periodic checkpoint, in seconds.
    checkpoint_seconds: list[float]
    final_checkpoint: bool


@dataclass
class Contender:
    """Checkpointing off, or on with one interval."""

    name: str
    interval: str | None
    runs: list[ThroughputRun] = field(default_factory=list)

    @property
    def label(self) -> str:
        return OFF if self.interval is None else f"interval {self.interval}"

    @property
    def seconds(self) -> list[float]:
        return [run.seconds for run in self.runs]

    @property
    def checkpoint_seconds(self) -> list[float]:
        return [value for run in self.runs for value in run.checkpoint_seconds]

    @property
    def checkpoints_per_run(self) -> list[int]:
        return [len(run.checkpoint_seconds) for run in self.runs]


@dataclass
class Recovery:
    """Timestamps of one recovery, in seconds after the SIGKILL."""

    killed_pid: int
    restored_checkpoint: str
    first_checkpoint: str
    recovery_logged: float
    every_stage_restarted: float
    barriers_injected: float
    checkpoint_stored: float


@dataclass
class RecoveryRun:
    """The recoveries of the recovery run, and its checkpoints' durations."""

    recoveries: list[Recovery]
    # Manifest `duration` of each periodic checkpoint, in seconds.
    checkpoint_seconds: list[float]


# Pipeline files


def build_pipeline(output: Path, keys: int, records: int | None,
                   rate: int | None, checkpoint: dict[str, Any] | None,
                   supervisor: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """Build the benchmark's pipeline document."""
    source_config: dict[str, Any] = {}
    if records is not None:
        source_config["count"] = records
    if rate is not None:
        source_config["rate"] = rate
    spec: dict[str, Any] = {
        "sources": [{"id": "source", "stage": "generate",
                     "config": source_config}],
        "processors": [
            {"id": "keyed", "stage": "map",
             "config": {"expr": f"{{'seq': r['seq'], "
                                f"'key': r['seq'] % {keys}}}"},
             "inputs": ["source"]},
            {"id": COUNTING_STAGE, "stage": "count-by", "config": {"key": "key"},
             "inputs": ["keyed"]},
        ],
        "sinks": [{"id": "out", "stage": "write-jsonl",
                   "config": {"path": str(output)}, "inputs": ["count"]}],
    }
    if checkpoint is not None:
        spec["checkpoint"] = checkpoint
    if supervisor is not None:
        spec["supervisor"] = supervisor
    return {"apiVersion": "flowctl/v1", "kind": "Pipeline",
            "metadata": {"name": PIPELINE_NAME}, "spec": spec}


def write_pipeline(path: Path, document: dict[str, Any]) -> None:
    # JSON is valid YAML, and this script then needs no YAML library.
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def checkpoint_section(directory: Path, interval: str) -> dict[str, Any]:
    return {"interval": interval, "directory": str(directory),
            "retain": 1000}


def read_manifests(directory: Path) -> list[dict[str, Any]]:
    """Return the manifest of every complete checkpoint, oldest first."""
    manifests = []
    if not directory.is_dir():
        return manifests
    for entry in sorted(directory.iterdir()):
        path = entry / "manifest.json"
        if path.is_file():
            manifests.append(json.loads(path.read_text(encoding="utf-8")))
    return manifests


def check_output(output: Path, records: int, keys: int) -> None:
    """Raise BrokenRun unless `output` contains the counts of all records."""
    try:
        lines = output.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise BrokenRun(f"cannot read the output {output}: {error}") from None
    counts = [json.loads(line)["count"] for line in lines]
    expected_lines = min(keys, records)
    if len(counts) != expected_lines or sum(counts) != records:
        raise BrokenRun(f"the output {output} has {len(counts)} counts "
                        f"adding up to {sum(counts)}, expected "
                        f"{expected_lines} counts adding up to {records}")


# Part 1 and 2: throughput and checkpoint time


def run_throughput_once(contender: Contender, arguments: argparse.Namespace,
                        workdir: Path, home: Path) -> ThroughputRun:
    """Run the pipeline once for `contender` and measure it.

    Raises BrokenRun when flowctl fails, times out, or writes wrong output.
    """
    run_dir = Path(tempfile.mkdtemp(prefix=f"{contender.name}-",
                                    dir=workdir))
    output = run_dir / "counts.jsonl"
    checkpoints = run_dir / "checkpoints"
    checkpoint = (None if contender.interval is None
                  else checkpoint_section(checkpoints, contender.interval))
    pipeline = run_dir / "pipeline.yaml"
    write_pipeline(pipeline, build_pipeline(
        output, arguments.keys, arguments.records, None, checkpoint))
    argv = [arguments.python, "-m", "flowctl", "run", str(pipeline),
            "--no-live", "--home", str(home)]

    busy_before = _machine_busy_seconds()
    cpu_before = _children_cpu_seconds()
    started = time.perf_counter()
    # A session of its own lets a timed-out run be killed with its stages.
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=arguments.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise BrokenRun(f"{contender.label} timed out after "
                        f"{arguments.timeout:g} s. Raise --timeout or lower "
                        f"--records.") from None
    elapsed = time.perf_counter() - started
    cpu_seconds = _children_cpu_seconds() - cpu_before
    busy_after = _machine_busy_seconds()

    if process.returncode != 0:
        raise BrokenRun(f"{contender.label} exited with code "
                        f"{process.returncode}: {_tail(stderr)}")
    check_output(output, arguments.records, arguments.keys)
    manifests = read_manifests(checkpoints)
    periodic = [manifest["duration"] for manifest in manifests
                if not manifest["final"]]
    final = any(manifest["final"] for manifest in manifests)
    if contender.interval is not None and not final:
        raise BrokenRun(f"{contender.label} stored no final checkpoint in "
                        f"{checkpoints}: {_tail(stderr)}")
    shutil.rmtree(run_dir)

    other = None
    if busy_before is not None and busy_after is not None:
        # Clock ticks are coarse, so a quiet machine can come out slightly
        # below zero.
        other = max(0.0, busy_after - busy_before - cpu_seconds)
    return ThroughputRun(elapsed, cpu_seconds, other, periodic, final)


def run_throughput_rounds(contenders: list[Contender],
                          arguments: argparse.Namespace, workdir: Path,
                          home: Path) -> None:
    """Run every contender `repeat` times, interleaved."""
    for round_number in range(1, arguments.repeat + 1):
        for contender in contenders:
            try:
                result = run_throughput_once(contender, arguments, workdir,
                                             home)
            except BrokenRun as error:
                raise BrokenRun(f"run {round_number}: {error}") from None
            contender.runs.append(result)
            if not arguments.json:
                print(f"run {round_number}/{arguments.repeat} "
                      f"{contender.label}: {result.seconds:.3f} s, "
                      f"{len(result.checkpoint_seconds)} checkpoints",
                      file=sys.stderr)


# Part 3: recovery time


class LogWatcher:
    """A reader that timestamps each line of a process's stderr on arrival.

    A thread reads the lines, so the time of a line is when flowctl wrote
    it (flowctl flushes each line), not when the caller looked.
    """

    def __init__(self, stream: Any) -> None:
        self.lines: queue.Queue[tuple[float, str] | None] = queue.Queue()
        self.history: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(stream,),
                                       daemon=True)
        self.thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.put((time.monotonic(), line.rstrip("\n")))
        self.lines.put(None)

    def wait_for(self, pattern: re.Pattern[str], timeout: float
                 ) -> tuple[float, re.Match[str]]:
        """Return the arrival time and match of the next matching line.

        Raises BrokenRun when the log ends or `timeout` seconds pass first.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                item = self.lines.get(timeout=max(remaining, 0.0))
            except queue.Empty:
                raise BrokenRun(f"no log line matched {pattern.pattern!r} "
                                f"within {timeout:g} s; the log ends with: "
                                f"{self.tail()}") from None
            if item is None:
                raise BrokenRun(f"flowctl exited before a log line matched "
                                f"{pattern.pattern!r}; the log ends with: "
                                f"{self.tail()}")
            arrived, line = item
            self.history.append(line)
            match = pattern.search(line)
            if match is not None:
                return arrived, match

    def drain(self) -> None:
        """Take every line that has arrived, so waits look only ahead."""
        while True:
            try:
                item = self.lines.get_nowait()
            except queue.Empty:
                return
            if item is None:
                raise BrokenRun(f"flowctl exited during the recovery run; "
                                f"the log ends with: {self.tail()}")
            self.history.append(item[1])

    def tail(self) -> str:
        return _tail("\n".join(self.history[-20:]))


def find_stage_pid(flowctl_pid: int, stage_id: str) -> int:
    """Return the PID of the stage process `stage_id` of a flowctl run.

    Stage processes are children of the flowctl process, with their id in
    the environment variable FLOWCTL_STAGE_ID.
    """
    try:
        import psutil
    except ImportError:
        raise BrokenRun(f"psutil is missing from {sys.executable}, which "
                        f"the recovery run needs to find the stage to "
                        f"kill; run the script with flowctl's venv or "
                        f"give --kills 0") from None

    for child in psutil.Process(flowctl_pid).children():
        try:
            if child.environ().get(STAGE_ENV) == stage_id:
                return child.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    raise BrokenRun(f"no child of flowctl (PID {flowctl_pid}) has "
                    f"{STAGE_ENV}={stage_id}")


def read_manifest(checkpoints: Path, checkpoint_id: str) -> dict[str, Any]:
    path = checkpoints / checkpoint_id / "manifest.json"
    return json.loads(path.read_text(encoding="utf-8"))


def counted_records(manifest: dict[str, Any]) -> int:
    """Return the records the count-by stage's state covers."""
    return int(manifest["stages"][COUNTING_STAGE]["info"]["records"])


def wait_before_kill(watcher: LogWatcher, checkpoints: Path) -> None:
    """Sleep until KILL_LEAD_SECONDS before the next checkpoint is due.

    A checkpoint is due one interval after the previous one began, which
    is its stored line's arrival minus its manifest `duration`.
    """
    watcher.drain()
    stored_at, stored = watcher.wait_for(CHECKPOINT_STORED,
                                         RECOVERY_STEP_TIMEOUT_SECONDS)
    duration = read_manifest(checkpoints, stored.group(1))["duration"]
    kill_at = (stored_at - duration + RECOVERY_INTERVAL_SECONDS
               - KILL_LEAD_SECONDS)
    time.sleep(max(0.0, kill_at - time.monotonic()))
    watcher.drain()


def kill_and_recover(process: subprocess.Popen, watcher: LogWatcher,
                     checkpoints: Path, stage_id: str) -> Recovery:
    """SIGKILL the stage once and time the recovery that follows."""
    wait_before_kill(watcher, checkpoints)
    pid = find_stage_pid(process.pid, stage_id)
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    logged_at, started = watcher.wait_for(RECOVERY_STARTED,
                                          RECOVERY_STEP_TIMEOUT_SECONDS)
    restarted_at, _ = watcher.wait_for(EVERY_STAGE_RESTARTED,
                                       RECOVERY_STEP_TIMEOUT_SECONDS)
    stored_at, stored = watcher.wait_for(CHECKPOINT_STORED,
                                         RECOVERY_STEP_TIMEOUT_SECONDS)
    restored_id = started.group(1)
    stored_id = stored.group(1)
    restored = read_manifest(checkpoints, restored_id)
    first = read_manifest(checkpoints, stored_id)
    # count-by is the last processor, so its state covers every record
    # that has passed both processors, whichever of them was killed.
    before = counted_records(restored)
    after = counted_records(first)
    if after <= before:
        raise BrokenRun(f"checkpoint {stored_id}, the first after the "
                        f"restart, has stage '{COUNTING_STAGE}' at {after} "
                        f"records, not past the {before} of checkpoint "
                        f"{restored_id} it was restored from")
    # NOTE: the injection time is estimated from the manifest's duration,
    # which ends when the last part was stored, a few milliseconds before
    # the log line (the manifest itself is written in between).
    injected_at = stored_at - first["duration"]
    return Recovery(pid, restored_id, stored_id, logged_at - killed_at,
                    restarted_at - killed_at, injected_at - killed_at,
                    stored_at - killed_at)


def stop_flowctl(process: subprocess.Popen) -> None:
    """Stop the recovery run with SIGTERM, or SIGKILL its session."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def measure_recovery(arguments: argparse.Namespace, workdir: Path,
                     home: Path) -> RecoveryRun:
    """Run the rate-limited pipeline and kill a stage `kills` times.

    Raises BrokenRun when flowctl exits early, a recovery step times out,
    or the first checkpoint after a restart shows no progress.
    """
    run_dir = Path(tempfile.mkdtemp(prefix="recovery-", dir=workdir))
    checkpoints = run_dir / "checkpoints"
    supervisor = {"restart": {
        "policy": "on-failure",
        "backoff": {"initial": f"{RECOVERY_BACKOFF_SECONDS:g}s",
                    "multiplier": 1, "jitter": 0},
        "max_restarts": arguments.kills + 1,
        "window": "1h"}}
    pipeline = run_dir / "pipeline.yaml"
    write_pipeline(pipeline, build_pipeline(
        run_dir / "counts.jsonl", arguments.keys, None, arguments.rate,
        checkpoint_section(checkpoints,
                           f"{RECOVERY_INTERVAL_SECONDS:g}s"), supervisor))
    argv = [arguments.python, "-m", "flowctl", "run", str(pipeline),
            "--no-live", "--home", str(home)]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    watcher = LogWatcher(process.stderr)
    recoveries = []
    try:
        # A recovery restores a checkpoint only once one is complete.
        watcher.wait_for(CHECKPOINT_STORED, RECOVERY_STEP_TIMEOUT_SECONDS)
        for number in range(1, arguments.kills + 1):
            time.sleep(SETTLE_SECONDS)
            recovery = kill_and_recover(process, watcher, checkpoints,
                                        arguments.kill_stage)
            recoveries.append(recovery)
            if not arguments.json:
                print(f"kill {number}/{arguments.kills} of stage "
                      f"'{arguments.kill_stage}' (PID {recovery.killed_pid}):"
                      f" checkpoint stored after "
                      f"{recovery.checkpoint_stored:.3f} s", file=sys.stderr)
    finally:
        stop_flowctl(process)
    durations = [manifest["duration"] for manifest in read_manifests(checkpoints)
                 if not manifest["final"]]
    shutil.rmtree(run_dir)
    return RecoveryRun(recoveries, durations)


# Reporting


def median_and_max(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0, "median": None, "max": None}
    return {"count": len(values), "median": round(statistics.median(values), 4),
            "max": round(max(values), 4)}


def summarize_throughput(contenders: list[Contender], records: int
                         ) -> dict[str, Any]:
    baseline = next(c for c in contenders if c.interval is None)
    best_off = min(baseline.seconds)
    median_off = statistics.median(baseline.seconds)
    summary = {}
    for contender in contenders:
        best = min(contender.seconds)
        median = statistics.median(contender.seconds)
        summary[contender.name] = {
            "label": contender.label,
            "interval": contender.interval,
            "seconds": [round(value, 4) for value in contender.seconds],
            "cpu_seconds": [round(run.cpu_seconds, 4)
                            for run in contender.runs],
            "best_seconds": round(best, 4),
            "median_seconds": round(median, 4),
            "best_records_per_second": round(records / best),
            "median_records_per_second": round(records / median),
            # Throughput ratios: the same N records, so inverse time ratios.
            "ratio_best": round(best_off / best, 4),
            "ratio_median": round(median_off / median, 4),
            "median_cpu_seconds": round(statistics.median(
                run.cpu_seconds for run in contender.runs), 4),
            "periodic_checkpoints_per_run": contender.checkpoints_per_run,
            "checkpoint_duration_seconds": median_and_max(
                contender.checkpoint_seconds),
        }
    return summary


def summarize_recovery(run: RecoveryRun) -> dict[str, Any]:
    recoveries = run.recoveries
    return {
        "kills": [vars(recovery) for recovery in recoveries],
        "recovery_logged_seconds": median_and_max(
            [recovery.recovery_logged for recovery in recoveries]),
        "every_stage_restarted_seconds": median_and_max(
            [recovery.every_stage_restarted for recovery in recoveries]),
        "barriers_injected_seconds": median_and_max(
            [recovery.barriers_injected for recovery in recoveries]),
        "checkpoint_stored_seconds": median_and_max(
            [recovery.checkpoint_stored for recovery in recoveries]),
        "checkpoint_duration_seconds": median_and_max(run.checkpoint_seconds),
    }


def measure_other_load(contenders: list[Contender], cpus: int
                       ) -> float | None:
    """Return the share of CPU capacity other processes used during the
    throughput runs."""
    runs = [run for contender in contenders for run in contender.runs]
    if not runs or any(run.other_cpu_seconds is None for run in runs):
        return None
    capacity = sum(run.seconds for run in runs) * cpus
    other = sum(run.other_cpu_seconds or 0.0 for run in runs)
    return other / capacity if capacity else None


def format_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_throughput(report: dict[str, Any]) -> list[str]:
    lines = [f"{report['records']:,} records through generate -> map -> "
             f"count-by ({report['keys']:,} keys) -> write-jsonl; best and "
             f"median of {report['repeat']} runs",
             "",
             f"{'checkpointing':<14} {'best s':>8} {'median s':>9} "
             f"{'best rec/s':>11} {'median rec/s':>13} {'ratio best':>11} "
             f"{'ratio median':>13} {'CPU s':>6} {'checkpoints':>12}"]
    for summary in report["throughput"].values():
        per_run = summary["periodic_checkpoints_per_run"]
        checkpoints = ("-" if summary["interval"] is None
                       else f"{statistics.median(per_run):g}")
        lines.append(
            f"{summary['label']:<14} {summary['best_seconds']:>8.3f} "
            f"{summary['median_seconds']:>9.3f} "
            f"{summary['best_records_per_second']:>11,} "
            f"{summary['median_records_per_second']:>13,} "
            f"{summary['ratio_best']:>11.3f} {summary['ratio_median']:>13.3f} "
            f"{summary['median_cpu_seconds']:>6.2f} {checkpoints:>12}")
    lines += ["(ratio: records/s over records/s with checkpointing off; "
              "CPU s: median CPU time",
              " of all processes of a run; checkpoints: median periodic "
              "checkpoints per run,",
              " not counting the final one)",
              "",
              "checkpoint duration (manifest `duration`: barriers injected "
              "until every part stored)",
              f"{'checkpointing':<14} {'count':>6} {'median s':>9} "
              f"{'max s':>7}"]
    for summary in report["throughput"].values():
        if summary["interval"] is None:
            continue
        durations = summary["checkpoint_duration_seconds"]
        lines.append(f"{summary['label']:<14} {durations['count']:>6} "
                     f"{format_seconds(durations['median']):>9} "
                     f"{format_seconds(durations['max']):>7}")
    return lines


def format_recovery(report: dict[str, Any]) -> list[str]:
    recovery = report["recovery"]
    settings = report["recovery_settings"]
    lines = ["",
             f"recovery after SIGKILL of stage '{settings['kill_stage']}': "
             f"{recovery['checkpoint_stored_seconds']['count']} kills, "
             f"generate rate {settings['rate']:,}/s, checkpoint interval "
             f"{settings['interval_seconds']:g} s, backoff "
             f"{settings['backoff_seconds']:g} s, each kill "
             f"{settings['kill_lead_seconds']:g} s before a checkpoint is "
             f"due",
             f"{'seconds from the kill until':<48} {'median':>7} {'max':>7}"]
    rows = (("flowctl logs the recovery", "recovery_logged_seconds"),
            ("flowctl logs \"every stage restarted\"",
             "every_stage_restarted_seconds"),
            ("the next checkpoint's barriers are injected",
             "barriers_injected_seconds"),
            ("that checkpoint is stored (recovery time)",
             "checkpoint_stored_seconds"))
    for label, key in rows:
        values = recovery[key]
        lines.append(f"{label:<48} {format_seconds(values['median']):>7} "
                     f"{format_seconds(values['max']):>7}")
    durations = recovery["checkpoint_duration_seconds"]
    lines.append(f"checkpoint duration in this run: {durations['count']} "
                 f"checkpoints, median "
                 f"{format_seconds(durations['median'])} s, max "
                 f"{format_seconds(durations['max'])} s")
    return lines


def print_text_report(report: dict[str, Any]) -> None:
    machine = report["machine"]
    commit = machine["flowctl_commit"] or "unknown commit"
    print(f"machine: {machine['cpus_available']} CPUs, "
          f"{machine['cpu_model']}, Python {machine['python']}, "
          f"msgpack {machine['msgpack']}")
    print(f"flowctl: {machine['flowctl_package']} ({commit})")
    start, end = report["load_average_start"], report["load_average_end"]
    print(f"load average (1, 5, 15 min): {start[0]:.2f} {start[1]:.2f} "
          f"{start[2]:.2f} at the start, {end[0]:.2f} {end[1]:.2f} "
          f"{end[2]:.2f} at the end")
    lines = format_throughput(report)
    if report["recovery"] is not None:
        lines += format_recovery(report)
    print("\n".join(lines))


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure flowctl's throughput with checkpointing off "
                    "and on, the time of one checkpoint, and the time to "
                    "recover from a SIGKILL of a stage.")
    parser.add_argument("--records", type=int, default=DEFAULT_RECORDS,
                        metavar="N",
                        help="records of each throughput run "
                             f"(default {DEFAULT_RECORDS:,})")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                        metavar="K",
                        help="throughput runs per contender "
                             f"(default {DEFAULT_REPEAT})")
    parser.add_argument("--keys", type=int, default=DEFAULT_KEYS,
                        help="distinct keys that count-by counts, which "
                             "sets the size of its state "
                             f"(default {DEFAULT_KEYS:,})")
    parser.add_argument("--intervals", default=DEFAULT_INTERVALS,
                        help="comma-separated checkpoint intervals to "
                             "compare with checkpointing off, in flowctl's "
                             "duration syntax (default "
                             f"{DEFAULT_INTERVALS})")
    parser.add_argument("--kills", type=int, default=DEFAULT_KILLS,
                        help="SIGKILLs in the recovery run; 0 skips it "
                             f"(default {DEFAULT_KILLS})")
    parser.add_argument("--kill-stage", default=DEFAULT_KILL_STAGE,
                        choices=("keyed", "count"),
                        help="processor the recovery run kills: 'keyed' "
                             "(map) or 'count' (count-by) (default "
                             f"{DEFAULT_KILL_STAGE})")
    parser.add_argument("--rate", type=int, default=DEFAULT_RATE,
                        help="records per second of the recovery run's "
                             f"source (default {DEFAULT_RATE:,})")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter flowctl runs under (default: the "
                             "one running this script)")
    parser.add_argument("--timeout", type=float,
                        default=DEFAULT_TIMEOUT_SECONDS, metavar="SECONDS",
                        help="limit for one throughput run in seconds "
                             f"(default {DEFAULT_TIMEOUT_SECONDS:g})")
    parser.add_argument("--json", action="store_true",
                        help="print the results as one JSON document")
    arguments = parser.parse_args(argv)

    for name in ("records", "repeat", "keys", "rate"):
        if getattr(arguments, name) < 1:
            parser.error(f"--{name} must be at least 1, got "
                         f"{getattr(arguments, name)}")
    if arguments.kills < 0:
        parser.error(f"--kills must be 0 or more, got {arguments.kills}")

    intervals = [text.strip() for text in arguments.intervals.split(",")
                 if text.strip()]
    invalid = [text for text in intervals if not INTERVAL_PATTERN.match(text)]
    if invalid or not intervals:
        parser.error(f"invalid --intervals {arguments.intervals!r}; use "
                     f"durations such as 500ms,1s,10s")
    arguments.interval_list = list(dict.fromkeys(intervals))
    return arguments


def build_contenders(intervals: list[str]) -> list[Contender]:
    contenders = [Contender(OFF, None)]
    contenders += [Contender(f"interval-{interval}", interval)
                   for interval in intervals]
    return contenders


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    load_start = os.getloadavg()
    compile_flowctl(arguments.python)
    contenders = build_contenders(arguments.interval_list)
    try:
        machine = describe_machine(arguments.python)
        with tempfile.TemporaryDirectory(
                prefix="flowctl-bench-checkpoint-") as directory:
            workdir = Path(directory)
            home = workdir / "home"
            run_throughput_rounds(contenders, arguments, workdir, home)
            recovery_run = (measure_recovery(arguments, workdir, home)
                            if arguments.kills else None)
    except BrokenRun as error:
        print(f"bench_checkpoint: {error}", file=sys.stderr)
        return EXIT_BROKEN_RUN
    load_end = os.getloadavg()

    other_load = measure_other_load(contenders, machine["cpus_available"])
    report = {
        "records": arguments.records,
        "keys": arguments.keys,
        "repeat": arguments.repeat,
        "machine": machine,
        "load_average_start": [round(value, 2) for value in load_start],
        "load_average_end": [round(value, 2) for value in load_end],
        "other_load_share": (None if other_load is None
                             else round(other_load, 3)),
        "throughput": summarize_throughput(contenders, arguments.records),
        "recovery_settings": {
            "kill_stage": arguments.kill_stage, "rate": arguments.rate,
            "interval_seconds": RECOVERY_INTERVAL_SECONDS,
            "kill_lead_seconds": KILL_LEAD_SECONDS,
            "backoff_seconds": RECOVERY_BACKOFF_SECONDS,
            "settle_seconds": SETTLE_SECONDS},
        "recovery": (None if recovery_run is None
                     else summarize_recovery(recovery_run)),
    }
    if arguments.json:
        print(json.dumps(report, indent=2))
    else:
        print_text_report(report)
    if other_load is not None and other_load > OTHER_LOAD_WARNING_SHARE:
        print(f"bench_checkpoint: warning: other processes used "
              f"{other_load:.0%} of the CPU capacity during the throughput "
              f"runs; the results are slower and noisier than on an idle "
              f"machine", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
