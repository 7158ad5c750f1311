"""The example pipelines run as written and give exactly the right output."""

from __future__ import annotations

import collections
import csv
import gzip
import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, run_flowctl, write_pipeline

DPKG_LOG = Path("/var/log/dpkg.log")
FLIGHTS = REPO / "examples" / "data" / "flights.csv.gz"
HANG_GUARD = 300

needs_dpkg_log = pytest.mark.skipif(not DPKG_LOG.exists(),
                                    reason="this machine has no dpkg log")


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """A copy of examples/ to run in, so outputs land in tmp_path/out."""
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    return tmp_path


def shell_lines(command: str) -> list[str]:
    result = subprocess.run(["/bin/sh", "-c", command], capture_output=True,
                            text=True, check=True)
    return result.stdout.splitlines()


def flight_rows() -> list[dict[str, str]]:
    with gzip.open(FLIGHTS, "rt", newline="") as file:
        return list(csv.DictReader(file))


@needs_dpkg_log
def test_grep_awk_pipeline_matches_shell(tmp_path, env):
    out = tmp_path / "names.jsonl"
    pipeline = write_pipeline(tmp_path / "p.yaml", f"""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - {{id: log, stage: read-lines, config: {{path: {DPKG_LOG}}}}}
          processors:
            - id: installs
              command: [grep, " install "]
              codec: lines
              inputs: [log]
            - id: names
              command: [awk, "{{print $4}}"]
              codec: lines
              inputs: [installs]
          sinks:
            - {{id: out, stage: write-jsonl, config: {{path: {out}}},
                inputs: [names]}}
        """)
    result = run_flowctl(["run", str(pipeline)], env, timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    expected = shell_lines(f"grep ' install ' {DPKG_LOG} | awk '{{print $4}}'")
    got = [json.loads(line)["line"] for line in out.read_text().splitlines()]
    assert got == expected


@needs_dpkg_log
def test_dpkg_example(examples, env):
    result = run_flowctl(["run", "examples/dpkg.yaml"], env, cwd=examples,
                         timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    names = shell_lines(f"grep ' install ' {DPKG_LOG} | awk '{{print $4}}'")
    expected = [{"package": name.split(":")[0],
                 "arch": name.split(":")[1] if ":" in name else None}
                for name in names]
    output = examples / "out" / "dpkg-installs.jsonl"
    got = [json.loads(line) for line in output.read_text().splitlines()]
    assert got == expected


def test_flights_example(examples, env):
    result = run_flowctl(["run", "examples/flights.yaml"], env, cwd=examples,
                         timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    rows = flight_rows()
    late = [row for row in rows
            if row["arr_delay"] not in ("", "NA")
            and int(row["arr_delay"]) >= 60]
    with sqlite3.connect(examples / "out" / "flights.db") as connection:
        table = connection.execute(
            "SELECT date, carrier, flight, route, arr_delay, dep_delay "
            "FROM late_flights").fetchall()
    expected = [(f"{row['year']}-{int(row['month']):02d}-"
                 f"{int(row['day']):02d}", row["carrier"], int(row["flight"]),
                 f"{row['origin']}-{row['dest']}", int(row["arr_delay"]),
                 int(row["dep_delay"])) for row in late]
    assert len(rows) == 336776
    assert table == expected

    with open(examples / "out" / "carrier_report.csv", newline="") as file:
        report = list(csv.DictReader(file))
    flights_per_carrier = collections.Counter(row["carrier"] for row in rows)
    assert {row["carrier"]: int(row["flights"]) for row in report} == \
        dict(flights_per_carrier)
    shares = [float(row["late_share"]) for row in report]
    assert shares == sorted(shares, reverse=True)


def test_fan_in_example(examples, env):
    result = run_flowctl(["run", "examples/fan_in.yaml"], env, cwd=examples,
                         timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    output = examples / "out" / "jfk-lga.jsonl"
    got = collections.Counter(
        (record["origin"], record["flight"], record["time_hour"])
        for record in map(json.loads, output.read_text().splitlines()))
    expected = collections.Counter(
        (row["origin"], row["carrier"] + row["flight"], row["time_hour"])
        for row in flight_rows() if row["origin"] in ("JFK", "LGA"))
    assert got == expected
