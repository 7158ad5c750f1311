"""A stage written from docs/protocol.md alone, without flowctl's library.

The pipeline cases run it through the real `flowctl run` command. The
protocol cases start it by hand with frames on stdin, which covers the
frames flowctl itself does not send yet (barriers) and the failure paths.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack

from conftest import STAGES, read_jsonl, run_flowctl, write_pipeline

FOREIGN_STAGE = STAGES / "foreign_stage.py"
COMMAND = json.dumps([sys.executable, str(FOREIGN_STAGE)])
HEADER = struct.Struct(">I")

UPSTREAM_HELLO = [1, {"protocol": "flowctl", "version": 1,
                      "stage": "numbers"}]
DOUBLE_HELLO = [1, {"protocol": "flowctl", "version": 1, "stage": "double"}]
END = [4]


def stage_log(home: Path, stage_id: str) -> list[str]:
    """Return the lines of the stage's log from the only run in `home`."""
    (log,) = (home / "runs").glob(f"*/{stage_id}.log")
    return log.read_text().splitlines()


def logged_fds(home: Path, stage_id: str, direction: str) -> list[str]:
    """Return the descriptors the foreign stage logged for inputs or outputs."""
    prefix = f"{direction} fds: "
    (line,) = [line for line in stage_log(home, stage_id)
               if line.startswith(prefix)]
    return line[len(prefix):].split(",")


def encode_frame(value: Any) -> bytes:
    payload = msgpack.packb(value, use_bin_type=True)
    return HEADER.pack(len(payload)) + payload


def decode_frames(data: bytes) -> list[Any]:
    frames = []
    position = 0
    while position < len(data):
        (size,) = HEADER.unpack_from(data, position)
        start = position + HEADER.size
        frames.append(msgpack.unpackb(data[start:start + size], raw=False))
        position = start + size
    return frames


def run_by_hand(frames: list[Any]) -> subprocess.CompletedProcess:
    """Run the foreign stage outside flowctl, with `frames` on its stdin."""
    return run_by_hand_raw(b"".join(encode_frame(frame) for frame in frames))


def run_by_hand_raw(data: bytes) -> subprocess.CompletedProcess:
    """Run the foreign stage outside flowctl, with `data` on its stdin."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("FLOWCTL_")}
    env["FLOWCTL_STAGE_ID"] = "double"
    env["FLOWCTL_CONFIG"] = json.dumps({"field": "seq"})
    return subprocess.run([sys.executable, str(FOREIGN_STAGE)], input=data,
                          capture_output=True, env=env, timeout=60)


def test_chain_doubles_records_in_order(tmp_path, env, home):
    output = tmp_path / "out.jsonl"
    pipeline = write_pipeline(tmp_path / "chain.yaml", f"""
        apiVersion: flowctl/v1
        kind: Pipeline
        metadata: {{name: foreign-chain}}
        spec:
          sources:
            - id: numbers
              stage: generate
              config: {{count: 10000}}
          processors:
            - id: double
              command: {COMMAND}
              config: {{field: seq}}
              inputs: [numbers]
          sinks:
            - id: out
              stage: write-jsonl
              config: {{path: {json.dumps(str(output))}}}
              inputs: [double]
        """)

    result = run_flowctl(["run", str(pipeline)], env)

    assert result.returncode == 0, result.stderr
    assert read_jsonl(output) == [{"seq": 2 * i} for i in range(10000)]
    # One input and one output: the data pipes are stdin and stdout.
    assert logged_fds(home, "double", "input") == ["0"]
    assert logged_fds(home, "double", "output") == ["1"]
    # The counters arrive only through the control channel's done message.
    assert "stage=double finished in=10,000 out=10,000" in result.stderr


def test_fan_in_reads_both_inputs(tmp_path, env, home):
    output = tmp_path / "out.jsonl"
    pipeline = write_pipeline(tmp_path / "fan-in.yaml", f"""
        apiVersion: flowctl/v1
        kind: Pipeline
        metadata: {{name: foreign-fan-in}}
        spec:
          sources:
            - id: left
              stage: generate
              config: {{count: 3000}}
            - id: right
              stage: generate
              config: {{count: 5000}}
          processors:
            - id: tag
              stage: map
              config: {{expr: '{{"seq": r["seq"], "source": "right"}}'}}
              inputs: [right]
            - id: double
              command: {COMMAND}
              config: {{field: seq}}
              inputs: [left, tag]
          sinks:
            - id: out
              stage: write-jsonl
              config: {{path: {json.dumps(str(output))}}}
              inputs: [double]
        """)

    result = run_flowctl(["run", str(pipeline)], env)

    assert result.returncode == 0, result.stderr
    records = read_jsonl(output)
    left = [{"seq": 2 * i} for i in range(3000)]
    right = [{"seq": 2 * i, "source": "right"} for i in range(5000)]
    assert len(records) == 8000
    assert (Counter(json.dumps(record, sort_keys=True) for record in records)
            == Counter(json.dumps(record, sort_keys=True)
                       for record in left + right))
    # Frames keep their order within one input.
    assert [record for record in records if "source" not in record] == left
    assert [record for record in records if "source" in record] == right
    input_fds = logged_fds(home, "double", "input")
    assert len(input_fds) == 2
    assert "0" not in input_fds
    assert logged_fds(home, "double", "output") == ["1"]
    assert "stage=double finished in=8,000 out=8,000" in result.stderr


def test_fan_out_writes_every_reader(tmp_path, env, home):
    first = tmp_path / "first.jsonl"
    second = tmp_path / "second.jsonl"
    pipeline = write_pipeline(tmp_path / "fan-out.yaml", f"""
        apiVersion: flowctl/v1
        kind: Pipeline
        metadata: {{name: foreign-fan-out}}
        spec:
          sources:
            - id: numbers
              stage: generate
              config: {{count: 10000}}
          processors:
            - id: double
              command: {COMMAND}
              config: {{field: seq}}
              inputs: [numbers]
          sinks:
            - id: first
              stage: write-jsonl
              config: {{path: {json.dumps(str(first))}}}
              inputs: [double]
            - id: second
              stage: write-jsonl
              config: {{path: {json.dumps(str(second))}}}
              inputs: [double]
        """)

    result = run_flowctl(["run", str(pipeline)], env)

    assert result.returncode == 0, result.stderr
    expected = [{"seq": 2 * i} for i in range(10000)]
    assert read_jsonl(first) == expected
    assert read_jsonl(second) == expected
    assert logged_fds(home, "double", "input") == ["0"]
    output_fds = logged_fds(home, "double", "output")
    assert len(output_fds) == 2
    assert "1" not in output_fds


def test_reader_restart_rewires_output(tmp_path, env, home):
    output = tmp_path / "out.jsonl"
    crash_count = tmp_path / "crashes"
    crasher = json.dumps([sys.executable, str(STAGES / "crasher.py")])
    # The source is rate-limited so that the foreign stage is still running
    # when its reader crashes and flowctl hands it a new output pipe.
    pipeline = write_pipeline(tmp_path / "restart.yaml", f"""
        apiVersion: flowctl/v1
        kind: Pipeline
        metadata: {{name: foreign-restart}}
        spec:
          sources:
            - id: numbers
              stage: generate
              config: {{count: 400, rate: 200}}
          processors:
            - id: double
              command: {COMMAND}
              config: {{field: seq}}
              inputs: [numbers]
            - id: crasher
              command: {crasher}
              env:
                CRASHES: "1"
                AFTER: "50"
                STATE_FILE: {json.dumps(str(crash_count))}
              restart: {{policy: on-failure, backoff: {{initial: 100ms}}}}
              inputs: [double]
          sinks:
            - id: out
              stage: write-jsonl
              config: {{path: {json.dumps(str(output))}}}
              inputs: [crasher]
        """)

    result = run_flowctl(["run", str(pipeline)], env)

    assert result.returncode == 0, result.stderr
    assert crash_count.read_text() == "1"
    assert "[double] rewired output 0" in result.stderr
    # Without checkpoints, the records in flight when the reader crashed
    # are lost, so the output is an ordered subset that ends with the last.
    records = read_jsonl(output)
    expected = [{"seq": 2 * i} for i in range(400)]
    seqs = [record["seq"] for record in records]
    assert all(record in expected for record in records)
    assert seqs == sorted(set(seqs))
    assert records[-1] == {"seq": 798}


def test_record_failure_fails_run(tmp_path, env, home):
    output = tmp_path / "out.jsonl"
    pipeline = write_pipeline(tmp_path / "failure.yaml", f"""
        apiVersion: flowctl/v1
        kind: Pipeline
        metadata: {{name: foreign-failure}}
        spec:
          sources:
            - id: numbers
              stage: generate
              config: {{count: 3}}
          processors:
            - id: words
              stage: map
              config: {{expr: '{{"seq": "x"}}'}}
              inputs: [numbers]
            - id: double
              command: {COMMAND}
              config: {{field: seq}}
              inputs: [words]
          sinks:
            - id: out
              stage: write-jsonl
              config: {{path: {json.dumps(str(output))}}}
              inputs: [double]
        """)

    result = run_flowctl(["run", str(pipeline)], env)

    message = "field 'seq' is not a number in record {'seq': 'x'}"
    assert result.returncode == 1
    # Without the control channel's error message, flowctl would only
    # report the exit code.
    assert f"flowctl: stage 'double' failed: {message}; see " in result.stderr
    assert message in stage_log(home, "double")


def test_text_input_blames_writer(tmp_path, env, home):
    output = tmp_path / "out.jsonl"
    pipeline = write_pipeline(tmp_path / "text.yaml", f"""
        apiVersion: flowctl/v1
        kind: Pipeline
        metadata: {{name: foreign-text-input}}
        spec:
          sources:
            - id: text
              command: [echo, hello world]
          processors:
            - id: double
              command: {COMMAND}
              inputs: [text]
          sinks:
            - id: out
              stage: write-jsonl
              config: {{path: {json.dumps(str(output))}}}
              inputs: [double]
        """)

    result = run_flowctl(["run", str(pipeline)], env)

    # "hell" read as a big-endian length is 1751477356.
    message = ("stage 'text' sent a frame of 1751477356 bytes, over the "
               "maximum of 16777216 bytes")
    assert result.returncode == 1
    assert (f"flowctl: stage 'text' wrote output that is not flowctl frames, "
            f"read by stage 'double': {message}; see " in result.stderr)


def test_barrier_forwarded_between_batches():
    result = run_by_hand([
        UPSTREAM_HELLO,
        [2, [{"seq": 1}, {"seq": 2}, "not a map"]],
        [3, {"checkpoint": 7}],
        [2, [{"seq": 3, "name": "c"}]],
        END,
    ])

    assert result.returncode == 0, result.stderr
    assert decode_frames(result.stdout) == [
        DOUBLE_HELLO,
        [2, [{"seq": 2}, {"seq": 4}, "not a map"]],
        [3, {"checkpoint": 7}],
        [2, [{"seq": 6, "name": "c"}]],
        END,
    ]


def test_upstream_error_relayed():
    result = run_by_hand([
        UPSTREAM_HELLO,
        [2, [{"seq": 1}]],
        [5, {"stage": "numbers", "message": "disk full"}],
    ])

    assert result.returncode == 3
    assert decode_frames(result.stdout) == [
        DOUBLE_HELLO,
        [2, [{"seq": 2}]],
        [5, {"stage": "double",
             "message": "upstream stage 'numbers' failed: disk full"}],
    ]


def test_wrong_version_rejected():
    result = run_by_hand([
        [1, {"protocol": "flowctl", "version": 2, "stage": "numbers"}],
        END,
    ])

    assert result.returncode == 4
    assert decode_frames(result.stdout) == [
        DOUBLE_HELLO,
        [5, {"stage": "double",
             "message": "stage 'upstream' speaks protocol version 2, not 1"}],
    ]


def test_truncated_frame_rejected():
    batch = encode_frame([2, [{"seq": 1}]])

    result = run_by_hand_raw(encode_frame(UPSTREAM_HELLO) + batch[:-2])

    assert result.returncode == 4
    assert decode_frames(result.stdout)[-1] == [
        5, {"stage": "double",
            "message": "stage 'upstream' closed its output in the middle "
                       "of a frame (11 bytes left)"}]
