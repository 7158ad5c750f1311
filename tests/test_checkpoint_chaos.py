"""Chaos: SIGKILL stages and flowctl itself at random moments, resume each
time, and require output identical to an uninterrupted run.

The input is the nycflights13 data the repository ships (336,776 rows).
Each test prints its seed; set FLOWCTL_CHAOS_SEED to replay one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from conftest import FLOWCTL, REPO, stage_processes, wait_until, write_pipeline

DATA = REPO / "examples" / "data" / "flights.csv.gz"
KILLS = 20
# Flights that left late (dep_delay > 0) in the data set.
DELAYED_FLIGHTS = 128432

# Settings, source and filter, which both pipelines share.
SHARED = f"""
apiVersion: flowctl/v1
kind: Pipeline
metadata: {{name: chaos}}
spec:
  checkpoint: {{interval: 0.3s, directory: ck, retain: 3}}
  supervisor:
    restart:
      backoff: {{initial: 0.1s, max: 0.5s, jitter: 0}}
      max_restarts: 1000
      window: 1s
  sources:
    - id: flights
      stage: read-csv
      config: {{path: {DATA}, types: auto, nulls: ["", NA]}}
  processors:
    - id: delayed
      stage: filter
      inputs: [flights]
      config: {{where: "r['dep_delay'] is not None and r['dep_delay'] > 0"}}
"""

PIPELINE = SHARED + f"""
    - id: trim
      stage: map
      inputs: [delayed]
      config:
        expr: "{{'carrier': r['carrier'], 'route': r['origin'] + '-' + r['dest'], 'dep_delay': r['dep_delay']}}"
    - id: count
      stage: count-by
      inputs: [trim]
      config: {{key: route}}
  sinks:
    - id: table
      stage: write-sqlite
      inputs: [delayed]
      config: {{path: out.db, table: delayed}}
    - id: counts
      stage: write-jsonl
      inputs: [count]
      config: {{path: counts.jsonl}}
"""

# The same, with awk in the middle: it gets the filtered rows as CSV and
# prints three of their columns, header included, for the map to type.
AWK_PIPELINE = SHARED + f"""
    - id: columns
      command: [awk, -F, ",", -v, "OFS=,", "{{print $10, $13 \\"-\\" $14, $6}}"]
      codec: csv
      inputs: [delayed]
    - id: trim
      stage: map
      inputs: [columns]
      config:
        expr: "{{'carrier': r['carrier'], 'route': r['origin-dest'], 'dep_delay': int(r['dep_delay'])}}"
    - id: count
      stage: count-by
      inputs: [trim]
      config: {{key: route}}
  sinks:
    - id: table
      stage: write-sqlite
      inputs: [trim]
      config: {{path: out.db, table: delayed}}
    - id: counts
      stage: write-jsonl
      inputs: [count]
      config: {{path: counts.jsonl}}
"""


def read_output(directory: Path) -> tuple[list[tuple], list[dict]]:
    connection = sqlite3.connect(directory / "out.db")
    try:
        rows = connection.execute(
            "SELECT * FROM delayed ORDER BY rowid").fetchall()
    finally:
        connection.close()
    counts = [json.loads(line)
              for line in (directory / "counts.jsonl").read_text().splitlines()]
    return rows, counts


def start(directory: Path, env: dict[str, str], resume: bool,
          log) -> subprocess.Popen:
    args = FLOWCTL + ["run", "pipeline.yaml", "--no-live"]
    if resume:
        args.append("--resume")
    return subprocess.Popen(args, cwd=directory, env=env, stdout=log,
                            stderr=subprocess.STDOUT)


def live_stages(home: str, flowctl_pid: int) -> list[psutil.Process]:
    found = []
    for process in stage_processes(home):
        try:
            if (process.pid != flowctl_pid
                    and process.status() != psutil.STATUS_ZOMBIE):
                found.append(process)
        except psutil.NoSuchProcess:
            continue    # exited since it was listed
    return found


def run_with_kills(directory: Path, env: dict[str, str], seed: int,
                   spawned: list) -> list[str]:
    """Kill a random stage or flowctl KILLS times; return what was killed."""
    rng = random.Random(seed)
    home = env["FLOWCTL_HOME"]
    killed: list[str] = []
    log = open(directory / "chaos.log", "ab")
    process = start(directory, env, resume=False, log=log)
    spawned.append(process)
    while len(killed) < KILLS:
        # Short enough pauses that the run outlasts all KILLS kills: a
        # recovery takes well under a second.
        time.sleep(rng.uniform(0.1, 0.6))
        if process.poll() is not None:
            break   # finished before this kill: the run is complete
        victims = live_stages(home, process.pid)
        if not victims or rng.random() < 0.3:
            process.send_signal(signal.SIGKILL)
            process.wait()
            killed.append("flowctl")
            # Every stage dies with flowctl (parent-death signal).
            wait_until(lambda: not live_stages(home, process.pid), 10)
            process = start(directory, env, resume=True, log=log)
            spawned.append(process)
            continue
        victim = rng.choice(victims)
        try:
            name = victim.environ().get("FLOWCTL_STAGE_ID", str(victim.pid))
            victim.kill()
            killed.append(name)
        except psutil.NoSuchProcess:
            pass
    code = process.wait(timeout=300)
    log.close()
    assert code == 0, (f"seed {seed}: the last run exited with {code}; see "
                       f"{directory / 'chaos.log'}")
    return killed


@pytest.fixture(params=["builtin", "awk"])
def chaos_pipeline(request) -> str:
    return PIPELINE if request.param == "builtin" else AWK_PIPELINE


@pytest.mark.slow
def test_chaos_kills_keep_output_exact(tmp_path, env, spawned,
                                       chaos_pipeline):
    seed = int(os.environ.get("FLOWCTL_CHAOS_SEED") or random.randrange(1 << 30))
    print(f"chaos seed {seed} (FLOWCTL_CHAOS_SEED={seed} replays it)")
    quiet = tmp_path / "quiet"
    chaos = tmp_path / "chaos"
    for directory in (quiet, chaos):
        directory.mkdir()
        write_pipeline(directory / "pipeline.yaml", chaos_pipeline)
    reference = subprocess.run(FLOWCTL + ["run", "pipeline.yaml", "--no-live"],
                               cwd=quiet, env=env, capture_output=True,
                               timeout=300)
    assert reference.returncode == 0, reference.stderr.decode()
    expected_rows, expected_counts = read_output(quiet)
    assert len(expected_rows) == DELAYED_FLIGHTS
    assert sum(item["count"] for item in expected_counts) == DELAYED_FLIGHTS

    killed = run_with_kills(chaos, env, seed, spawned)
    print(f"killed: {killed}")

    assert len(killed) >= KILLS, (f"seed {seed}: the run ended after "
                                  f"{len(killed)} kills: {killed}")
    rows, counts = read_output(chaos)
    assert len(rows) == len(expected_rows), f"seed {seed}, kills {killed}"
    assert rows == expected_rows, f"seed {seed}, kills {killed}"
    assert counts == expected_counts, f"seed {seed}, kills {killed}"
