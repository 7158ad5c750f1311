"""Supervision: restarts, restart limits, stop escalation, liveness,
bounded memory under backpressure, and executables that misbehave."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import sys
import threading
from pathlib import Path

import psutil
import pytest

from conftest import (STAGES, run_flowctl, stage_processes, wait_until,
                      write_pipeline)
from test_run import HANG_GUARD, line_count, read_jsonl, start_flowctl

CRASHER = STAGES / "crasher.py"


def crasher_pipeline(tmp_path: Path, mode: str, restart: str,
                     count: int = 20000, crashes: int = 5,
                     extra: str = "", rate: int = 4000) -> tuple[Path, Path]:
    out = tmp_path / "out.jsonl"
    pipeline = write_pipeline(tmp_path / "p.yaml", f"""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          supervisor:
            restart: {restart}
          sources:
            - {{id: numbers, stage: generate,
                config: {{count: {count}, rate: {rate}}}}}
          processors:
            - id: crasher
              command: [{sys.executable}, {CRASHER}]
              env: {{STATE_FILE: {tmp_path / 'state'}, CRASHES: "{crashes}",
                     AFTER: "500", MODE: {mode}}}
              inputs: [numbers]
              {extra}
          sinks:
            - {{id: out, stage: write-jsonl, config: {{path: {out}}},
                inputs: [crasher]}}
        """)
    return pipeline, out


def registry_restarts(home: Path, stage_id: str) -> int:
    with sqlite3.connect(home / "registry.db") as connection:
        rows = connection.execute(
            "SELECT restarts FROM stages WHERE id = ?", (stage_id,)).fetchall()
    assert len(rows) == 1
    return rows[0][0]


@pytest.mark.parametrize("mode", ["kill", "exit"])
def test_crashing_processor_restarts_with_backoff(tmp_path, env, home, mode):
    restart = ("{policy: on-failure, max_restarts: 10, "
               "backoff: {initial: 100ms, multiplier: 2, jitter: 0}}")
    pipeline, out = crasher_pipeline(tmp_path, mode, restart)
    result = run_flowctl(["run", str(pipeline)], env, timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    delays = [float(value) for value in re.findall(
        r"stage=crasher .*; restarting in ([0-9.]+)s", result.stderr)]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6]
    assert registry_restarts(home, "crasher") == 5
    # Without checkpoints, records in flight at a crash may be lost, but
    # none is duplicated and the order holds.
    seqs = [record["seq"] for record in read_jsonl(out)]
    assert seqs == sorted(set(seqs))
    assert seqs[-1] == 19999


def test_restart_limit_fails_run(tmp_path, env, home):
    restart = ("{policy: on-failure, max_restarts: 3, window: 60s, "
               "backoff: {initial: 50ms, jitter: 0}}")
    pipeline, _ = crasher_pipeline(tmp_path, "exit", restart)
    result = run_flowctl(["run", str(pipeline)], env, timeout=HANG_GUARD)
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(
        "flowctl: stage 'crasher' failed 4 times within 60s, over its limit "
        "of max_restarts: 3; last failure: exited with code 1; see ")
    assert registry_restarts(home, "crasher") == 3
    assert stage_processes(str(home)) == []


def test_policy_never_fails_on_first_crash(tmp_path, env, home):
    pipeline, _ = crasher_pipeline(tmp_path, "exit", "{policy: never}")
    result = run_flowctl(["run", str(pipeline)], env, timeout=HANG_GUARD)
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("flowctl: stage 'crasher' exited with code 1;")
    assert registry_restarts(home, "crasher") == 0


def test_stage_failing_at_start_is_not_restarted(tmp_path, env, home):
    missing = tmp_path / "missing.txt"
    result = run_flowctl(
        ["run", "-e", f"read-lines path={missing} | discard"], env,
        timeout=HANG_GUARD)
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(
        "flowctl: stage 'read-lines' failed at start: FileNotFoundError: "
        "[Errno 2] No such file or directory: ")
    assert "restarting" not in result.stderr


def test_stage_failing_at_start_ignores_restart_policy(tmp_path, env):
    pipeline = write_pipeline(tmp_path / "p.yaml", f"""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          supervisor: {{restart: {{policy: always}}}}
          sources:
            - {{id: lines, stage: read-lines,
                config: {{path: {tmp_path / 'missing.txt'}}}}}
          sinks:
            - {{id: out, stage: discard, inputs: [lines]}}
        """)
    result = run_flowctl(["run", str(pipeline)], env, timeout=HANG_GUARD)
    assert result.returncode == 1
    assert "failed at start" in result.stderr
    assert "restarting" not in result.stderr


def test_sigterm_ignoring_stage_and_children_killed(tmp_path, env, home,
                                                   spawned):
    errors = tmp_path / "stderr.txt"
    pipeline = write_pipeline(tmp_path / "p.yaml", f"""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          supervisor: {{drain_timeout: 1s, stop_timeout: 1s}}
          sources:
            - {{id: numbers, stage: generate, config: {{rate: 100}}}}
          processors:
            - id: stubborn
              command: [{sys.executable}, {STAGES / 'stubborn.py'}]
              inputs: [numbers]
          sinks:
            - {{id: out, stage: discard, inputs: [stubborn]}}
        """)
    process = start_flowctl(["run", str(pipeline)], env, spawned, errors)
    # The stage, its two sleep children, and the others are all up.
    wait_until(lambda: sum(1 for found in stage_processes(str(home))
                           if found.name() == "sleep") == 2,
               timeout=HANG_GUARD)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=HANG_GUARD)
    assert process.returncode == 130, errors.read_text()
    assert "sending SIGKILL" in errors.read_text()
    assert stage_processes(str(home)) == []


def test_hung_stage_killed_by_liveness_and_restarted(tmp_path, env, home):
    restart = "{policy: on-failure, backoff: {initial: 100ms}}"
    pipeline, out = crasher_pipeline(
        tmp_path, "hang", restart, count=8000, rate=1000, crashes=1,
        extra="liveness_timeout: 2s")
    result = run_flowctl(["run", str(pipeline)], env, timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    assert ("stage=crasher sent nothing on its control channel for 2s "
            "(liveness_timeout); killing it") in result.stderr
    assert "stage=crasher stopped answering for 2s; restarting" in result.stderr
    assert registry_restarts(home, "crasher") == 1
    seqs = [record["seq"] for record in read_jsonl(out)]
    assert seqs == sorted(set(seqs))
    assert seqs[-1] == 7999


def test_backpressure_is_not_a_liveness_failure(tmp_path, env, home):
    out = tmp_path / "out.jsonl"
    pipeline = write_pipeline(tmp_path / "p.yaml", f"""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          supervisor: {{liveness_timeout: 1s}}
          frames: {{batch_size: 10}}
          sources:
            - {{id: numbers, stage: generate,
                config: {{count: 300, payload: 20000}}}}
          sinks:
            - id: slow
              command: [{sys.executable}, {STAGES / 'slow_sink.py'}]
              env: {{DELAY: "0.01"}}
              config: {{path: {out}}}
              inputs: [numbers]
        """)
    result = run_flowctl(["run", str(pipeline)], env, timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    assert "liveness_timeout" not in result.stderr
    assert [record["seq"] for record in read_jsonl(out)] == list(range(300))


def test_executable_closing_stdin_early(tmp_path, env):
    result = run_flowctl(
        ["run", "-e", "generate count=100000 | exec head -n 3"], env,
        timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ['{"seq":0}', '{"seq":1}',
                                          '{"seq":2}']


def test_clean_exit_mid_stream_ends_its_output(tmp_path, env):
    pipeline, out = crasher_pipeline(tmp_path, "exit0", "{policy: on-failure}",
                                     count=3000, crashes=1)
    result = run_flowctl(["run", str(pipeline)], env, timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    assert ("stage=crasher exited with code 0 before the end of its stream; "
            "its output ends here") in result.stderr
    seqs = [record["seq"] for record in read_jsonl(out)]
    assert seqs == list(range(len(seqs)))
    assert len(seqs) <= 501


def test_clean_exit_mid_stream_restarts_under_always(tmp_path, env, home):
    pipeline, out = crasher_pipeline(
        tmp_path, "exit0", "{policy: always, backoff: {initial: 100ms}}",
        count=3000, crashes=1)
    result = run_flowctl(["run", str(pipeline)], env, timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    assert "exited with code 0 before the end of its stream; restarting" \
        in result.stderr
    assert registry_restarts(home, "crasher") == 1
    assert read_jsonl(out)[-1] == {"seq": 2999}


def test_stderr_flood_is_logged_and_throttled(tmp_path, env, home):
    flood = "i=0; while [ $i -lt 20000 ]; do echo flood $i >&2; " \
            "i=$((i+1)); done; cat"
    result = run_flowctl(
        ["run", "-e", f"generate count=10 | exec sh -c '{flood}' | discard"],
        env, timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    log = next((home / "runs").glob("*/sh.log")).read_text().splitlines()
    assert log == [f"flood {i}" for i in range(20000)]
    shown = [line for line in result.stderr.splitlines()
             if line.startswith("[sh] flood")]
    assert len(shown) < 20000
    assert "more stderr lines are only in the log file" in result.stderr


def test_child_left_behind_does_not_hold_run(tmp_path, env, home):
    result = run_flowctl(
        ["run", "-e", "generate count=10 | exec sh -c 'sleep 600 & cat' "
                      "| discard"], env, timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    assert stage_processes(str(home)) == []


@pytest.mark.slow
def test_memory_stays_bounded_under_slow_sink(tmp_path, env, home, spawned):
    """A gigabyte of 1 MB records into a sink that takes 10 ms a record.

    The bounds: flowctl stays under 100 MB resident, every stage under
    150 MB, whatever the backlog (docs state the same bound).
    """
    errors = tmp_path / "stderr.txt"
    pipeline = write_pipeline(tmp_path / "p.yaml", f"""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - {{id: big, stage: generate,
                config: {{count: 1000, payload: 1000000}}}}
          processors:
            - {{id: same, stage: map, config: {{expr: r}}, inputs: [big]}}
          sinks:
            - id: slow
              command: [{sys.executable}, {STAGES / 'slow_sink.py'}]
              env: {{DELAY: "0.01"}}
              config: {{path: /dev/null}}
              inputs: [same]
        """)
    process = start_flowctl(["run", str(pipeline)], env, spawned, errors)
    peaks: dict[str, int] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for found in stage_processes(str(home)):
                try:
                    name = ("flowctl" if found.pid == process.pid else
                            found.environ().get("FLOWCTL_STAGE_ID", "?"))
                    rss = found.memory_info().rss
                except psutil.Error:
                    continue
                peaks[name] = max(peaks.get(name, 0), rss)
            done.wait(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        process.wait(timeout=600)
    finally:
        done.set()
        sampler.join()
    assert process.returncode == 0, errors.read_text()
    assert set(peaks) >= {"flowctl", "big", "same", "slow"}
    mib = 1024 * 1024
    assert peaks["flowctl"] < 100 * mib, peaks
    for stage in ("big", "same", "slow"):
        assert peaks[stage] < 150 * mib, peaks


def kill_sink_mid_run(tmp_path: Path, env: dict, home: Path, spawned: list,
                      sink: str, out: Path, count: int,
                      lines_before_kill: int) -> str:
    """Run generate into a restartable sink, SIGKILL the sink once `out`
    has enough lines, and return flowctl's stderr after the run ends."""
    errors = tmp_path / "stderr.txt"
    pipeline = write_pipeline(tmp_path / "p.yaml", f"""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          supervisor: {{restart: {{policy: on-failure,
                                  backoff: {{initial: 100ms}}}}}}
          sources:
            - {{id: numbers, stage: generate,
                config: {{count: {count}, rate: 2000}}}}
          sinks:
            - {{id: out, stage: {sink}, config: {{path: {out}}},
                inputs: [numbers]}}
        """)
    process = start_flowctl(["run", str(pipeline)], env, spawned, errors)
    wait_until(lambda: line_count(out) >= lines_before_kill,
               timeout=HANG_GUARD)
    stage = next(found for found in stage_processes(str(home))
                 if found.environ().get("FLOWCTL_STAGE_ID") == "out")
    stage.kill()
    process.wait(timeout=HANG_GUARD)
    assert process.returncode == 0, errors.read_text()
    return errors.read_text()


def test_restarted_file_sink_appends(tmp_path, env, home, spawned):
    out = tmp_path / "out.jsonl"
    kill_sink_mid_run(tmp_path, env, home, spawned, "write-jsonl", out,
                      count=6000, lines_before_kill=1000)
    seqs = [record["seq"] for record in read_jsonl(out)]
    # What was written before the kill is kept: the file starts at 0.
    assert seqs[:1000] == list(range(1000))
    assert seqs == sorted(set(seqs))
    assert seqs[-1] == 5999
    assert registry_restarts(home, "out") == 1


def test_program_exit_code_3_is_restarted(tmp_path, env, home):
    state = tmp_path / "state"
    script = tmp_path / "three.sh"
    script.write_text(f"#!/bin/sh\nif [ ! -e {state} ]; then touch {state}; "
                      f"head -n 5; exit 3; fi\nexec cat\n")
    script.chmod(0o755)
    out = tmp_path / "out.jsonl"
    pipeline = write_pipeline(tmp_path / "p.yaml", f"""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          supervisor: {{restart: {{policy: on-failure,
                                  backoff: {{initial: 100ms}}}}}}
          sources:
            - {{id: numbers, stage: generate,
                config: {{count: 3000, rate: 1000}}}}
          processors:
            - {{id: three, command: [{script}], codec: jsonl,
                inputs: [numbers]}}
          sinks:
            - {{id: out, stage: write-jsonl, config: {{path: {out}}},
                inputs: [three]}}
        """)
    result = run_flowctl(["run", str(pipeline)], env, timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    assert "exited with code 3; restarting in" in result.stderr
    assert registry_restarts(home, "three") == 1
    assert read_jsonl(out)[-1] == {"seq": 2999}


def test_stop_during_backoff_drains_around_stage(tmp_path, env, home,
                                                 spawned):
    errors = tmp_path / "stderr.txt"
    restart = ("{policy: on-failure, "
               "backoff: {initial: 10m, max: 10m, jitter: 0}}")
    pipeline, out = crasher_pipeline(
        tmp_path, "exit", restart, count=100000, rate=2000, crashes=1,
        extra="")
    text = pipeline.read_text().replace(
        "  supervisor:\n", "  supervisor:\n    drain_timeout: 10m\n")
    pipeline.write_text(text)
    process = start_flowctl(["run", str(pipeline)], env, spawned, errors)
    wait_until(lambda: "restarting in 600.0s" in errors.read_text(),
               timeout=HANG_GUARD)
    process.send_signal(signal.SIGTERM)
    # With a 10-minute backoff and drain timeout, only draining around the
    # waiting stage lets the run end within the hang guard.
    process.wait(timeout=HANG_GUARD)
    assert process.returncode == 143, errors.read_text()
    seqs = [record["seq"] for record in read_jsonl(out)]
    assert seqs == list(range(len(seqs)))
    assert stage_processes(str(home)) == []


def test_restarted_csv_sink_writes_one_header(tmp_path, env, home, spawned):
    out = tmp_path / "out.csv"
    kill_sink_mid_run(tmp_path, env, home, spawned, "write-csv", out,
                      count=4000, lines_before_kill=500)
    lines = out.read_text().splitlines()
    assert lines[0] == "seq"
    seqs = [int(line) for line in lines[1:]]
    assert seqs == sorted(set(seqs))
    assert seqs[:499] == list(range(499))
    assert seqs[-1] == 3999
