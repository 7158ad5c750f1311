"""A stream ends early the way a shell pipeline does: when a reader has
had enough, the stages before it stop quietly."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from conftest import (FLOWCTL, REPO, descendants, run_flowctl,
                      stage_processes, wait_until)

HANG_GUARD = 60


def run_into_head(expression: str, env: dict[str, str], spawned: list,
                  stderr_path: Path) -> tuple[subprocess.Popen, bytes]:
    """Start `flowctl run -e EXPRESSION | head -n 2` and return flowctl's
    Popen and what head printed, once head has exited.

    The test process keeps no end of the pipe open, so head is its only
    reader.
    flowctl's stderr goes to a file, which cannot fill up and block it.
    """
    read_end, write_end = os.pipe()
    try:
        with open(stderr_path, "wb") as stderr:
            flowctl = subprocess.Popen(
                FLOWCTL + ["run", "-e", expression], env=env, cwd=REPO,
                stdout=write_end, stderr=stderr)
        spawned.append(flowctl)
        head = subprocess.Popen(["head", "-n", "2"], stdin=read_end,
                                stdout=subprocess.PIPE)
        spawned.append(head)
    finally:
        os.close(read_end)
        os.close(write_end)
    printed, _ = head.communicate(timeout=HANG_GUARD)
    return flowctl, printed


def test_head_ends_an_endless_source(env, home):
    result = run_flowctl(["run", "-e", "generate | exec head -n 3"], env,
                         timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ['{"seq":0}', '{"seq":1}',
                                          '{"seq":2}']
    assert stage_processes(str(home)) == []


def test_head_as_processor_ends_run(env):
    result = run_flowctl(
        ["run", "-e", "generate | exec head -n 2 | map expr=r"], env,
        timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        '{"line":"{\\"seq\\":0}"}', '{"line":"{\\"seq\\":1}"}']


def test_program_dying_mid_stream_fails_at_once(env):
    result = run_flowctl(
        ["run", "-e", "generate rate=1000 | exec sh -c 'head -n 3; exit 5' "
                      "| discard"], env, timeout=HANG_GUARD)
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("flowctl: stage 'sh' failed: command 'sh' "
                              "exited with code 5; see ")


def test_stdout_closed_by_head_is_not_failure(env):
    command = FLOWCTL + ["run", "-e", "generate | write-jsonl path=-"]
    with subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as flowctl:
        head = subprocess.run(["head", "-n", "2"], stdin=flowctl.stdout,
                              capture_output=True, timeout=HANG_GUARD)
        flowctl.stdout.close()
        _, stderr = flowctl.communicate(timeout=HANG_GUARD)
    assert head.stdout == b'{"seq":0}\n{"seq":1}\n'
    assert flowctl.returncode == 0, stderr.decode()


@pytest.mark.parametrize("expression, lines", [
    ("generate | exec cat", b'{"seq":0}\n{"seq":1}\n'),
    ("generate | exec --codec csv cat", b"seq\n0\n"),
    pytest.param(
        "generate | exec jq -c .", b'{"seq":0}\n{"seq":1}\n',
        marks=pytest.mark.skipif(shutil.which("jq") is None,
                                 reason="jq is not installed")),
], ids=["lines-cat", "csv-cat", "jsonl-jq"])
def test_exec_sink_stdout_closed_by_head(expression, lines, env, home,
                                         tmp_path, spawned):
    stderr_path = tmp_path / "flowctl.stderr"
    flowctl, printed = run_into_head(expression, env, spawned, stderr_path)
    flowctl.wait(timeout=HANG_GUARD)
    stderr = stderr_path.read_text()
    assert printed == lines
    assert flowctl.returncode == 0, stderr
    assert [line for line in stderr.splitlines()
            if line.startswith("flowctl:")] == []
    assert stage_processes(str(home)) == []


def test_processor_sigpipe_fails_run(env, home, tmp_path, spawned):
    # The processor's program is killed by SIGPIPE after head has exited,
    # so flowctl's stdout has no reader either.  The run must still fail,
    # because the processor's stdout is not flowctl's stdout.
    stderr_path = tmp_path / "flowctl.stderr"
    flowctl, printed = run_into_head(
        "generate count=2 | exec sh -c 'cat; exec sleep 600' | exec cat",
        env, spawned, stderr_path)
    assert printed == b'{"seq":0}\n{"seq":1}\n'

    def find_sleep() -> list[psutil.Process]:
        found = []
        for process in descendants(flowctl.pid):
            try:
                if process.name() == "sleep":
                    found.append(process)
            except psutil.NoSuchProcess:
                pass
        return found

    processor_program, = wait_until(find_sleep, timeout=HANG_GUARD)
    processor_program.send_signal(signal.SIGPIPE)
    flowctl.wait(timeout=HANG_GUARD)
    stderr = stderr_path.read_text()
    assert flowctl.returncode == 1, stderr
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("flowctl: stage 'sh' failed: command 'sh' "
                              "was killed by signal 13; see "), stderr
    assert stage_processes(str(home)) == []


def test_builtins_ignore_checkout_in_cwd(tmp_path, env):
    # A directory named flowctl in the working directory, as in a checkout
    # of flowctl, must not hide the installed package from the stages.
    decoy = tmp_path / "flowctl"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise ImportError('decoy')\n")
    result = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.remove(sys.path[0]) "
         "if sys.path[0] in ('', '.') else None; from flowctl.cli import "
         "main; main()", "run", "-e", "generate count=2 | map expr=r"],
        env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ['{"seq":0}', '{"seq":1}']
