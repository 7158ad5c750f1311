"""flowctl and the terminal it was started from: a reader of its output
that goes away, standard streams that are closed at start, and SIGHUP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import (FLOWCTL, REPO, line_count, read_jsonl, run_flowctl,
                      stage_processes, wait_until, write_pipeline)

# Seconds after which a run or a command counts as hung.
HANG_GUARD = 60


def flowctl_json(args: list[str], env: dict):
    """Run a flowctl command that prints JSON and return the parsed output."""
    result = run_flowctl(args, env, timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def only_run(env: dict) -> dict:
    """Return the registry row of the one run in this test's home."""
    rows = flowctl_json(["runs", "--json"], env)
    assert len(rows) == 1, rows
    return rows[0]


def stage_counts(run_id: str, env: dict) -> dict[str, tuple[str, int, int]]:
    """Map each stage id to its final state, records in and records out."""
    snapshot = flowctl_json(["status", run_id, "--json"], env)[0]
    return {stage["id"]: (stage["state"], stage["records_in"],
                          stage["records_out"])
            for stage in snapshot["stages"]}


def run_with_closed(descriptor: str, args: list[str], env: dict,
                    spawned: list, stderr_path: Path | None = None
                    ) -> subprocess.Popen:
    """Start flowctl with one standard descriptor closed, as the shell
    redirections `<&-`, `>&-` and `2>&-` do.

    The descriptors that stay open go to /dev/null, except stderr, which
    goes to `stderr_path` when one is given.
    """
    with open(stderr_path or os.devnull, "w") as stderr:
        process = subprocess.Popen(
            ["sh", "-c", f'exec "$@" {descriptor}', "sh", *FLOWCTL, *args],
            env=env, cwd=REPO, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=stderr,
            start_new_session=True)
    spawned.append(process)
    return process


# A reader of flowctl's output that goes away


# Copies each line to its output, and to stderr with a prefix, so the run
# has stage stderr to show after the reader of flowctl's output is gone.
ECHO_STAGE = 'while read -r line; do echo "$line"; echo "seen $line" >&2; done'


def test_closed_output_pipe_keeps_run_going(tmp_path, env, home, spawned):
    out = tmp_path / "out.jsonl"
    pipeline = write_pipeline(tmp_path / "p.yaml", f"""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - {{id: lines, stage: read-lines, config: {{path: "-"}}}}
          processors:
            - id: echo
              shell: '{ECHO_STAGE}'
              codec: lines
              inputs: [lines]
          sinks:
            - {{id: out, stage: write-jsonl, config: {{path: {out}}},
                inputs: [echo]}}
        """)
    read_end, write_end = os.pipe()
    try:
        # As `flowctl run ... 2>&1 | head -3`: stdout and stderr share a
        # pipe, whose reader leaves after the first lines.
        process = subprocess.Popen(
            FLOWCTL + ["run", str(pipeline)], env=env, cwd=REPO,
            stdin=subprocess.PIPE, stdout=write_end, stderr=write_end,
            start_new_session=True)
        spawned.append(process)
        os.close(write_end)
        write_end = -1
        with os.fdopen(read_end, encoding="utf-8") as reader:
            read_end = -1
            first_lines = [reader.readline() for _ in range(3)]
        assert all(first_lines), first_lines

        # Every record enters after the reader has gone, so each event
        # and stderr line of the run meets the closed pipe.
        process.stdin.write(b"a\nb\nc\n")
        process.stdin.close()
        process.wait(timeout=HANG_GUARD)
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)

    assert process.returncode == 0
    assert read_jsonl(out) == [{"line": "a"}, {"line": "b"}, {"line": "c"}]
    run = only_run(env)
    assert run["state"] == "finished"
    assert run["exit_code"] == 0
    assert stage_counts(run["id"], env) == {
        "lines": ("finished", 0, 3),
        "echo": ("finished", 3, 3),
        "out": ("finished", 3, 0),
    }
    log = home / "runs" / run["id"] / "echo.log"
    assert log.read_text().splitlines() == ["seen a", "seen b", "seen c"]
    assert stage_processes(str(home)) == []


# Standard streams closed at start


def test_closed_stdout_discards_records(tmp_path, env, home, spawned):
    errors = tmp_path / "stderr.txt"
    process = run_with_closed(">&-", ["run", "-e", "generate count=3"],
                              env, spawned, errors)
    process.wait(timeout=HANG_GUARD)

    assert process.returncode == 0, errors.read_text()
    assert "Traceback" not in errors.read_text()
    run = only_run(env)
    assert run["state"] == "finished"
    assert run["exit_code"] == 0
    assert stage_counts(run["id"], env) == {
        "generate": ("finished", 0, 3),
        "write-jsonl": ("finished", 3, 0),
    }
    assert stage_processes(str(home)) == []


def test_closed_stdin_reads_as_empty(tmp_path, env, home, spawned):
    out = tmp_path / "out.jsonl"
    errors = tmp_path / "stderr.txt"
    process = run_with_closed(
        "<&-", ["run", "-e", f"read-lines path=- | write-jsonl path={out}"],
        env, spawned, errors)
    process.wait(timeout=HANG_GUARD)

    assert process.returncode == 0, errors.read_text()
    assert read_jsonl(out) == []
    run = only_run(env)
    assert run["state"] == "finished"
    assert run["exit_code"] == 0
    assert stage_counts(run["id"], env) == {
        "read-lines": ("finished", 0, 0),
        "write-jsonl": ("finished", 0, 0),
    }
    assert stage_processes(str(home)) == []


def test_closed_stderr_runs_silently(tmp_path, env, home, spawned):
    out = tmp_path / "out.jsonl"
    process = run_with_closed(
        "2>&-", ["run", "-e", f"generate count=3 | write-jsonl path={out}"],
        env, spawned)
    process.wait(timeout=HANG_GUARD)

    assert process.returncode == 0
    assert read_jsonl(out) == [{"seq": 0}, {"seq": 1}, {"seq": 2}]
    run = only_run(env)
    assert run["state"] == "finished"
    assert run["exit_code"] == 0
    assert stage_processes(str(home)) == []


# SIGHUP


@pytest.mark.parametrize("hangups", [1, 2])
def test_sighup_drains_and_exits_129(hangups, tmp_path, env, home, spawned):
    out = tmp_path / "out.jsonl"
    errors = tmp_path / "stderr.txt"
    with open(errors, "w") as stderr:
        process = subprocess.Popen(
            FLOWCTL + ["run", "-e", f"generate rate=2000 | map expr=r | "
                                    f"write-jsonl path={out}"],
            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr,
            start_new_session=True)
    spawned.append(process)
    wait_until(lambda: line_count(out) >= 200, timeout=HANG_GUARD)

    # A closing terminal may send SIGHUP twice: the second does not cut
    # the drain short as a second Ctrl-C would.
    for _ in range(hangups):
        process.send_signal(signal.SIGHUP)
    process.wait(timeout=HANG_GUARD)

    assert process.returncode == 129, errors.read_text()
    assert "second signal" not in errors.read_text()
    assert "SIGHUP received" in errors.read_text()
    run = only_run(env)
    assert run["state"] == "stopped"
    assert run["exit_code"] == 129
    # Drained, not cut: every record the source emitted reached the sink.
    final = stage_counts(run["id"], env)
    emitted = final["generate"][2]
    assert emitted >= 200
    assert read_jsonl(out) == [{"seq": seq} for seq in range(emitted)]
    assert final["map"] == ("finished", emitted, emitted)
    assert final["write-jsonl"] == ("finished", emitted, 0)
    assert stage_processes(str(home)) == []
