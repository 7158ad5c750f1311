"""Checkpointed runs: recovery of single stages, fan-in alignment, user
stages, foreign stages, resuming, and source files that changed."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import psutil
import pytest

from conftest import (FLOWCTL, STAGES, read_jsonl, run_flowctl,
                      stage_processes, wait_until)
from flowctl.checkpoints.config import CheckpointConfig
from flowctl.checkpoints.coordinator import Coordinator
from flowctl.checkpoints.local import LocalStorage
from flowctl.pipeline import Pipeline

# Enough lines that the source is still reading when checkpoints are
# taken: the pipes between stages hold about a megabyte each.
LINES = 300000

SETTINGS = """
apiVersion: flowctl/v1
kind: Pipeline
metadata: {name: checkpointed}
spec:
  checkpoint: {interval: 0.2s, directory: ck, retain: 5}
  supervisor:
    restart: {backoff: {initial: 0.1s, jitter: 0}, max_restarts: 20}
"""


def write_stages(directory: Path, stages: str) -> None:
    """Write pipeline.yaml: SETTINGS and the given stage sections."""
    text = SETTINGS + textwrap.indent(textwrap.dedent(stages), "  ")
    (directory / "pipeline.yaml").write_text(text)


def complete_checkpoints(directory: Path) -> list[str]:
    return sorted(path.parent.name
                  for path in (directory / "ck").glob("*/manifest.json"))


def newest_checkpoint(directory: Path) -> int:
    found = complete_checkpoints(directory)
    return int(found[-1]) if found else 0


def stage_process(home: Path, stage_id: str) -> psutil.Process | None:
    for process in stage_processes(str(home)):
        try:
            if process.environ().get("FLOWCTL_STAGE_ID") == stage_id:
                return process
        except psutil.NoSuchProcess:
            continue
    return None


def start(directory: Path, env: dict[str, str], spawned: list,
          *extra: str) -> subprocess.Popen:
    process = subprocess.Popen(
        FLOWCTL + ["run", "pipeline.yaml", "--no-live", *extra],
        cwd=directory, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    spawned.append(process)
    return process


def kill_stage_after_checkpoints(directory: Path, home: Path, stage_id: str,
                                 count: int) -> None:
    """SIGKILL a stage once `count` more checkpoints are complete."""
    wanted = newest_checkpoint(directory) + count
    wait_until(lambda: newest_checkpoint(directory) >= wanted, 60)
    process = wait_until(lambda: stage_process(home, stage_id), 30)
    process.kill()


def test_csv_sink_exact_after_kills(tmp_path, env, home, spawned):
    write_stages(tmp_path, """
      sources:
        - {id: numbers, stage: generate, config: {count: 30000, rate: 15000}}
      processors:
        - {id: square, stage: map, inputs: [numbers],
           config: {expr: "{'n': r['seq'], 'square': r['seq'] ** 2}"}}
      sinks:
        - {id: table, stage: write-csv, inputs: [square],
           config: {path: out.csv}}
    """)
    process = start(tmp_path, env, spawned)
    kill_stage_after_checkpoints(tmp_path, home, "table", 2)
    kill_stage_after_checkpoints(tmp_path, home, "square", 2)
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == 0, stderr
    assert stderr.count("restarting every stage from checkpoint") == 2
    with open(tmp_path / "out.csv", newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["n", "square"]
    assert rows[1:] == [[str(n), str(n * n)] for n in range(30000)]
    assert not (tmp_path / ".out.csv.flowctl").exists()


def test_fan_in_aligns_barriers(tmp_path, env, home, spawned):
    write_stages(tmp_path, """
      sources:
        - {id: evens, stage: generate, config: {count: 20000, rate: 10000}}
        - {id: odds, stage: generate, config: {count: 20000, rate: 7000}}
      processors:
        - {id: tag-evens, stage: map, inputs: [evens],
           config: {expr: "{'n': r['seq'] * 2}"}}
        - {id: tag-odds, stage: map, inputs: [odds],
           config: {expr: "{'n': r['seq'] * 2 + 1}"}}
      sinks:
        - {id: merged, stage: write-jsonl, inputs: [tag-evens, tag-odds],
           config: {path: out.jsonl}}
    """)
    process = start(tmp_path, env, spawned)
    kill_stage_after_checkpoints(tmp_path, home, "merged", 2)
    kill_stage_after_checkpoints(tmp_path, home, "odds", 2)
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == 0, stderr
    numbers = [record["n"] for record in read_jsonl(tmp_path / "out.jsonl")]
    assert Counter(numbers) == Counter(range(40000))
    assert [n for n in numbers if n % 2 == 0] == list(range(0, 40000, 2))
    assert [n for n in numbers if n % 2 == 1] == list(range(1, 40000, 2))


def test_user_stage_state_survives_recovery(tmp_path, env, home, spawned):
    write_stages(tmp_path, f"""
      sources:
        - {{id: numbers, stage: generate, config: {{count: 20000, rate: 10000}}}}
      processors:
        - {{id: sum, command: [{sys.executable}, {STAGES / 'running_sum.py'}],
           inputs: [numbers]}}
      sinks:
        - {{id: out, stage: write-jsonl, inputs: [sum],
           config: {{path: out.jsonl}}}}
    """)
    process = start(tmp_path, env, spawned)
    kill_stage_after_checkpoints(tmp_path, home, "sum", 2)
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == 0, stderr
    assert "restarting every stage from checkpoint" in stderr
    records = read_jsonl(tmp_path / "out.jsonl")
    assert records == [{"seq": n, "sum": n * (n + 1) // 2}
                       for n in range(20000)]


def test_foreign_stage_forwards_barriers(tmp_path, env, home, spawned):
    write_stages(tmp_path, f"""
      sources:
        - {{id: numbers, stage: generate, config: {{count: 20000, rate: 10000}}}}
      processors:
        - {{id: double, command: [{sys.executable}, {STAGES / 'foreign_stage.py'}],
           config: {{field: seq}}, inputs: [numbers]}}
      sinks:
        - {{id: out, stage: write-jsonl, inputs: [double],
           config: {{path: out.jsonl}}}}
    """)
    process = start(tmp_path, env, spawned)
    kill_stage_after_checkpoints(tmp_path, home, "out", 2)
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == 0, stderr
    assert "timed out" not in stderr
    assert read_jsonl(tmp_path / "out.jsonl") == [
        {"seq": 2 * n} for n in range(20000)]


def lines_pipeline(tmp_path: Path) -> None:
    write_stages(tmp_path, """
      sources:
        - {id: lines, stage: read-lines, config: {path: in.txt}}
      processors:
        - {id: slow, stage: map, inputs: [lines],
           config: {expr: "__import__('time').sleep(0.00001) or r"}}
      sinks:
        - {id: out, stage: write-jsonl, inputs: [slow],
           config: {path: out.jsonl}}
    """)


def stop_after_checkpoints(tmp_path: Path, env: dict[str, str],
                           spawned: list) -> None:
    process = start(tmp_path, env, spawned)
    wait_until(lambda: newest_checkpoint(tmp_path) >= 2, 60)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_resume_after_flowctl_killed(tmp_path, env, spawned):
    lines = [f"line {n}" for n in range(LINES)]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    lines_pipeline(tmp_path)
    stop_after_checkpoints(tmp_path, env, spawned)

    result = run_flowctl(["run", "pipeline.yaml", "--resume", "--no-live"],
                         env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "resuming from checkpoint" in result.stderr
    assert read_jsonl(tmp_path / "out.jsonl") == [{"line": line}
                                                 for line in lines]


def test_resume_rejects_replaced_source_file(tmp_path, env, spawned):
    (tmp_path / "in.txt").write_text(
        "".join(f"line {n}\n" for n in range(LINES)))
    lines_pipeline(tmp_path)
    stop_after_checkpoints(tmp_path, env, spawned)
    (tmp_path / "in.txt").write_text(
        "".join(f"other {n}\n" for n in range(LINES)))

    result = run_flowctl(["run", "pipeline.yaml", "--resume", "--no-live"],
                         env, cwd=tmp_path)

    assert result.returncode == 1
    assert "stage 'lines' failed at start" in result.stderr
    assert "in.txt is not the file the checkpoint read" in result.stderr
    assert "Traceback" not in result.stderr


def test_resume_rejects_truncated_source_file(tmp_path, env, spawned):
    (tmp_path / "in.txt").write_text(
        "".join(f"line {n}\n" for n in range(LINES)))
    lines_pipeline(tmp_path)
    stop_after_checkpoints(tmp_path, env, spawned)
    with open(tmp_path / "in.txt", "r+") as file:
        file.truncate(100)

    result = run_flowctl(["run", "pipeline.yaml", "--resume", "--no-live"],
                         env, cwd=tmp_path)

    assert result.returncode == 1
    assert "in.txt was truncated: it has 100 bytes" in result.stderr
    assert "Traceback" not in result.stderr


def test_resume_of_finished_run_adds_nothing(tmp_path, env):
    (tmp_path / "in.txt").write_text("".join(f"{n}\n" for n in range(500)))
    lines_pipeline(tmp_path)
    first = run_flowctl(["run", "pipeline.yaml", "--no-live"], env,
                        cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    final = complete_checkpoints(tmp_path)[-1]

    again = run_flowctl(["run", "pipeline.yaml", "--resume", "--no-live"],
                        env, cwd=tmp_path)

    assert again.returncode == 0, again.stderr
    assert f"resuming from the final checkpoint {final}" in again.stderr
    assert read_jsonl(tmp_path / "out.jsonl") == [{"line": str(n)}
                                                 for n in range(500)]


def test_resume_without_checkpointing_is_usage_error(tmp_path, env):
    result = run_flowctl(["run", "-e", "generate count=3 | discard",
                          "--resume"], env, cwd=tmp_path)

    assert result.returncode == 2
    assert "--resume and --from need checkpointing" in result.stderr


def test_adaptive_interval_follows_cost(tmp_path):
    config = CheckpointConfig(enabled=True, strategy="adaptive", interval=30)
    config.adaptive.min_interval = 1.0
    config.adaptive.max_interval = 60.0
    config.adaptive.target_share = 0.1
    coordinator = Coordinator(config, LocalStorage(str(tmp_path)),
                              Pipeline(name="p", source="-", stages=[]), "run")

    assert coordinator.interval == 30
    coordinator._measure(0.5)
    assert coordinator.interval == pytest.approx(5.0)
    coordinator._measure(0.5 + 10 / 0.3)
    assert coordinator.interval == 60.0
    coordinator.cost = 0.01
    assert coordinator.interval == 1.0


def test_checkpoint_directory_used_by_one_run(tmp_path, env, spawned):
    first = subprocess.Popen(
        FLOWCTL + ["run", "-e", "generate rate=1000 | discard",
                   "--checkpoint-dir", "ck", "--no-live"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    spawned.append(first)
    wait_until(lambda: (tmp_path / "ck" / ".lock").exists()
               and (tmp_path / "ck" / ".lock").read_text())

    second = run_flowctl(["run", "-e", "generate count=3 | discard",
                          "--checkpoint-dir", "ck", "--no-live"], env,
                         cwd=tmp_path)

    assert second.returncode == 2
    assert second.stderr == (
        f"flowctl: the checkpoint directory {tmp_path / 'ck'} is in use by "
        f"another flowctl run (pid {first.pid}); give this run its own "
        f"directory\n")


def test_resume_of_finished_run_skips_programs(tmp_path, env):
    (tmp_path / "in.txt").write_text("a\nb\nc\n")
    arguments = ["run", "-e", "exec seq 3 | write-jsonl path=numbers.jsonl",
                 "--checkpoint-dir", "ck1", "--no-live"]
    counting = ["run", "-e", "read-lines path=in.txt | exec wc -l "
                "| write-jsonl path=count.jsonl",
                "--checkpoint-dir", "ck2", "--no-live"]
    for args in (arguments, counting):
        first = run_flowctl(args, env, cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        again = run_flowctl(args + ["--resume"], env, cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert "resuming from the final checkpoint" in again.stderr

    assert read_jsonl(tmp_path / "numbers.jsonl") == [
        {"line": "1"}, {"line": "2"}, {"line": "3"}]
    assert read_jsonl(tmp_path / "count.jsonl") == [{"line": "3"}]


def test_other_directories_are_left_alone(tmp_path, env):
    checkpoints = tmp_path / "ck"
    (checkpoints / ".git").mkdir(parents=True)
    (checkpoints / ".git" / "HEAD").write_text("ref\n")
    (checkpoints / "backup").mkdir()
    (tmp_path / "in.txt").write_text("".join(f"{n}\n" for n in range(LINES)))
    lines_pipeline(tmp_path)

    result = run_flowctl(["run", "pipeline.yaml", "--no-live"], env,
                         cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert (checkpoints / ".git" / "HEAD").read_text() == "ref\n"
    assert (checkpoints / "backup").is_dir()
    listing = run_flowctl(["checkpoint", "list", "ck"], env, cwd=tmp_path)
    assert "backup" not in listing.stdout
    assert ".git" not in listing.stdout


def test_checkpoint_ids_sort_as_numbers(tmp_path, env, spawned):
    (tmp_path / "in.txt").write_text("".join(f"{n}\n" for n in range(LINES)))
    lines_pipeline(tmp_path)
    stop_after_checkpoints(tmp_path, env, spawned)
    newest = complete_checkpoints(tmp_path)[-1]
    manifest = json.loads((tmp_path / "ck" / newest / "manifest.json")
                          .read_text())
    for name in complete_checkpoints(tmp_path):
        if name != newest:
            subprocess.run(["rm", "-r", str(tmp_path / "ck" / name)],
                           check=True)
    manifest["id"] = "999999"
    (tmp_path / "ck" / newest).rename(tmp_path / "ck" / "999999")
    (tmp_path / "ck" / "999999" / "manifest.json").write_text(
        json.dumps(manifest))

    result = run_flowctl(["run", "pipeline.yaml", "--resume", "--no-live"],
                         env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "resuming from checkpoint 999999" in result.stderr
    final = complete_checkpoints(tmp_path)
    assert max(final, key=int) == str(max(int(name) for name in final))
    assert int(max(final, key=int)) >= 1000000
    assert read_jsonl(tmp_path / "out.jsonl") == [{"line": str(n)}
                                                 for n in range(LINES)]


def test_sink_killed_in_final_commit_recovers(tmp_path, env):
    result = run_flowctl(["run", "-e",
                          "generate count=10 | write-jsonl path=out.jsonl",
                          "--checkpoint-dir", "ck", "--no-live"],
                         {**env, "FLOWCTL_FAULT": "commit@write-jsonl#1"},
                         cwd=tmp_path, timeout=60)

    assert result.returncode == 0, result.stderr
    assert "restarting every stage from checkpoint 000001" in result.stderr
    assert read_jsonl(tmp_path / "out.jsonl") == [{"seq": n}
                                                 for n in range(10)]


def test_timeout_names_stage_holding_barrier(tmp_path, env, spawned):
    (tmp_path / "pipeline.yaml").write_text(textwrap.dedent(f"""
        apiVersion: flowctl/v1
        kind: Pipeline
        metadata: {{name: stuck}}
        spec:
          checkpoint: {{interval: 0.2s, directory: ck,
                       barriers: {{timeout: 1s}}}}
          sources:
            - {{id: numbers, stage: generate, config: {{rate: 2000}}}}
          processors:
            - id: stuck
              command: [{sys.executable}, {STAGES / 'crasher.py'}]
              env: {{MODE: hang, CRASHES: "1", AFTER: "3000",
                     STATE_FILE: {tmp_path / 'state'}}}
              inputs: [numbers]
            - {{id: same, stage: map, config: {{expr: r}}, inputs: [stuck]}}
          sinks:
            - {{id: out, stage: discard, inputs: [same]}}
        """))
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            FLOWCTL + ["run", "pipeline.yaml", "--no-live"], cwd=tmp_path,
            env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    spawned.append(process)
    try:
        wait_until(lambda: "timed out" in log.read_text(), 30)
    finally:
        process.kill()
        process.wait()

    (line,) = [text for text in log.read_text().splitlines()
               if "timed out" in text][:1]
    assert line.endswith("waiting for stage 'stuck'; it is abandoned")
