"""Running pipelines end to end: wiring, failures, signals, no orphans."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import (FLOWCTL, REPO, STAGES, descendants, line_count,
                      read_jsonl, run_flowctl, stage_processes, wait_until,
                      write_pipeline)

HANG_GUARD = 60  # seconds; a run that takes longer has hung


def start_flowctl(args: list[str], env: dict, spawned: list,
                  stderr_path: Path) -> subprocess.Popen:
    """Start flowctl in the background with its stderr going to a file."""
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(FLOWCTL + args, env=env, cwd=REPO,
                                   stdout=subprocess.DEVNULL, stderr=stderr,
                                   start_new_session=True)
    spawned.append(process)
    return process


def test_fan_out_fan_in_delivers_each_record_once(tmp_path, env):
    out = tmp_path / "merged.jsonl"
    pipeline = write_pipeline(tmp_path / "p.yaml", f"""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - id: numbers
              stage: generate
              config: {{count: 100000}}
          processors:
            - id: small
              stage: filter
              config: {{where: "r['seq'] < 60000"}}
              inputs: [numbers]
            - id: even
              stage: filter
              config: {{where: "r['seq'] % 2 == 0"}}
              inputs: [numbers]
          sinks:
            - id: out
              stage: write-jsonl
              config: {{path: {out}}}
              inputs: [small, even]
        """)
    result = run_flowctl(["run", str(pipeline)], env, timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    got = collections.Counter(record["seq"] for record in read_jsonl(out))
    expected = collections.Counter(
        [seq for seq in range(100000) if seq < 60000]
        + [seq for seq in range(100000) if seq % 2 == 0])
    assert got == expected


def test_fan_out_gives_every_reader_every_record(tmp_path, env):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    result = run_flowctl(["run", "-e", "generate count=5000 | discard"], env)
    assert result.returncode == 0, result.stderr
    pipeline = write_pipeline(tmp_path / "p.yaml", f"""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - {{id: numbers, stage: generate, config: {{count: 5000}}}}
          sinks:
            - {{id: a, stage: write-jsonl, config: {{path: {first}}},
                inputs: [numbers]}}
            - {{id: b, stage: write-jsonl, config: {{path: {second}}},
                inputs: [numbers]}}
        """)
    result = run_flowctl(["run", str(pipeline)], env, timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    expected = [{"seq": seq} for seq in range(5000)]
    assert read_jsonl(first) == expected
    assert read_jsonl(second) == expected


def test_garbage_output_fails_run_naming_stage(tmp_path, env):
    pipeline = write_pipeline(tmp_path / "p.yaml", f"""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - id: noisy
              command: [{sys.executable}, {STAGES / 'garbage.py'}]
          sinks:
            - {{id: out, stage: discard, inputs: [noisy]}}
        """)
    result = run_flowctl(["run", str(pipeline)], env, timeout=HANG_GUARD)
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("flowctl: stage 'noisy' wrote output that is "
                              "not flowctl frames, read by stage 'out'")
    assert "looks like text" in message
    assert "noisy.log" in message


def test_frame_over_limit_fails_run_naming_stage(tmp_path, env):
    pipeline = write_pipeline(tmp_path / "p.yaml", f"""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          frames: {{max_size: 1MiB}}
          sources:
            - id: big
              command: [{sys.executable}, {STAGES / 'oversized.py'}]
              env: {{OVERSIZE: "2000000"}}
          sinks:
            - {{id: out, stage: discard, inputs: [big]}}
        """)
    result = run_flowctl(["run", str(pipeline)], env, timeout=HANG_GUARD)
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert ("stage 'big' sent a frame of 2000000 bytes, over the maximum "
            "frame size of 1 MiB") in message
    assert message.startswith("flowctl: stage 'big' wrote output")


def test_record_over_limit_fails_writer(tmp_path, env):
    result = run_flowctl(
        ["run", "-e", "generate count=3 payload=5000 | discard"],
        {**env}, timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    pipeline = write_pipeline(tmp_path / "p.yaml", """
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          frames: {max_size: 2KiB}
          sources:
            - {id: numbers, stage: generate, config: {count: 3, payload: 5000}}
          sinks:
            - {id: out, stage: discard, inputs: [numbers]}
        """)
    result = run_flowctl(["run", str(pipeline)], env, timeout=HANG_GUARD)
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("flowctl: stage 'numbers' failed: ValueError: "
                              "a record of ")
    assert "over the maximum frame size of 2 KiB" in message


def test_failing_stage_names_stage_code_and_log(tmp_path, env, home):
    result = run_flowctl(
        ["run", "-e", "generate count=10 | map expr=\"1/(r['seq']-5)\" | discard"],
        env, timeout=HANG_GUARD)
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("flowctl: stage 'map' failed: "
                              "ZeroDivisionError: division by zero "
                              "(record {'seq': 5}); see ")
    log_path = Path(message.rsplit("see ", 1)[1])
    assert log_path.parent.parent == home / "runs"
    assert log_path.name == "map.log"
    # The traceback shows the expression's frames only, not flowctl's.
    assert log_path.read_text().splitlines() == [
        "Traceback (most recent call last):",
        '  File "<expr>", line 1, in <lambda>',
        "ZeroDivisionError: division by zero",
    ]
    assert "[map] ZeroDivisionError: division by zero" in result.stderr
    assert stage_processes(str(home)) == []


def test_command_exit_code_is_reported(tmp_path, env):
    result = run_flowctl(
        ["run", "-e", "generate count=10 | exec sh -c 'exit 7' | discard"],
        env, timeout=HANG_GUARD)
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("flowctl: stage 'sh' failed: command 'sh' "
                              "exited with code 7; see ")


def test_foreign_stage_without_end_frame_ends_stream(tmp_path, env):
    out = tmp_path / "out.jsonl"
    script = tmp_path / "two.py"
    script.write_text(
        "import msgpack, os, struct\n"
        "def send(value):\n"
        "    data = msgpack.packb(value)\n"
        "    os.write(1, struct.pack('>I', len(data)) + data)\n"
        "send([1, {'protocol': 'flowctl', 'version': 1, 'stage': 'two'}])\n"
        "send([2, [{'n': 1}, {'n': 2}]])\n")
    pipeline = write_pipeline(tmp_path / "p.yaml", f"""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - {{id: two, command: [{sys.executable}, {script}]}}
          sinks:
            - {{id: out, stage: write-jsonl, config: {{path: {out}}},
                inputs: [two]}}
        """)
    result = run_flowctl(["run", str(pipeline)], env, timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    assert read_jsonl(out) == [{"n": 1}, {"n": 2}]


def test_sigint_drains_and_exits_130(tmp_path, env, home, spawned):
    out = tmp_path / "out.jsonl"
    errors = tmp_path / "stderr.txt"
    process = start_flowctl(
        ["run", "-e", f"generate rate=2000 | map expr=r | "
                      f"write-jsonl path={out}"], env, spawned,
        errors)
    wait_until(lambda: line_count(out) >= 200, timeout=HANG_GUARD)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=HANG_GUARD)
    assert process.returncode == 130, errors.read_text()
    records = read_jsonl(out)
    # Drained, not cut: every record the source emitted reached the sink.
    assert records == [{"seq": seq} for seq in range(len(records))]
    assert "SIGINT received" in errors.read_text()
    assert stage_processes(str(home)) == []


def test_sigterm_exits_143(tmp_path, env, home, spawned):
    out = tmp_path / "out.jsonl"
    errors = tmp_path / "stderr.txt"
    process = start_flowctl(
        ["run", "-e", f"generate rate=2000 | write-jsonl path={out}"],
        env, spawned, errors)
    wait_until(lambda: line_count(out) >= 100, timeout=HANG_GUARD)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=HANG_GUARD)
    assert process.returncode == 143
    records = read_jsonl(out)
    assert records == [{"seq": seq} for seq in range(len(records))]
    assert stage_processes(str(home)) == []


def test_second_sigint_stops_at_once(tmp_path, env, home, spawned):
    out = tmp_path / "out.jsonl"
    errors = tmp_path / "stderr.txt"
    pipeline = write_pipeline(tmp_path / "p.yaml", f"""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          supervisor: {{stop_timeout: 10m}}
          frames: {{batch_size: 10}}
          sources:
            - {{id: numbers, stage: generate}}
          sinks:
            - id: slow
              command: [{sys.executable}, {STAGES / 'slow_sink.py'}]
              env: {{DELAY: "0.05"}}
              config: {{path: {out}}}
              inputs: [numbers]
        """)
    process = start_flowctl(["run", str(pipeline)], env, spawned,
        errors)
    wait_until(lambda: line_count(out) >= 5, timeout=HANG_GUARD)
    process.send_signal(signal.SIGINT)
    wait_until(lambda: "SIGINT received" in errors.read_text(),
               timeout=HANG_GUARD)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=HANG_GUARD)
    assert process.returncode == 130, errors.read_text()
    assert "second signal" in errors.read_text()
    assert stage_processes(str(home)) == []


def test_sigkill_of_flowctl_leaves_no_stage(tmp_path, env, home, spawned):
    out = tmp_path / "out.jsonl"
    errors = tmp_path / "stderr.txt"
    pipeline = write_pipeline(tmp_path / "p.yaml", f"""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - {{id: numbers, stage: generate, config: {{rate: 1000}}}}
          processors:
            - {{id: upper, command: [cat], codec: jsonl, inputs: [numbers]}}
          sinks:
            - {{id: out, stage: write-jsonl, config: {{path: {out}}},
                inputs: [upper]}}
        """)
    process = start_flowctl(["run", str(pipeline)], env, spawned,
        errors)
    wait_until(lambda: line_count(out) >= 50, timeout=HANG_GUARD)
    # generate, the adapter, cat and write-jsonl, all carrying our home.
    stages = [stage for stage in stage_processes(str(home))
              if stage.pid != process.pid]
    assert len(stages) == 4
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=HANG_GUARD)
    wait_until(lambda: stage_processes(str(home)) == [], timeout=HANG_GUARD)


def test_sigint_stops_source_blocked_on_stdin(tmp_path, env, home,
                                              spawned):
    # The source waits on a standard input that stays open and quiet, so
    # it never reads the stop message.  With a drain timeout of ten
    # minutes, only the SIGINT that flowctl sends it ends the run.
    fifo = tmp_path / "stdin"
    os.mkfifo(fifo)
    out = tmp_path / "out.jsonl"
    errors = tmp_path / "stderr.txt"
    pipeline = write_pipeline(tmp_path / "p.yaml", f"""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          supervisor: {{drain_timeout: 10m}}
          sources:
            - {{id: lines, stage: read-lines, config: {{path: "-"}}}}
          sinks:
            - {{id: out, stage: write-jsonl, config: {{path: {out}}},
                inputs: [lines]}}
        """)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    writer = os.open(fifo, os.O_WRONLY)
    os.set_blocking(reader, True)
    try:
        with open(errors, "w") as stderr:
            process = subprocess.Popen(
                FLOWCTL + ["run", str(pipeline)], env=env, cwd=REPO,
                stdin=reader, stdout=subprocess.DEVNULL, stderr=stderr,
                start_new_session=True)
        spawned.append(process)
        os.write(writer, b"first\nsecond\n")
        # The lines go out while stdin stays open: the source sends what
        # it has before each read that would block.
        wait_until(lambda: line_count(out) == 2, timeout=HANG_GUARD)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=HANG_GUARD)
    finally:
        os.close(writer)
        os.close(reader)
    assert process.returncode == 130, errors.read_text()
    assert read_jsonl(out) == [{"line": "first"}, {"line": "second"}]
    assert stage_processes(str(home)) == []


def test_config_read_before_run(tmp_path, env):
    script = tmp_path / "scale.py"
    script.write_text(
        "import flowctl\n"
        "factor = flowctl.config()['factor']\n"
        "flowctl.run_processor(lambda r: {'n': r['seq'] * factor})\n")
    out = tmp_path / "out.jsonl"
    pipeline = write_pipeline(tmp_path / "p.yaml", f"""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - {{id: numbers, stage: generate, config: {{count: 3}}}}
          processors:
            - id: scale
              command: [{sys.executable}, {script}]
              codec: msgpack
              config: {{factor: 10}}
              inputs: [numbers]
          sinks:
            - {{id: out, stage: write-jsonl, config: {{path: {out}}},
                inputs: [scale]}}
        """)

    result = run_flowctl(["run", str(pipeline)], env, timeout=HANG_GUARD)

    assert result.returncode == 0, result.stderr
    assert read_jsonl(out) == [{"n": 0}, {"n": 10}, {"n": 20}]


@pytest.mark.parametrize("started", [1, 3])
def test_sigkill_while_stages_start(started, tmp_path, env, home, spawned):
    # flowctl's own stage programs request the parent-death signal when
    # their interpreter is up.  The kill lands as soon as `started` of the
    # three stages exist, while they are still starting.  The source then
    # waits forever to open a FIFO that no one writes, so only the signal,
    # or its finding at start that its parent is gone, can end it.
    fifo = tmp_path / "never-written"
    os.mkfifo(fifo)
    errors = tmp_path / "stderr.txt"
    process = start_flowctl(
        ["run", "-e", f"read-lines path={fifo} | map expr=r | discard"], env,
        spawned, errors)
    try:
        wait_until(lambda: len(descendants(process.pid)) >= started,
                   timeout=HANG_GUARD, interval=0.001)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=HANG_GUARD)
        wait_until(lambda: stage_processes(str(home)) == [], timeout=10)
    finally:
        # Stages that outlived flowctl are orphans the spawned fixture
        # cannot find through flowctl any more.
        for stage in stage_processes(str(home)):
            stage.kill()


def test_stage_exits_when_parent_gone(env):
    # flowctl died before the stage requested the parent-death signal, so
    # the stage's parent is no longer the pid it was given.
    result = subprocess.run(
        [sys.executable, "-m", "flowctl.stages.generate"],
        env={**env, "FLOWCTL_PARENT_PID": str(os.getpid() + 1_000_000)},
        cwd=REPO, capture_output=True, timeout=HANG_GUARD)
    assert (result.returncode, result.stdout) == (1, b"")


def test_stage_stderr_is_prefixed_and_logged(tmp_path, env, home):
    result = run_flowctl(
        ["run", "-e", "generate count=2 | exec sh -c 'echo warming up >&2; cat'"
                      " | discard"], env, timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    assert "[sh] warming up" in result.stderr.splitlines()
    logs = list((home / "runs").glob("*/sh.log"))
    assert len(logs) == 1
    assert logs[0].read_text() == "warming up\n"


def test_sigint_right_after_start_ends_at_once(tmp_path, env, home, spawned):
    errors = tmp_path / "stderr.txt"
    pipeline = write_pipeline(tmp_path / "p.yaml", """
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          supervisor: {drain_timeout: 60s}
          sources:
            - {id: numbers, stage: generate}
          processors:
            - {id: same, stage: map, config: {expr: r}, inputs: [numbers]}
          sinks:
            - {id: out, stage: discard, inputs: [same]}
        """)
    process = start_flowctl(["run", str(pipeline), "--no-live"], env,
                            spawned, errors)
    wait_until(lambda: "started pid" in errors.read_text(), timeout=HANG_GUARD)
    process.send_signal(signal.SIGINT)
    # Well below the drain timeout, because the readers of a source stopped
    # before its hello see the end of its output at once.
    process.wait(timeout=30)
    assert process.returncode == 130, errors.read_text()
    assert "drain timeout" not in errors.read_text()
    assert stage_processes(str(home)) == []
