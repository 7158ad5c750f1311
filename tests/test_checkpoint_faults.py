"""Checkpoints under faults: kills at every FLOWCTL_FAULT hook, damaged
parts, a full disk, a stop by SIGINT, a changed stateful stage, and
recovery mode manual.

Every case runs the real `flowctl run` on one pipeline whose output is
known exactly: generate emits {"seq": 0} .. {"seq": RECORDS - 1}, map adds
bucket = seq % 7, and three sinks write the map output to a SQLite table
and a JSONL file and the per-bucket counts of count-by to another JSONL
file.  After any fault and resume, each sink must hold every record once,
in order.
"""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import (FLOWCTL, read_jsonl, stage_processes, wait_until,
                      write_pipeline)
from flowctl.checkpoints.local import LocalStorage
from flowctl.checkpoints.manifest import Manifest, checkpoint_name
from flowctl.checkpoints.recovery import verify
from flowctl.checkpoints.storage import CheckpointInfo

RECORDS = 20000
BUCKETS = 7
# Records per second from generate: a run takes about 2 s, long enough for
# several checkpoints at the 0.2 s interval.
RATE = 10000
# Seconds any single flowctl run or wait may take before the test calls it
# a hang: about 4 times the longest run here.
RUN_TIMEOUT = 15
# `#3` kills the third time a hook's point is reached.  For every hook
# below, that is during checkpoint 3.
KILLED_NUMBER = 3
CHECKPOINT_DIR = "ck"
USE_PREVIOUS = "{strategy: {corrupted: use-previous}}"

STAGE_FAULTS = [
    ("save@map#3", "map"),
    ("save@count#3", "count"),
    ("prepared@db#3", "db"),
    ("commit@db#3", "db"),
    ("commit@out#3", "out"),
]
# The orchestrator's hooks need `@flowctl` before `#N`, because faults.py
# parses `parts#3` as a point named "parts#3", which never fires.
ORCHESTRATOR_FAULTS = ["parts@flowctl#3", "manifest@flowctl#3",
                       "published@flowctl#3"]


# The pipeline and its expected output

def write_faults_pipeline(directory: Path, recovery: str = USE_PREVIOUS,
                          count_key: str = "bucket",
                          restart_policy: str = "", rate: int = RATE) -> Path:
    """Write the pipeline file; paths in it are relative to `directory`."""
    policy = f"policy: {restart_policy}, " if restart_policy else ""
    return write_pipeline(directory / "p.yaml", f"""
        apiVersion: flowctl/v1
        kind: Pipeline
        metadata:
          name: faults
        spec:
          checkpoint:
            interval: 0.2s
            directory: {CHECKPOINT_DIR}
            retain: 50
            recovery: {recovery}
          supervisor:
            restart: {{{policy}backoff: {{initial: 0.1s, jitter: 0}},
                      max_restarts: 50}}
          sources:
            - {{id: gen, stage: generate,
                config: {{count: {RECORDS}, rate: {rate}}}}}
          processors:
            - {{id: map, stage: map,
                config: {{expr: "dict(r, bucket=r['seq'] % {BUCKETS})"}},
                inputs: [gen]}}
            - {{id: count, stage: count-by, config: {{key: {count_key}}},
                inputs: [map]}}
          sinks:
            - {{id: db, stage: write-sqlite,
                config: {{path: out.db, table: t}}, inputs: [map]}}
            - {{id: counts, stage: write-jsonl,
                config: {{path: counts.jsonl}}, inputs: [count]}}
            - {{id: out, stage: write-jsonl, config: {{path: out.jsonl}},
                inputs: [map]}}
        """)


def expected_counts() -> list[dict[str, int]]:
    return [{"key": bucket, "count": len(range(bucket, RECORDS, BUCKETS))}
            for bucket in range(BUCKETS)]


def assert_map_output_exact(directory: Path) -> None:
    """Check both sinks of the map output: every record once, in order."""
    expected = [{"seq": seq, "bucket": seq % BUCKETS}
                for seq in range(RECORDS)]
    assert read_jsonl(directory / "out.jsonl") == expected
    with sqlite3.connect(directory / "out.db") as connection:
        rows = connection.execute(
            "SELECT seq, bucket FROM t ORDER BY rowid").fetchall()
    assert rows == [(record["seq"], record["bucket"]) for record in expected]


def assert_output_exact(directory: Path) -> None:
    assert_map_output_exact(directory)
    assert read_jsonl(directory / "counts.jsonl") == expected_counts()


# Running flowctl

def start(directory: Path, args: list[str], env: dict[str, str],
          spawned: list, log_name: str,
          fault: str | None = None) -> tuple[subprocess.Popen, Path]:
    """Start flowctl in `directory`, its stderr going to a file there."""
    environment = dict(env)
    environment.pop("FLOWCTL_FAULT", None)
    if fault is not None:
        environment["FLOWCTL_FAULT"] = fault
    log = directory / log_name
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            FLOWCTL + args + ["--no-live"], env=environment, cwd=directory,
            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    spawned.append(process)
    return process, log


def run_to_end(directory: Path, args: list[str], env: dict[str, str],
               spawned: list, log_name: str,
               fault: str | None = None) -> tuple[int, str]:
    """Run flowctl until it exits; return its exit status and stderr."""
    process, log = start(directory, args, env, spawned, log_name, fault)
    try:
        code = process.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"flowctl {' '.join(args)} did not finish within "
                             f"{RUN_TIMEOUT}s; stderr:\n{log.read_text()}")
    return code, log.read_text()


def wait_for_stages_gone(home: Path) -> None:
    wait_until(lambda: stage_processes(str(home)) == [], timeout=RUN_TIMEOUT)


def kill_flowctl(process: subprocess.Popen, home: Path) -> None:
    """SIGKILL flowctl, as a power cut would, and wait for its stages."""
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=RUN_TIMEOUT)
    wait_for_stages_gone(home)


# Reading the checkpoint directory

def storage_in(directory: Path) -> LocalStorage:
    return LocalStorage(str(directory / CHECKPOINT_DIR))


# Listings retried before a test gives up on a checkpoint directory.
LISTING_ATTEMPTS = 100


def list_checkpoints(storage: LocalStorage) -> list[CheckpointInfo]:
    """List the checkpoints, also while a running flowctl changes them."""
    # NOTE: LocalStorage.list_checkpoints raises FileNotFoundError when a
    # file or directory it scans is renamed or removed during the scan
    # (test_listing_during_writes_succeeds), so the listing is retried.
    for _ in range(LISTING_ATTEMPTS - 1):
        try:
            return storage.list_checkpoints()
        except FileNotFoundError:
            continue
    return storage.list_checkpoints()


def complete(storage: LocalStorage) -> list[CheckpointInfo]:
    return [info for info in list_checkpoints(storage)
            if info.state == "complete"]


def partial_ids(storage: LocalStorage) -> list[str]:
    return [info.id for info in list_checkpoints(storage)
            if info.state == "partial"]


def wait_for_complete(storage: LocalStorage, count: int,
                      log: Path) -> list[CheckpointInfo]:
    """Wait until `count` non-final checkpoints are complete."""
    def enough() -> list[CheckpointInfo] | None:
        found = complete(storage)
        if any(info.manifest.final for info in found):
            raise AssertionError(f"the run ended before {count} checkpoints; "
                                 f"stderr:\n{log.read_text()}")
        return found if len(found) >= count else None
    return wait_until(enough, timeout=RUN_TIMEOUT)


def stopped_run(directory: Path, env: dict[str, str], home: Path,
                spawned: list) -> CheckpointInfo:
    """Start a run, SIGKILL flowctl once 3 checkpoints are complete, and
    return the newest complete checkpoint it left."""
    process, log = start(directory, ["run", "p.yaml"], env, spawned,
                         "first.log")
    storage = storage_in(directory)
    wait_for_complete(storage, 3, log)
    kill_flowctl(process, home)
    return complete(storage)[-1]


# 1. Kills at each fault hook

@pytest.mark.slow
@pytest.mark.parametrize("fault, stage_id", STAGE_FAULTS)
def test_stage_killed_at_hook_recovers_exactly(tmp_path, env, spawned,
                                               fault, stage_id):
    write_faults_pipeline(tmp_path)
    code, errors = run_to_end(tmp_path, ["run", "p.yaml"], env, spawned,
                              "run.log", fault=fault)
    assert code == 0, errors
    assert f"stage={stage_id} was killed by signal SIGKILL (restart 1)" \
        in errors
    recoveries = [line for line in errors.splitlines()
                  if "restarting every stage from checkpoint" in line]
    assert len(recoveries) == 1, errors
    # The checkpoint the stages restarted from is still whole afterwards.
    restored_id = recoveries[0].split("from checkpoint ")[1].split()[0]
    storage = storage_in(tmp_path)
    restored = [info for info in list_checkpoints(storage)
                if info.id == restored_id]
    assert len(restored) == 1
    assert verify(storage, restored[0]) == []
    assert partial_ids(storage) == []
    assert_output_exact(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ORCHESTRATOR_FAULTS)
def test_flowctl_killed_at_hook_resumes_exactly(tmp_path, env, home, spawned,
                                                fault):
    write_faults_pipeline(tmp_path)
    code, errors = run_to_end(tmp_path, ["run", "p.yaml"], env, spawned,
                              "first.log", fault=fault)
    assert code == -signal.SIGKILL, errors
    wait_for_stages_gone(home)

    storage = storage_in(tmp_path)
    killed_id = checkpoint_name(KILLED_NUMBER)
    previous_id = checkpoint_name(KILLED_NUMBER - 1)
    newest = complete(storage)[-1]
    if fault.startswith("published"):
        # The manifest was stored before the kill, so the killed checkpoint
        # is complete.  Only its commit to the sinks is missing.
        assert newest.id == killed_id
        assert partial_ids(storage) == []
    else:
        assert newest.id == previous_id
        assert partial_ids(storage) == [killed_id]
    assert verify(storage, newest) == []

    code, errors = run_to_end(tmp_path, ["run", "p.yaml", "--resume"], env,
                              spawned, "resume.log")
    assert code == 0, errors
    if not fault.startswith("published"):
        assert (f"checkpoint {killed_id} in {storage.location} is partial"
                in errors)
        assert "it is skipped (recovery.strategy.partial: best-effort)" \
            in errors
    assert f"resuming from checkpoint {newest.id} " in errors
    assert_output_exact(tmp_path)


@pytest.mark.slow
def test_resume_from_final_checkpoint_ends(tmp_path, env, spawned):
    # A kill after the final checkpoint was stored leaves a run whose
    # resume has nothing left to do, so it must end with the output intact.
    write_faults_pipeline(tmp_path)
    code, errors = run_to_end(tmp_path, ["run", "p.yaml"], env, spawned,
                              "first.log")
    assert code == 0, errors
    code, errors = run_to_end(tmp_path, ["run", "p.yaml", "--resume"], env,
                              spawned, "resume.log")
    assert "resuming from the final checkpoint" in errors
    assert code == 0, errors
    assert_output_exact(tmp_path)


# 2. Damaged parts

DAMAGED_PART = "count.state"
# Each damage changes the part file and returns the problem that
# `recovery.verify` reports for it.


def truncate(path: Path) -> str:
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    return f"part '{DAMAGED_PART}' is truncated or extended: " \
           f"{len(data) - 1} bytes, the manifest says {len(data)}"


def flip_bit(path: Path) -> str:
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01
    path.write_bytes(bytes(data))
    return f"part '{DAMAGED_PART}' is corrupted: its SHA-256 checksum does " \
           f"not match the manifest"


def delete(path: Path) -> str:
    path.unlink()
    return f"part '{DAMAGED_PART}' cannot be read"


DAMAGES = {"truncate": truncate, "flip-bit": flip_bit, "delete": delete}


@pytest.mark.slow
@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_part_use_previous_resumes(tmp_path, env, home, spawned,
                                           damage):
    write_faults_pipeline(tmp_path)
    newest = stopped_run(tmp_path, env, home, spawned)
    storage = storage_in(tmp_path)
    previous = complete(storage)[-2]
    problem = DAMAGES[damage](tmp_path / CHECKPOINT_DIR / newest.id
                              / DAMAGED_PART)

    code, errors = run_to_end(tmp_path, ["run", "p.yaml", "--resume"], env,
                              spawned, "resume.log")
    assert code == 0, errors
    assert f"checkpoint {newest.id} in {storage.location} is damaged: " \
        f"{problem}" in errors
    assert "trying the previous checkpoint (recovery.strategy.corrupted: " \
        "use-previous)" in errors
    assert f"resuming from checkpoint {previous.id} " in errors
    assert_output_exact(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_part_fail_exits_2(tmp_path, env, home, spawned, damage):
    write_faults_pipeline(tmp_path, recovery="{strategy: {corrupted: fail}}")
    newest = stopped_run(tmp_path, env, home, spawned)
    storage = storage_in(tmp_path)
    problem = DAMAGES[damage](tmp_path / CHECKPOINT_DIR / newest.id
                              / DAMAGED_PART)

    code, errors = run_to_end(tmp_path, ["run", "p.yaml", "--resume"], env,
                              spawned, "resume.log")
    assert code == 2, errors
    assert f"flowctl: cannot resume: checkpoint {newest.id} in " \
        f"{storage.location} is damaged: {problem}" in errors
    assert stage_processes(str(home)) == []


# 3. Full disk

@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs mounted as the checkpoint directory (needs root)."""
    mount_point = tmp_path / CHECKPOINT_DIR
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs",
         str(mount_point)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {result.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def fill(directory: Path) -> Path:
    """Write a file into `directory` until its file system is full."""
    path = directory / "filler"
    block = b"\0" * 4096
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, block)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    return path


@pytest.mark.slow
def test_full_disk_fails_checkpoint_only(tmp_path, env, small_tmpfs,
                                         spawned):
    # small_tmpfs comes before spawned, so its unmount runs after spawned
    # has killed what the test left running.

    # Half the rate: about 4 s, time to fill the disk and free it again.
    write_faults_pipeline(tmp_path, rate=RATE // 2)
    process, log = start(tmp_path, ["run", "p.yaml"], env, spawned,
                         "run.log")
    storage = storage_in(tmp_path)
    wait_for_complete(storage, 2, log)
    filler = fill(small_tmpfs)

    wait_until(lambda: "checkpoint failed:" in log.read_text(),
               timeout=RUN_TIMEOUT)
    failures = [line for line in log.read_text().splitlines()
                if "checkpoint failed:" in line]
    newest = complete(storage)[-1]
    assert "no space left on the device" in failures[0]
    assert f"the run goes on, and the newest complete checkpoint is still " \
        f"{newest.id}" in failures[0]
    assert verify(storage, newest) == []
    filler.unlink()

    code = process.wait(timeout=RUN_TIMEOUT)
    errors = log.read_text()
    assert code == 0, errors
    assert "final checkpoint" in errors
    # A failed checkpoint leaves no directory behind.
    assert partial_ids(storage) == []
    for info in complete(storage):
        assert verify(storage, info) == [], info.id
    assert_output_exact(tmp_path)


# 4. A checkpoint before stopping

@pytest.mark.slow
def test_sigint_takes_checkpoint_then_resumes(tmp_path, env, home, spawned):
    write_faults_pipeline(tmp_path)
    process, log = start(tmp_path, ["run", "p.yaml"], env, spawned,
                         "first.log")
    storage = storage_in(tmp_path)
    before = wait_for_complete(storage, 2, log)[-1]
    os.kill(process.pid, signal.SIGINT)
    code = process.wait(timeout=RUN_TIMEOUT)
    wait_for_stages_gone(home)
    errors = log.read_text()
    assert code == 130, errors

    lines = errors.splitlines()
    announced = [index for index, line in enumerate(lines)
                 if "taking a checkpoint before stopping" in line]
    assert len(announced) == 1, errors
    stored = [line for line in lines[announced[0]:]
              if " stored in " in line]
    assert len(stored) == 1, errors
    newest = complete(storage)[-1]
    assert f"checkpoint {newest.id} stored in" in stored[0]
    assert newest.id > before.id
    assert not newest.manifest.final
    assert verify(storage, newest) == []
    assert partial_ids(storage) == []

    code, errors = run_to_end(tmp_path, ["run", "p.yaml", "--resume"], env,
                              spawned, "resume.log")
    assert code == 0, errors
    assert f"resuming from checkpoint {newest.id} " in errors
    assert_output_exact(tmp_path)


# 5. A stateful stage changed between runs

CHANGE = "config key 'key' changed from 'bucket' to 'seq'"


@pytest.mark.slow
def test_changed_stage_manual_mode_rejects_resume(tmp_path, env, home,
                                                  spawned):
    write_faults_pipeline(tmp_path, recovery="{mode: manual}")
    newest = stopped_run(tmp_path, env, home, spawned)
    write_faults_pipeline(tmp_path, recovery="{mode: manual}",
                          count_key="seq")

    code, errors = run_to_end(tmp_path, ["run", "p.yaml", "--resume"], env,
                              spawned, "resume.log")
    assert code == 2, errors
    assert f"stage 'count' changed since checkpoint {newest.id}: {CHANGE}" \
        in errors
    assert "With recovery.mode: manual the run does not resume" in errors
    assert stage_processes(str(home)) == []


@pytest.mark.slow
def test_changed_stage_auto_mode_starts_it_fresh(tmp_path, env, home,
                                                 spawned):
    write_faults_pipeline(tmp_path)
    newest = stopped_run(tmp_path, env, home, spawned)
    write_faults_pipeline(tmp_path, count_key="seq")

    code, errors = run_to_end(tmp_path, ["run", "p.yaml", "--resume"], env,
                              spawned, "resume.log")
    assert code == 0, errors
    assert f"stage 'count' changed since checkpoint {newest.id}: {CHANGE}" \
        in errors
    assert "so it starts without it (recovery.mode: auto)" in errors
    assert f"resuming from checkpoint {newest.id} " in errors
    assert_map_output_exact(tmp_path)
    # Every other stage resumed at the checkpoint's barrier, so the count
    # stage, starting empty, receives each record after it exactly once.
    resumed_at = newest.manifest.stages["gen"]["info"]["next_seq"]
    assert read_jsonl(tmp_path / "counts.jsonl") == [
        {"key": seq, "count": 1} for seq in range(resumed_at, RECORDS)]


# 6. Recovery mode manual

@pytest.mark.slow
@pytest.mark.parametrize("restart_policy", ["", "on-failure"],
                         ids=["default-policy", "on-failure"])
def test_manual_mode_fails_run_then_resumes(tmp_path, env, home, spawned,
                                            restart_policy):
    write_faults_pipeline(tmp_path, recovery="{mode: manual}",
                          restart_policy=restart_policy)
    code, errors = run_to_end(tmp_path, ["run", "p.yaml"], env, spawned,
                              "first.log", fault="save@count#3")
    assert code == 1, errors
    wait_for_stages_gone(home)
    storage = storage_in(tmp_path)
    newest = complete(storage)[-1]
    assert "stage 'count' was killed by signal SIGKILL" in errors
    assert "The pipeline does not recover by itself (recovery.mode: " \
        "manual)" in errors
    assert f"run it with --resume to go on from checkpoint {newest.id}" \
        in errors

    code, errors = run_to_end(tmp_path, ["run", "p.yaml", "--resume"], env,
                              spawned, "resume.log")
    assert code == 0, errors
    assert f"resuming from checkpoint {newest.id} " in errors
    assert_output_exact(tmp_path)


# Listing checkpoints while they are written

@pytest.mark.slow
def test_listing_during_writes_succeeds(tmp_path):
    # `flowctl checkpoint list` and these tests list a checkpoint directory
    # while a run writes new checkpoints and removes old ones.
    storage = storage_in(tmp_path)
    stop = threading.Event()

    def write_checkpoints() -> None:
        number = 0
        while not stop.is_set():
            number += 1
            checkpoint_id = checkpoint_name(number)
            storage.write_part(checkpoint_id, "gen.state", b"x" * 100)
            storage.publish(Manifest(id=checkpoint_id, pipeline="faults"))
            if number > 2:
                storage.delete(checkpoint_name(number - 2))

    writer = threading.Thread(target=write_checkpoints)
    writer.start()
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            storage.list_checkpoints()
    finally:
        stop.set()
        writer.join()
