"""Operating runs from another process: status, stop, logs, the metrics
endpoint, JSON log lines, the run registry and the control socket."""

from __future__ import annotations

import json
import re
import signal
import socket
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from flowctl.registry import Registry

from conftest import (FLOWCTL, REPO, line_count, read_jsonl, run_flowctl,
                      stage_processes, wait_until, write_pipeline)

# Seconds after which a run or a command counts as hung.
HANG_GUARD = 60
STAGE_KEYS = {"id", "pid", "state", "restarts", "records_in", "records_out"}
METRIC_FAMILIES = ("flowctl_stage_records_in", "flowctl_stage_records_out",
                   "flowctl_stage_restarts", "flowctl_stage_state")
# A summary line: "  map       finished  in        1,234  out   1,234  ...".
SUMMARY_LINE = re.compile(r"  (?P<stage>\S+) +(?P<state>[a-z]+) +"
                          r"in +(?P<records_in>[\d,]+|-) +"
                          r"out +(?P<records_out>[\d,]+|-) +.*")

# A sink that counts its records. After the end of its stream it reports
# its counters, writes the count to `count_path` and waits until
# `release_path` exists, so the run stays live with every other stage
# finished.
HOLD_SINK = """
import os
import time

import flowctl


class HoldSink(flowctl.Sink):
    def open(self, config):
        self.config = config
        self.count = 0

    def write(self, record):
        self.count += 1

    def close(self):
        context = flowctl.context()
        context.report_stats(force=True)
        partial = self.config["count_path"] + ".tmp"
        with open(partial, "w") as file:
            file.write(str(self.count))
        os.replace(partial, self.config["count_path"])
        while not os.path.exists(self.config["release_path"]):
            context.report_stats()
            time.sleep(0.02)


flowctl.run(HoldSink())
"""


# Helpers


def start_flowctl(args: list[str], env: dict, spawned: list,
                  stderr_path: Path) -> subprocess.Popen:
    """Start flowctl in the background with its stderr going to a file."""
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(FLOWCTL + args, env=env, cwd=REPO,
                                   stdout=subprocess.DEVNULL, stderr=stderr,
                                   start_new_session=True)
    spawned.append(process)
    return process


def start_command(args: list[str], env: dict,
                  spawned: list) -> subprocess.Popen:
    """Start a flowctl command in the background, capturing its output."""
    process = subprocess.Popen(FLOWCTL + args, env=env, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    spawned.append(process)
    return process


def flowctl_json(args: list[str], env: dict):
    """Run a flowctl command that prints JSON and return the parsed output."""
    result = run_flowctl(args, env, timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_for_run(process: subprocess.Popen, env: dict,
                 stderr_path: Path) -> dict:
    """Wait until the registry lists the run of `process`, and return its
    row."""

    def registered():
        if process.poll() is not None:
            raise AssertionError(f"flowctl exited with {process.returncode}:"
                                 f"\n{stderr_path.read_text()}")
        rows = flowctl_json(["runs", "--json"], env)
        return next((row for row in rows if row["pid"] == process.pid), None)

    return wait_until(registered, timeout=HANG_GUARD, interval=0.1)


def wait_for_stages(run_id: str, env: dict, predicate=None) -> dict:
    """Wait until every stage of a live run is running with a pid and
    `predicate`, if given, is true of the snapshot.  Return the snapshot."""

    def ready():
        snapshots = flowctl_json(["status", run_id, "--json"], env)
        snapshot = snapshots[0]
        if not all(stage["state"] == "running" and stage["pid"]
                   for stage in snapshot["stages"]):
            return None
        if predicate is not None and not predicate(snapshot):
            return None
        return snapshot

    return wait_until(ready, timeout=HANG_GUARD, interval=0.1)


def stages_by_id(snapshot: dict) -> dict[str, dict]:
    return {stage["id"]: stage for stage in snapshot["stages"]}


def parse_count(text: str) -> int | None:
    return None if text == "-" else int(text.replace(",", ""))


def summary_counts(stderr: str) -> dict[str, tuple[int | None, int | None]]:
    """Return (records in, records out) per stage from the summary lines."""
    counts = {}
    for line in stderr.splitlines():
        match = SUMMARY_LINE.fullmatch(line)
        if match:
            counts[match["stage"]] = (parse_count(match["records_in"]),
                                      parse_count(match["records_out"]))
    return counts


def registry_counts(snapshot: dict) -> dict[str, tuple[int, int]]:
    return {stage["id"]: (stage["records_in"], stage["records_out"])
            for stage in snapshot["stages"]}


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(port: int) -> dict[str, list]:
    """Return the samples of each metric family served on `port`."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode("utf-8")
    return {family.name: family.samples
            for family in text_string_to_metric_families(text)}


def sample_values(samples: list, **labels: str) -> dict[str, float]:
    """Map stage id to value for the samples carrying every given label."""
    return {sample.labels["stage"]: sample.value for sample in samples
            if all(sample.labels.get(key) == value
                   for key, value in labels.items())}


def parse_json_lines(text: str) -> list[dict]:
    objects = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            pytest.fail(f"stderr line is not JSON: {line!r}")
        assert isinstance(value, dict), line
        objects.append(value)
    return objects


# status


def test_status_json_lists_live_stages(tmp_path, env, home, spawned):
    errors = tmp_path / "stderr.txt"
    process = start_flowctl(
        ["run", "-e", "generate rate=500 | map expr=r | discard"],
        env, spawned, errors)
    run_id = wait_for_run(process, env, errors)["id"]
    first = wait_for_stages(
        run_id, env,
        lambda snapshot: stages_by_id(snapshot)["map"]["records_out"] > 0)

    # A listing of live runs from another process.
    snapshots = flowctl_json(["status", "--json"], env)
    assert [snapshot["id"] for snapshot in snapshots] == [run_id]
    snapshot = snapshots[0]
    assert {"id", "pipeline", "state", "started_at",
            "stages"} <= snapshot.keys()
    assert snapshot["pipeline"] == "inline"
    assert snapshot["state"] == "running"
    assert snapshot["pid"] == process.pid
    assert [stage["id"] for stage in snapshot["stages"]] == [
        "generate", "map", "discard"]
    for stage in snapshot["stages"]:
        assert STAGE_KEYS <= stage.keys(), stage
        assert stage["state"] == "running"
        assert stage["restarts"] == 0
        stage_process = psutil.Process(stage["pid"])
        environ = stage_process.environ()
        assert environ["FLOWCTL_STAGE_ID"] == stage["id"]
        assert environ["FLOWCTL_RUN_ID"] == run_id
        assert stage_process.ppid() == process.pid

    # Counters only grow, and a pass-through map never writes more than
    # it read.
    for before, after in zip(first["stages"], snapshot["stages"]):
        assert after["records_in"] >= before["records_in"], after
        assert after["records_out"] >= before["records_out"], after
    for current in (first, snapshot):
        stages = stages_by_id(current)
        assert stages["generate"]["records_in"] == 0
        assert stages["discard"]["records_out"] == 0
        assert stages["map"]["records_in"] >= stages["map"]["records_out"]

    process.send_signal(signal.SIGTERM)
    process.wait(timeout=HANG_GUARD)
    assert process.returncode == 143, errors.read_text()

    # The registry keeps the final counters, the same as the summary.
    final = flowctl_json(["status", run_id, "--json"], env)[0]
    summary = summary_counts(errors.read_text())
    assert registry_counts(final) == summary
    emitted = summary["generate"][1]
    assert summary == {"generate": (0, emitted), "map": (emitted, emitted),
                       "discard": (emitted, 0)}
    assert stage_processes(str(home)) == []


def test_status_table_shows_stages(tmp_path, env, spawned):
    errors = tmp_path / "stderr.txt"
    process = start_flowctl(
        ["run", "-e", "generate rate=500 | map expr=r | discard"],
        env, spawned, errors)
    run_id = wait_for_run(process, env, errors)["id"]
    wait_for_stages(run_id, env)

    result = run_flowctl(["status"], env, timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"run {run_id}  pipeline inline  running  "
                               f"pid {process.pid}  started ")
    assert lines[1].split() == ["STAGE", "PID", "STATE", "RESTARTS", "IN",
                                "OUT", "RATE", "LAST", "ERROR"]
    rows = [line.split() for line in lines[2:]]
    assert [row[0] for row in rows] == ["generate", "map", "discard"]
    assert [row[2] for row in rows] == ["running"] * 3

    process.send_signal(signal.SIGTERM)
    process.wait(timeout=HANG_GUARD)


def test_status_resolves_run_prefix(tmp_path, env, home, spawned):
    errors = tmp_path / "stderr.txt"
    process = start_flowctl(
        ["run", "-e", "generate rate=500 | discard"], env, spawned, errors)
    run_id = wait_for_run(process, env, errors)["id"]
    wait_for_stages(run_id, env)

    # A finished run whose id shares the first four characters.
    other_char = "0" if run_id[4] != "0" else "1"
    other_id = run_id[:4] + other_char + "0" * (len(run_id) - 5)
    registry = Registry(str(home))
    try:
        registry.add_run(other_id, "other", "-e", str(tmp_path), "", [])
        registry.finish_run(other_id, "finished", 0, "")
    finally:
        registry.close()

    unique = flowctl_json(["status", run_id[:5], "--json"], env)
    assert [snapshot["id"] for snapshot in unique] == [run_id]
    assert unique[0]["state"] == "running"

    text = run_flowctl(["status", run_id[:5]], env, timeout=HANG_GUARD)
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith(f"run {run_id}  pipeline inline  running")

    ambiguous = run_flowctl(["status", run_id[:4]], env, timeout=HANG_GUARD)
    assert ambiguous.returncode == 1
    assert ambiguous.stdout == ""
    assert ambiguous.stderr.startswith(
        f"flowctl: run id prefix '{run_id[:4]}' is ambiguous: ")
    assert run_id in ambiguous.stderr
    assert other_id in ambiguous.stderr

    unknown = run_flowctl(["status", "zzzz"], env, timeout=HANG_GUARD)
    assert unknown.returncode == 1
    assert unknown.stdout == ""
    assert unknown.stderr == ("flowctl: no run id starts with 'zzzz'; "
                              "'flowctl runs' lists them\n")

    process.send_signal(signal.SIGTERM)
    process.wait(timeout=HANG_GUARD)


# stop


def test_stop_drains_and_exits_143(tmp_path, env, home, spawned):
    out = tmp_path / "out.jsonl"
    errors = tmp_path / "stderr.txt"
    process = start_flowctl(
        ["run", "-e", f"generate rate=2000 | map expr=r | "
                      f"write-jsonl path={out}"], env, spawned, errors)
    run_id = wait_for_run(process, env, errors)["id"]
    wait_until(lambda: line_count(out) >= 200, timeout=HANG_GUARD)

    # The run is reaped while `flowctl stop` waits, as a shell would.
    stop = start_command(["stop", run_id], env, spawned)
    process.wait(timeout=HANG_GUARD)
    assert process.returncode == 143, errors.read_text()
    stdout, stderr = stop.communicate(timeout=HANG_GUARD)
    assert stop.returncode == 0, stderr
    assert stdout == f"run {run_id} stopped\n"

    # Drained, not cut: every record the source emitted reached the sink.
    records = read_jsonl(out)
    final = stages_by_id(flowctl_json(["status", run_id, "--json"], env)[0])
    emitted = final["generate"]["records_out"]
    assert emitted >= 200
    assert records == [{"seq": seq} for seq in range(emitted)]
    assert final["write-jsonl"]["records_in"] == emitted

    rows = flowctl_json(["runs", "--json"], env)
    assert len(rows) == 1
    assert rows[0]["id"] == run_id
    assert rows[0]["state"] == "stopped"
    assert rows[0]["exit_code"] == 143
    assert stage_processes(str(home)) == []


def slow_run(tmp_path: Path, env: dict, spawned: list,
             errors: Path, out: Path) -> tuple[subprocess.Popen, str]:
    """Start a run whose sink takes 50 ms a record, with long timeouts."""
    script = tmp_path / "slow_sink.py"
    script.write_text(
        "import json, time\n"
        "import flowctl\n"
        "class Slow(flowctl.Sink):\n"
        "    def open(self, config):\n"
        "        self.file = open(config['path'], 'a')\n"
        "    def write(self, record):\n"
        "        time.sleep(0.05)\n"
        "        self.file.write(json.dumps(record) + '\\n')\n"
        "    def flush(self):\n"
        "        self.file.flush()\n"
        "flowctl.run(Slow())\n")
    pipeline = write_pipeline(tmp_path / "p.yaml", f"""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          supervisor: {{stop_timeout: 10m, drain_timeout: 10m}}
          frames: {{batch_size: 10}}
          sources:
            - {{id: numbers, stage: generate}}
          sinks:
            - id: slow
              command: [{sys.executable}, {script}]
              config: {{path: {out}}}
              inputs: [numbers]
        """)
    process = start_flowctl(["run", str(pipeline)], env, spawned, errors)
    run_id = wait_for_run(process, env, errors)["id"]
    wait_until(lambda: line_count(out) >= 5, timeout=HANG_GUARD)
    return process, run_id


def test_stop_kill_ends_run_without_draining(tmp_path, env, home, spawned):
    out = tmp_path / "out.jsonl"
    errors = tmp_path / "stderr.txt"
    # The timeouts are long, so only --kill can end this run before the
    # guard runs out.
    process, run_id = slow_run(tmp_path, env, spawned, errors, out)

    stop = start_command(["stop", run_id, "--kill"], env, spawned)
    process.wait(timeout=HANG_GUARD)
    assert process.returncode == 143, errors.read_text()
    stdout, stderr = stop.communicate(timeout=HANG_GUARD)
    assert stop.returncode == 0, stderr
    assert stdout == f"run {run_id} stopped\n"

    rows = flowctl_json(["runs", "--json"], env)
    assert rows[0]["state"] == "stopped"
    assert rows[0]["exit_code"] == 143
    final = flowctl_json(["status", run_id, "--json"], env)[0]
    assert [stage["state"] for stage in final["stages"]] == [
        "stopped", "stopped"]
    assert stage_processes(str(home)) == []


def test_stop_returns_before_run_is_reaped(tmp_path, env, spawned):
    errors = tmp_path / "stderr.txt"
    process = start_flowctl(["run", "-e", "generate rate=500 | discard"],
                            env, spawned, errors)
    run_id = wait_for_run(process, env, errors)["id"]
    wait_for_stages(run_id, env)

    # This test is flowctl's parent and does not reap it until `flowctl
    # stop` returns, so the ended run stays a zombie process meanwhile.
    # The drain takes well under a second; --timeout only bounds a hang.
    result = run_flowctl(["stop", run_id, "--timeout", "15"], env,
                         timeout=HANG_GUARD)
    process.wait(timeout=HANG_GUARD)
    assert process.returncode == 143, errors.read_text()
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"run {run_id} stopped\n"


def test_stop_finished_run_fails(env):
    result = run_flowctl(["run", "-e", "generate count=3 | discard"], env,
                         timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    run_id = flowctl_json(["runs", "--json"], env)[0]["id"]

    stop = run_flowctl(["stop", run_id], env, timeout=HANG_GUARD)
    assert stop.returncode == 1
    assert stop.stdout == ""
    assert stop.stderr == (f"flowctl: run {run_id} is not running "
                           f"(finished)\n")


# logs


def test_logs_prefix_each_stage(env):
    result = run_flowctl(
        ["run", "-e", "generate count=3 | exec sh -c 'echo hello from sh >&2;"
                      " cat' | exec sh -c 'echo second >&2; cat' | discard"],
        env, timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    run_id = flowctl_json(["runs", "--json"], env)[0]["id"]

    every = run_flowctl(["logs", run_id], env, timeout=HANG_GUARD)
    assert every.returncode == 0, every.stderr
    assert every.stdout == "[sh] hello from sh\n[sh-2] second\n"

    one = run_flowctl(["logs", run_id, "sh"], env, timeout=HANG_GUARD)
    assert one.returncode == 0, one.stderr
    assert one.stdout == "hello from sh\n"

    unknown = run_flowctl(["logs", run_id, "parse"], env, timeout=HANG_GUARD)
    assert unknown.returncode == 1
    assert unknown.stdout == ""
    assert unknown.stderr == (f"flowctl: run {run_id} has no stage 'parse'; "
                              f"its stages are generate, sh, sh-2, discard\n")


def test_logs_follow_prints_new_lines(tmp_path, env, spawned):
    go = tmp_path / "go"
    script = tmp_path / "wait.sh"
    script.write_text("echo before >&2\n"
                      f"while [ ! -e {go} ]; do sleep 0.05; done\n"
                      "echo after >&2\n"
                      "cat\n")
    errors = tmp_path / "stderr.txt"
    process = start_flowctl(
        ["run", "-e", f"generate count=3 | exec sh {script} | discard"],
        env, spawned, errors)
    run_id = wait_for_run(process, env, errors)["id"]

    followed = tmp_path / "followed.txt"
    with open(followed, "w") as stdout:
        follower = subprocess.Popen(FLOWCTL + ["logs", run_id, "sh", "-f"],
                                    env=env, cwd=REPO, stdout=stdout,
                                    stderr=subprocess.PIPE, text=True,
                                    start_new_session=True)
    spawned.append(follower)
    wait_until(lambda: followed.read_text() == "before\n",
               timeout=HANG_GUARD)
    # The stage writes "after" only now, while `logs -f` is following.
    go.touch()

    process.wait(timeout=HANG_GUARD)
    assert process.returncode == 0, errors.read_text()
    _, follower_errors = follower.communicate(timeout=HANG_GUARD)
    assert follower.returncode == 0, follower_errors
    assert followed.read_text() == "before\nafter\n"


def test_logs_follow_ends_on_ctrl_c(tmp_path, env, spawned):
    errors = tmp_path / "stderr.txt"
    process = start_flowctl(
        ["run", "-e", "generate rate=10 | exec sh -c 'echo ready >&2; cat' "
                      "| discard"], env, spawned, errors)
    run_id = wait_for_run(process, env, errors)["id"]
    followed = tmp_path / "followed.txt"
    with open(followed, "w") as stdout:
        follower = subprocess.Popen(FLOWCTL + ["logs", run_id, "sh", "-f"],
                                    env=env, cwd=REPO, stdout=stdout,
                                    stderr=subprocess.PIPE, text=True,
                                    start_new_session=True)
    spawned.append(follower)
    wait_until(lambda: followed.read_text() == "ready\n", timeout=HANG_GUARD)

    follower.send_signal(signal.SIGINT)
    _, follower_errors = follower.communicate(timeout=HANG_GUARD)

    assert follower.returncode == 130
    assert follower_errors == ""
    process.send_signal(signal.SIGINT)
    process.wait(timeout=HANG_GUARD)
    assert process.returncode == 130, errors.read_text()


# metrics


def test_metrics_have_stage_labels(tmp_path, env, spawned):
    port = free_port()
    errors = tmp_path / "stderr.txt"
    pipeline = write_pipeline(tmp_path / "p.yaml", """
        apiVersion: flowctl/v1
        kind: Pipeline
        metadata: {name: live-metrics}
        spec:
          sources:
            - {id: numbers, stage: generate, config: {rate: 500}}
          processors:
            - {id: copy, stage: map, config: {expr: r}, inputs: [numbers]}
          sinks:
            - {id: out, stage: discard, inputs: [copy]}
        """)
    process = start_flowctl(
        ["run", str(pipeline), "--metrics-port", str(port)],
        env, spawned, errors)
    run_id = wait_for_run(process, env, errors)["id"]
    wait_for_stages(run_id, env)

    families = scrape(port)
    for name in METRIC_FAMILIES:
        assert name in families, sorted(families)
        samples = families[name]
        assert {sample.labels["stage"] for sample in samples} == {
            "numbers", "copy", "out"}, name
        for sample in samples:
            assert sample.labels["run"] == run_id
            assert sample.labels["pipeline"] == "live-metrics"
    restarts = sample_values(families["flowctl_stage_restarts"])
    assert restarts == {"numbers": 0, "copy": 0, "out": 0}
    running = sample_values(families["flowctl_stage_state"], state="running")
    assert running == {"numbers": 1, "copy": 1, "out": 1}
    # Exactly one state is set for each stage.
    for stage in ("numbers", "copy", "out"):
        values = [sample.value for sample in families["flowctl_stage_state"]
                  if sample.labels["stage"] == stage]
        assert sum(values) == 1, stage

    process.send_signal(signal.SIGTERM)
    process.wait(timeout=HANG_GUARD)
    assert process.returncode == 143, errors.read_text()


def test_metrics_match_status_and_summary(tmp_path, env, spawned):
    """The source and the map finish and the sink keeps the run open, so
    every counter is final while the endpoint still serves scrapes."""
    port = free_port()
    count_file = tmp_path / "count"
    release_file = tmp_path / "release"
    script = tmp_path / "hold_sink.py"
    script.write_text(HOLD_SINK)
    errors = tmp_path / "stderr.txt"
    pipeline = write_pipeline(tmp_path / "p.yaml", f"""
        apiVersion: flowctl/v1
        kind: Pipeline
        metadata: {{name: held}}
        spec:
          sources:
            - {{id: numbers, stage: generate, config: {{count: 5000}}}}
          processors:
            - {{id: copy, stage: map, config: {{expr: r}}, inputs: [numbers]}}
          sinks:
            - id: hold
              command: [{sys.executable}, {script}]
              config: {{count_path: {count_file},
                       release_path: {release_file}}}
              inputs: [copy]
        """)
    process = start_flowctl(
        ["run", str(pipeline), "--metrics-port", str(port)],
        env, spawned, errors)
    run_id = wait_for_run(process, env, errors)["id"]
    wait_until(count_file.exists, timeout=HANG_GUARD)
    assert count_file.read_text() == "5000"

    def final_scrape():
        families = scrape(port)
        records_in = sample_values(families["flowctl_stage_records_in"])
        finished = sample_values(families["flowctl_stage_state"],
                                 state="finished")
        if records_in.get("hold") != 5000:
            return None
        if finished.get("numbers") != 1 or finished.get("copy") != 1:
            return None
        return families

    families = wait_until(final_scrape, timeout=HANG_GUARD, interval=0.1)
    records_in = sample_values(families["flowctl_stage_records_in"])
    records_out = sample_values(families["flowctl_stage_records_out"])
    assert records_in == {"numbers": 0, "copy": 5000, "hold": 5000}
    assert records_out == {"numbers": 5000, "copy": 5000, "hold": 0}
    state = families["flowctl_stage_state"]
    assert sample_values(state, state="finished") == {
        "numbers": 1, "copy": 1, "hold": 0}
    assert sample_values(state, state="running") == {
        "numbers": 0, "copy": 0, "hold": 1}
    assert sample_values(families["flowctl_stage_restarts"]) == {
        "numbers": 0, "copy": 0, "hold": 0}

    status = flowctl_json(["status", run_id, "--json"], env)[0]
    scraped = {stage: (int(records_in[stage]), int(records_out[stage]))
               for stage in records_in}
    assert registry_counts(status) == scraped

    release_file.touch()
    process.wait(timeout=HANG_GUARD)
    assert process.returncode == 0, errors.read_text()
    assert summary_counts(errors.read_text()) == scraped


# --log-format json


def test_json_log_lines_are_objects(tmp_path, env):
    result = run_flowctl(
        ["run", "--log-format", "json", "-e",
         "generate count=3 | exec sh -c 'echo hello from sh >&2; cat' "
         "| discard"], env, timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    run_id = flowctl_json(["runs", "--json"], env)[0]["id"]

    objects = parse_json_lines(result.stderr)
    for value in objects:
        assert value["run"] == run_id, value
        assert "stage" in value, value
    run_events = [value["event"] for value in objects
                  if value["stage"] is None]
    assert any(event.startswith("running pipeline 'inline' with 3 stages")
               for event in run_events), run_events
    stderr_lines = [(value["stage"], value["stderr"]) for value in objects
                    if "stderr" in value]
    assert stderr_lines == [("sh", "hello from sh")]
    summaries = [(value["stage"], value["state"], value["records_in"],
                  value["records_out"]) for value in objects
                 if value.get("event") == "summary"]
    assert summaries == [("generate", "finished", 0, 3),
                         ("sh", "finished", 3, 3),
                         ("discard", "finished", 3, 0)]


def test_json_log_failure_is_object(env):
    result = run_flowctl(
        ["run", "--log-format", "json", "-e",
         "generate count=10 | map expr=\"1/(r['seq']-5)\" | discard"],
        env, timeout=HANG_GUARD)
    assert result.returncode == 1
    objects = parse_json_lines(result.stderr)
    failures = [value for value in objects
                if "stage 'map' failed: ZeroDivisionError" in json.dumps(
                    value)]
    assert failures, result.stderr


# the run registry


def test_registry_records_failed_run(env):
    result = run_flowctl(
        ["run", "-e", "generate count=10 | map expr=\"1/(r['seq']-5)\" "
                      "| discard"], env, timeout=HANG_GUARD)
    assert result.returncode == 1
    rows = flowctl_json(["runs", "--json"], env)
    assert len(rows) == 1
    row = rows[0]
    assert row["state"] == "failed"
    assert row["exit_code"] == 1
    assert row["ended_at"] is not None
    assert row["message"].startswith(
        "stage 'map' failed: ZeroDivisionError: division by zero "
        "(record {'seq': 5}); see ")
    assert row["message"].endswith(f"{row['id']}/map.log")
    stages = stages_by_id(flowctl_json(["status", row["id"], "--json"],
                                       env)[0])
    assert stages["map"]["state"] == "failed"


def test_registry_records_finished_run(env):
    result = run_flowctl(["run", "-e", "generate count=7 | discard"], env,
                         timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    rows = flowctl_json(["runs", "--json"], env)
    assert len(rows) == 1
    row = rows[0]
    assert row["state"] == "finished"
    assert row["exit_code"] == 0
    assert row["message"] == ""
    assert row["ended_at"] is not None
    final = flowctl_json(["status", row["id"], "--json"], env)[0]
    assert registry_counts(final) == {"generate": (0, 7), "discard": (7, 0)}
    assert [stage["state"] for stage in final["stages"]] == [
        "finished", "finished"]


# the control socket


def test_control_socket_is_private(tmp_path, env, spawned):
    errors = tmp_path / "stderr.txt"
    process = start_flowctl(["run", "-e", "generate rate=500 | discard"],
                            env, spawned, errors)
    row = wait_for_run(process, env, errors)
    socket_path = Path(row["socket"])

    mode = socket_path.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600

    process.send_signal(signal.SIGTERM)
    process.wait(timeout=HANG_GUARD)
    assert process.returncode == 143, errors.read_text()
    assert not socket_path.exists()


def test_second_stop_escalates_to_kill(tmp_path, env, home, spawned):
    out = tmp_path / "out.jsonl"
    errors = tmp_path / "stderr.txt"
    process, run_id = slow_run(tmp_path, env, spawned, errors, out)

    first = subprocess.run(FLOWCTL + ["stop", run_id, "--timeout", "1"],
                           env=env, capture_output=True, text=True,
                           timeout=HANG_GUARD)
    assert first.returncode == 1
    assert "is still stopping after 1s" in first.stderr
    second = start_command(["stop", run_id], env, spawned)
    process.wait(timeout=HANG_GUARD)
    stdout, stderr = second.communicate(timeout=HANG_GUARD)

    assert process.returncode == 143, errors.read_text()
    assert "second stop request: stopping every stage now" in \
        errors.read_text()
    assert second.returncode == 0, stderr
    assert stdout == f"run {run_id} stopped\n"
    assert stage_processes(str(home)) == []
