"""A stream ends early the way a shell pipeline does: when a reader has
had enough, the stages before it stop quietly."""

from __future__ import annotations

import subprocess
import sys

from conftest import FLOWCTL, REPO, run_flowctl, stage_processes

HANG_GUARD = 60


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
