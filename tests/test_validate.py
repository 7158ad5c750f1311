"""`flowctl validate`: every problem of a pipeline file, each at its line."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, run_flowctl, write_pipeline
from flowctl import document
from flowctl.checkpoints.config import Adaptive, CheckpointConfig, Recovery
from flowctl.validate import validate as validate_document

FILENAME = "pipeline.yaml"
EXIT_USAGE = 2


def validate(tmp_path: Path, env: dict[str, str], text: str
             ) -> subprocess.CompletedProcess:
    """Write `text` as pipeline.yaml in tmp_path and validate it there."""
    write_pipeline(tmp_path / FILENAME, text)
    return run_flowctl(["validate", FILENAME], env, cwd=tmp_path)


BROKEN = """
    apiVersion: flowctl/v1
    kind: Pipeline
    metadata:
      name: broken
    spec:
      supervisor:
        stop_timeout: 10 sec
      sources:
        - id: numbers
          stage: genrate
          config: {count: 3}
      processors:
        - id: double
          stage: map
          config: {expr: "r['seq'] * 2"}
          inptus: [numbers]
        - id: left
          stage: map
          config: {expr: "r"}
          inputs: [right, numbers]
        - id: right
          stage: map
          config: {expr: "r"}
          inputs: [left]
        - id: left
          stage: filter
          config: {where: "True"}
          inputs: [numbers]
      sinks:
        - id: out
          command: [flowctl-no-such-program]
          codec: lines
          inputs: [double, right, nowhere]
"""


def test_validate_reports_every_problem(tmp_path, env):
    result = validate(tmp_path, env, BROKEN)

    assert result.returncode == EXIT_USAGE
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "pipeline.yaml:7: invalid duration '10 sec' (write a number with a "
        "unit: ms, s, m, h or d, as in 30s)",
        "pipeline.yaml:10: unknown built-in stage 'genrate' (did you mean "
        "'generate'?)",
        "pipeline.yaml:13: processor 'double' has no inputs (add inputs: "
        "[ID] naming the stages it reads)",
        "pipeline.yaml:16: unknown key 'inptus' in a processor (did you mean "
        "'inputs'?)",
        "pipeline.yaml:21: the stages form a cycle: right -> left -> right "
        "(a pipeline must be a directed acyclic graph)",
        "pipeline.yaml:25: duplicate stage id 'left' (first used on line 17)",
        "pipeline.yaml:31: command not found: 'flowctl-no-such-program' "
        "(install it or check PATH)",
        "pipeline.yaml:33: stage 'out' reads from 'nowhere', which is not a "
        "stage",
        "8 problems found in pipeline.yaml",
    ]


VALID = """
    apiVersion: flowctl/v1
    kind: Pipeline
    spec:
      sources:
        - id: numbers
          stage: generate
          config: {count: 3}
      sinks:
        - id: out
          stage: discard
          inputs: [numbers]
"""


def test_validate_valid_file(tmp_path, env):
    result = validate(tmp_path, env, VALID)

    assert result.returncode == 0
    assert result.stdout == "pipeline.yaml: valid (1 source, 0 processors, " \
                            "1 sink)\n"
    assert result.stderr == ""


def test_validate_several_files(tmp_path, env):
    write_pipeline(tmp_path / "good.yaml", VALID)
    write_pipeline(tmp_path / "bad.yaml", VALID.replace("discard", "discrad"))

    result = run_flowctl(["validate", "good.yaml", "bad.yaml"], env,
                         cwd=tmp_path)

    assert result.returncode == EXIT_USAGE
    assert result.stdout == "good.yaml: valid (1 source, 0 processors, " \
                            "1 sink)\n"
    assert result.stderr.splitlines() == [
        "bad.yaml:10: unknown built-in stage 'discrad' (did you mean "
        "'discard'?)",
        "1 problem found in bad.yaml",
    ]


# Each case: a pipeline file with one mistake, and the problem lines that
# `flowctl validate` prints for it before the closing count.
SINGLE_MISTAKES = [
    pytest.param("""
        apiVersion: flowctl/v1
        kind: Pipeline
        metdata:
          name: typo
        spec:
          sources:
            - id: numbers
              stage: generate
          sinks:
            - id: out
              stage: discard
              inputs: [numbers]
        """, [
        "pipeline.yaml:3: unknown key 'metdata' in the pipeline file (did "
        "you mean 'metadata'?)",
    ], id="top-level-key-hint"),
    pytest.param("""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          supervisr:
            stop_timeout: 5s
          sources:
            - id: numbers
              stage: generate
          sinks:
            - id: out
              stage: discard
              inputs: [numbers]
        """, [
        "pipeline.yaml:4: unknown key 'supervisr' in spec (did you mean "
        "'supervisor'?)",
    ], id="spec-key-hint"),
    pytest.param("""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - id: numbers
              stage: generate
          sinks:
            - id: out
              stage: discard
              descripton: drop everything
              inputs: [numbers]
        """, [
        "pipeline.yaml:10: unknown key 'descripton' in a sink (did you mean "
        "'description'?)",
    ], id="stage-key-hint"),
    pytest.param("""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - id: lines
              stage: read-line
              config: {path: input.txt}
          sinks:
            - id: out
              stage: discard
              inputs: [lines]
        """, [
        "pipeline.yaml:6: unknown built-in stage 'read-line' (did you mean "
        "'read-lines'?)",
    ], id="builtin-name-hint"),
    pytest.param("""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - id: numbers
              stage: frobnicate
          sinks:
            - id: out
              stage: discard
              inputs: [numbers]
        """, [
        "pipeline.yaml:6: unknown built-in stage 'frobnicate' (run 'flowctl "
        "stages' for the list)",
    ], id="builtin-name-no-match"),
    pytest.param("""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - id: numbers
              stage: generate
              config:
                cuont: 3
          sinks:
            - id: out
              stage: discard
              inputs: [numbers]
        """, [
        "pipeline.yaml:8: unknown config key 'cuont' for 'generate' (did you "
        "mean 'count'?)",
    ], id="config-key-hint"),
    pytest.param("""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - id: numbers
              stage: generate
              config:
                size: 3
          sinks:
            - id: out
              stage: discard
              inputs: [numbers]
        """, [
        "pipeline.yaml:8: unknown config key 'size' for 'generate' (it takes "
        "count, rate, payload)",
    ], id="config-key-list"),
    pytest.param("""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - id: numbers
              stage: generate
          sinks:
            - id: out
              stage: discard
              config: {path: out.txt}
              inputs: [numbers]
        """, [
        "pipeline.yaml:10: unknown config key 'path' for 'discard' (it takes "
        "no config)",
    ], id="config-key-none-taken"),
    pytest.param("""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - id: numbers
              stage: generate
              config: {count: five}
          sinks:
            - id: out
              stage: discard
              inputs: [numbers]
        """, [
        "pipeline.yaml:7: config key 'count' of 'generate' must be int, not "
        "'five'",
    ], id="config-value-type"),
    pytest.param("""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - id: numbers
              stage: generate
          sinks:
            - id: table
              stage: write-sqlite
              config:
                path: out.db
                table: numbers
                mode: replce
              inputs: [numbers]
        """, [
        "pipeline.yaml:13: config key 'mode' of 'write-sqlite' must be one of "
        "append, replace (did you mean 'replace'?)",
    ], id="config-choice-hint"),
    pytest.param("""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - id: numbers
              stage: generate
          processors:
            - id: keep
              stage: filter
              inputs: [numbers]
          sinks:
            - id: out
              stage: discard
              inputs: [keep]
        """, [
        "pipeline.yaml:8: 'filter' stage 'keep' needs config key 'where' "
        "(Python expression over the record r)",
    ], id="config-key-missing"),
    pytest.param("""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - id: numbers
              stage: generate
          processors:
            - id: upper
              command: [cat]
              codec: json
              inputs: [numbers]
          sinks:
            - id: out
              stage: discard
              inputs: [upper]
        """, [
        "pipeline.yaml:10: unknown codec 'json' (did you mean 'jsonl'?)",
    ], id="codec-hint"),
    pytest.param("""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - id: numbers
              stage: generate
          sinks:
            - id: out
              stage: discard
              codec: lines
              inputs: [numbers]
        """, [
        "pipeline.yaml:10: 'codec' is only for 'command' stages; built-in "
        "stages speak flowctl frames",
    ], id="codec-on-builtin"),
    pytest.param("""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - id: numbers
              stage: generate
          sinks:
            - id: out
              stage: discard
              inputs: [numbrs]
        """, [
        "warning: pipeline.yaml:5: no stage reads the output of 'numbers', "
        "so its records are dropped",
        "pipeline.yaml:10: stage 'out' reads from 'numbrs', which is not a "
        "stage (did you mean 'numbers'?)",
    ], id="input-id-hint"),
    pytest.param("""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - id: numbers
              stage: generate
          processors:
            - id: again
              stage: map
              config: {expr: "r"}
              inputs: [out]
          sinks:
            - id: out
              stage: discard
              inputs: [numbers]
        """, [
        "warning: pipeline.yaml:8: no stage reads the output of 'again', "
        "so its records are dropped",
        "pipeline.yaml:11: stage 'again' reads from sink 'out', but sinks "
        "have no output (list it under spec.processors if it should emit "
        "records)",
    ], id="input-is-sink"),
    pytest.param("""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - id: numbers
              stage: generate
            - id: more
              stage: generate
              inputs: [numbers]
          sinks:
            - id: out
              stage: discard
              inputs: [numbers, more]
        """, [
        "pipeline.yaml:9: source 'more' has inputs (sources read no other "
        "stage; list it under spec.processors)",
    ], id="source-with-inputs"),
    pytest.param("""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - id: numbers
              stage: generate
          processors:
            - id: copy
              stage: map
              command: [cat]
              config: {expr: "r"}
              inputs: [numbers]
          sinks:
            - id: out
              stage: discard
              inputs: [copy]
        """, [
        "pipeline.yaml:8: stage 'copy' has both 'stage' and 'command' (give "
        "exactly one of them)",
    ], id="stage-and-command"),
    pytest.param("""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - id: numbers
              stage: generate
          processors:
            - id: copy
              inputs: [numbers]
          sinks:
            - id: out
              stage: discard
              inputs: [copy]
        """, [
        "pipeline.yaml:8: stage 'copy' has none of 'stage', 'command' and "
        "'shell' (give exactly one of them)",
    ], id="no-stage-or-command"),
    pytest.param("""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - id: numbers
              stage: generate
          processors:
            - id: match
              command: grep -v 1
              codec: lines
              inputs: [numbers]
          sinks:
            - id: out
              stage: discard
              inputs: [match]
        """, [
        "pipeline.yaml:9: 'command' must be a list of arguments (write "
        "command: ['grep', '-v', '1'], or use 'shell:' to run it through "
        "/bin/sh)",
    ], id="command-string"),
    pytest.param("""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - id: numbers
              stage: write-jsonl
              config: {path: out.jsonl}
          sinks:
            - id: out
              stage: discard
              inputs: [numbers]
        """, [
        "pipeline.yaml:6: 'write-jsonl' is a sink, but stage 'numbers' is "
        "listed under spec.sources (move it to spec.sinks)",
    ], id="builtin-wrong-section"),
    pytest.param("""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - id: numbers
              stage: generate
          processors:
            - id: store
              stage: write-jsonl
              config: {path: out.jsonl}
              inputs: [numbers]
          sinks:
            - id: out
              stage: discard
              inputs: [store]
        """, [
        "pipeline.yaml:9: 'write-jsonl' is a sink, but stage 'store' is "
        "listed under spec.processors (move it to spec.sinks)",
    ], id="sink-under-processors"),
    pytest.param("""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          frames:
            max_size: lots
            flush_interval: soon
          sources:
            - id: numbers
              stage: generate
          sinks:
            - id: out
              stage: discard
              inputs: [numbers]
        """, [
        "pipeline.yaml:5: invalid size 'lots' (write a number of bytes or "
        "one with a unit: KiB, MiB, GiB, as in 16MiB)",
        "pipeline.yaml:6: invalid duration 'soon' (write a number with a "
        "unit: ms, s, m, h or d, as in 30s)",
    ], id="bad-size-and-duration"),
    pytest.param("""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - id: numbers
              stage: generate
          sinks:
            - id: out
              stage: discard
              inputs: [numbers]
            - id: out
              stage: discard
              inputs: [numbers]
        """, [
        "pipeline.yaml:11: duplicate stage id 'out' (first used on line 8)",
    ], id="duplicate-id"),
    pytest.param("""
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - id: numbers
              stage: generate
          processors:
            - id: a
              stage: map
              config: {expr: "r"}
              inputs: [c]
            - id: b
              stage: map
              config: {expr: "r"}
              inputs: [a]
            - id: c
              stage: map
              config: {expr: "r"}
              inputs: [b, numbers]
          sinks:
            - id: out
              stage: discard
              inputs: [c]
        """, [
        "pipeline.yaml:12: the stages form a cycle: b -> c -> a -> b (a "
        "pipeline must be a directed acyclic graph)",
    ], id="three-stage-cycle"),
]


@pytest.mark.parametrize("text, problems", SINGLE_MISTAKES)
def test_validate_single_mistake(tmp_path, env, text, problems):
    result = validate(tmp_path, env, text)
    error_count = sum(1 for line in problems
                      if not line.startswith("warning: "))
    closing = (f"{error_count} problem{'s' if error_count != 1 else ''} "
               f"found in pipeline.yaml")

    assert result.returncode == EXIT_USAGE
    assert result.stdout == ""
    assert result.stderr.splitlines() == problems + [closing]


def test_validate_warns_unread_output(tmp_path, env):
    result = validate(tmp_path, env, """
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - id: numbers
              stage: generate
          processors:
            - id: unused
              stage: map
              config: {expr: "r"}
              inputs: [numbers]
          sinks:
            - id: out
              stage: discard
              inputs: [numbers]
        """)

    assert result.returncode == 0
    assert result.stdout == "pipeline.yaml: valid (1 source, 1 processor, " \
                            "1 sink)\n"
    assert result.stderr == ("warning: pipeline.yaml:8: no stage reads the "
                             "output of 'unused', so its records are "
                             "dropped\n")


def test_validate_command_not_executable(tmp_path, env):
    script = tmp_path / "tool.sh"
    script.write_text("#!/bin/sh\nexec cat\n")
    script.chmod(0o644)
    text = """
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - id: numbers
              stage: generate
          processors:
            - id: tool
              command: [./tool.sh]
              codec: lines
              inputs: [numbers]
          sinks:
            - id: out
              stage: discard
              inputs: [tool]
        """

    result = validate(tmp_path, env, text)

    assert result.returncode == EXIT_USAGE
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "pipeline.yaml:9: command is not executable: './tool.sh' (run chmod "
        "+x ./tool.sh)",
        "1 problem found in pipeline.yaml",
    ]

    script.chmod(0o755)
    fixed = run_flowctl(["validate", FILENAME], env, cwd=tmp_path)

    assert fixed.returncode == 0
    assert fixed.stdout == "pipeline.yaml: valid (1 source, 1 processor, " \
                           "1 sink)\n"


def test_validate_command_is_directory(tmp_path, env):
    (tmp_path / "tools").mkdir()
    result = validate(tmp_path, env, """
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - id: numbers
              shell: seq 3
              codec: lines
          sinks:
            - id: out
              command: [./tools]
              codec: lines
              inputs: [numbers]
        """)

    assert result.returncode == EXIT_USAGE
    assert result.stderr.splitlines() == [
        "pipeline.yaml:10: command is a directory: './tools' (name the "
        "program inside it)",
        "1 problem found in pipeline.yaml",
    ]


def test_validate_relative_command_path_missing(tmp_path, env):
    result = validate(tmp_path, env, """
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - id: numbers
              stage: generate
          sinks:
            - id: out
              command: [bin/store]
              codec: jsonl
              inputs: [numbers]
        """)

    assert result.returncode == EXIT_USAGE
    assert result.stderr.splitlines() == [
        "pipeline.yaml:9: command not found: 'bin/store' (check the path; "
        "relative paths start from the stage's cwd)",
        "1 problem found in pipeline.yaml",
    ]


# Interpolation

def test_interpolate_variable_and_default():
    text = (
        "a: ${NAME}\n"
        "b: ${UNSET:-fallback}\n"
        "c: ${EMPTY:-used}\n"
        "d: ${NAME:-ignored}\n"
        "e: prefix-${NAME}-${UNSET:-x}.txt\n"
        "f: $$HOME and ${NAME}\n"
        "g: ${COUNT}\n"
        "h: \"${COUNT}\"\n"
        "i: ${UNSET:-}\n"
    )
    environ = {"NAME": "blue", "EMPTY": "", "COUNT": "12"}

    loaded = document.load(text, FILENAME, environ)

    assert loaded.problems == []
    assert loaded.data == {
        "a": "blue",
        "b": "fallback",
        "c": "used",
        "d": "blue",
        "e": "prefix-blue-x.txt",
        "f": "$HOME and blue",
        "g": 12,
        "h": "12",
        "i": "",
    }


def test_interpolated_value_is_typed_not_parsed():
    text = (
        "a: ${GLOB}\n"
        "b: ${HASH}\n"
        "c: ${QUOTED}\n"
        "d: ${BAR}\n"
        "e: ${COLONS}\n"
        "f: ${NULL}\n"
        "g: ${FLAG}\n"
    )
    environ = {"GLOB": "*.jsonl", "HASH": "out #1.jsonl", "QUOTED": "'q'",
               "BAR": "|", "COLONS": "a: b: c", "NULL": "null",
               "FLAG": "yes"}

    loaded = document.load(text, FILENAME, environ)

    assert loaded.problems == []
    assert loaded.data == {"a": "*.jsonl", "b": "out #1.jsonl", "c": "'q'",
                           "d": "|", "e": "a: b: c", "f": None, "g": True}


def test_interpolated_invalid_date_reported():
    loaded = document.load("a: 1\nb: ${DAY}\n", FILENAME,
                           {"DAY": "2024-02-30"})

    assert [(problem.line, problem.message) for problem in loaded.problems] \
        == [(2, "invalid value '2024-02-30': day is out of range for month")]
    assert loaded.data == {"a": 1, "b": "2024-02-30"}


def test_unbuildable_values_reported():
    text = "a: 2024-02-30\nb: !!int abc\nc: !custom foo\nd: 4\n"

    loaded = document.load(text, FILENAME, {})

    assert [(problem.line, problem.message) for problem in loaded.problems] \
        == [(1, "invalid value '2024-02-30': day is out of range for month"),
            (2, "invalid value 'abc': invalid literal for int() with base "
                "10: 'abc'"),
            (3, "invalid value 'foo': could not determine a constructor "
                "for the tag '!custom'")]
    assert loaded.data == {"a": "2024-02-30", "b": "abc", "c": "foo", "d": 4}


def test_merge_keys_fill_in_missing_keys():
    text = (
        "base: &base {path: a.jsonl, count: 1}\n"
        "extra: &extra {count: 2, rate: 5}\n"
        "one:\n"
        "  <<: *base\n"
        "  count: 3\n"
        "two:\n"
        "  <<: [*base, *extra]\n"
    )

    loaded = document.load(text, FILENAME, {})

    assert loaded.problems == []
    assert loaded.data["one"] == {"count": 3, "path": "a.jsonl"}
    assert loaded.data["two"] == {"path": "a.jsonl", "count": 1, "rate": 5}


def test_merge_key_of_a_number_reported():
    loaded = document.load("a: 1\nb:\n  <<: 5\n", FILENAME, {})

    assert [(problem.line, problem.message) for problem in loaded.problems] \
        == [(3, "a merge key '<<' takes a mapping or a list of mappings")]


def test_validate_unbuildable_value_exits_2(tmp_path, env):
    result = validate(tmp_path, env, """
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - {id: numbers, stage: generate, config: {count: 2024-02-30}}
          sinks:
            - {id: out, stage: discard, inputs: [numbers]}
        """)

    assert result.returncode == EXIT_USAGE
    assert result.stderr.splitlines()[0] == (
        "pipeline.yaml:5: invalid value '2024-02-30': day is out of range "
        "for month")


def test_interpolate_missing_variable_line():
    text = "a: 1\nb:\n  c: ${MISSING}/x\n  d: ${ALSO_MISSING}\n"

    loaded = document.load(text, FILENAME, {})

    assert [(problem.line, problem.message) for problem in loaded.problems] \
        == [(3, "environment variable MISSING is not set"),
            (4, "environment variable ALSO_MISSING is not set")]


def test_interpolate_no_shell(tmp_path):
    marker = tmp_path / "touched"
    text = (f"a: ${{NAME:-$(touch {marker})}}\n"
            f"b: \"${{NAME:-`touch {marker}`}}\"\n")

    loaded = document.load(text, FILENAME, {})

    assert loaded.data == {"a": f"$(touch {marker})",
                           "b": f"`touch {marker}`"}
    assert not marker.exists()


def test_validate_missing_variable(tmp_path, env):
    env.pop("FLOWCTL_TEST_OUT_DIR", None)
    result = validate(tmp_path, env, """
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - id: numbers
              stage: generate
          sinks:
            - id: out
              stage: write-jsonl
              config:
                path: ${FLOWCTL_TEST_OUT_DIR}/numbers.jsonl
              inputs: [numbers]
        """)

    assert result.returncode == EXIT_USAGE
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "pipeline.yaml:11: environment variable FLOWCTL_TEST_OUT_DIR is not "
        "set (set it, or give a default as ${FLOWCTL_TEST_OUT_DIR:-value})",
        "1 problem found in pipeline.yaml",
    ]


INTERPOLATED = """
    apiVersion: flowctl/v1
    kind: Pipeline
    spec:
      sources:
        - id: numbers
          stage: generate
          config:
            count: ${FLOWCTL_TEST_COUNT}
      processors:
        - id: label
          stage: map
          config:
            expr: "{'seq': r['seq'], 'tag': '${FLOWCTL_TEST_TAG:-none}'}"
          inputs: [numbers]
      sinks:
        - id: out
          stage: write-jsonl
          config:
            path: ${FLOWCTL_TEST_OUT_DIR:-results}/numbers.jsonl
          inputs: [label]
"""


def test_run_interpolates_defaults(tmp_path, env):
    env["FLOWCTL_TEST_COUNT"] = "2"
    env.pop("FLOWCTL_TEST_TAG", None)
    env.pop("FLOWCTL_TEST_OUT_DIR", None)
    write_pipeline(tmp_path / FILENAME, INTERPOLATED)

    result = run_flowctl(["run", FILENAME], env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    output = tmp_path / "results" / "numbers.jsonl"
    assert output.read_text() == ('{"seq":0,"tag":"none"}\n'
                                  '{"seq":1,"tag":"none"}\n')


def test_run_interpolates_set_variables(tmp_path, env):
    env["FLOWCTL_TEST_COUNT"] = "3"
    env["FLOWCTL_TEST_TAG"] = "blue"
    env["FLOWCTL_TEST_OUT_DIR"] = str(tmp_path / "chosen")
    write_pipeline(tmp_path / FILENAME, INTERPOLATED)

    result = run_flowctl(["run", FILENAME], env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    output = tmp_path / "chosen" / "numbers.jsonl"
    assert output.read_text() == ('{"seq":0,"tag":"blue"}\n'
                                  '{"seq":1,"tag":"blue"}\n'
                                  '{"seq":2,"tag":"blue"}\n')
    assert not (tmp_path / "results").exists()


# Examples and the starter file

def test_examples_validate(env):
    examples = sorted(path.relative_to(REPO).as_posix()
                      for path in (REPO / "examples").glob("*.yaml"))
    assert examples, "examples/ has no pipeline files"

    result = run_flowctl(["validate", *examples], env, cwd=REPO)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    reported = [line.split(": valid (")[0]
                for line in result.stdout.splitlines()]
    assert reported == examples


def test_init_writes_starter(tmp_path, env):
    result = run_flowctl(["init"], env, cwd=tmp_path)

    assert result.returncode == 0
    assert result.stdout == ("wrote pipeline.yaml; run it with: flowctl run "
                             "pipeline.yaml\n")
    assert (tmp_path / "pipeline.yaml").is_file()


def test_init_file_validates(tmp_path, env):
    run_flowctl(["init"], env, cwd=tmp_path)

    result = run_flowctl(["validate", FILENAME], env, cwd=tmp_path)

    assert result.returncode == 0
    assert result.stdout == "pipeline.yaml: valid (1 source, 2 processors, " \
                            "2 sinks)\n"


def test_init_file_has_no_warnings(tmp_path, env):
    run_flowctl(["init"], env, cwd=tmp_path)

    result = run_flowctl(["validate", FILENAME], env, cwd=tmp_path)

    assert result.stderr == ""


def test_init_file_runs(tmp_path, env):
    run_flowctl(["init"], env, cwd=tmp_path)

    result = run_flowctl(["run", FILENAME], env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "500\n"
    expected = "".join(json.dumps({"n": n, "square": n * n},
                                  separators=(",", ":")) + "\n"
                       for n in range(0, 1000, 2))
    assert (tmp_path / "out" / "squares.jsonl").read_text() == expected


def test_init_keeps_existing_file(tmp_path, env):
    existing = tmp_path / "pipeline.yaml"
    existing.write_text("mine\n")

    result = run_flowctl(["init"], env, cwd=tmp_path)

    assert result.returncode == EXIT_USAGE
    assert result.stderr == ("flowctl: pipeline.yaml already exists; use "
                             "--force to overwrite it\n")
    assert existing.read_text() == "mine\n"


def test_init_force_overwrites(tmp_path, env):
    existing = tmp_path / "etl.yaml"
    existing.write_text("mine\n")

    result = run_flowctl(["init", "--force", "etl.yaml"], env, cwd=tmp_path)

    assert result.returncode == 0
    assert result.stdout == "wrote etl.yaml; run it with: flowctl run etl.yaml\n"
    assert existing.read_text().startswith("# A starter pipeline")
    assert not (tmp_path / "pipeline.yaml").exists()


def test_two_stages_on_stdout_rejected(tmp_path, env):
    pipeline = write_pipeline(tmp_path / "p.yaml", """
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - {id: numbers, stage: generate, config: {count: 3}}
          sinks:
            - {id: a, stage: write-jsonl, config: {path: "-"}, inputs: [numbers]}
            - {id: b, stage: write-csv, config: {path: "-"}, inputs: [numbers]}
        """)
    result = run_flowctl(["validate", str(pipeline)], env)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == (
        f"{pipeline}:8: stage 'b' uses flowctl's standard output, which "
        f"stage 'a' already uses (give one of them a file path)")


def test_msgpack_command_sinks_share_nothing(tmp_path, env):
    pipeline = write_pipeline(tmp_path / "p.yaml", """
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - {id: numbers, stage: generate, config: {count: 3}}
          sinks:
            - {id: a, command: [python3, a.py], inputs: [numbers]}
            - {id: b, command: [python3, b.py], inputs: [numbers]}
            - {id: c, command: [cat], codec: lines, inputs: [numbers]}
        """)
    (tmp_path / "a.py").write_text("")
    (tmp_path / "b.py").write_text("")
    result = run_flowctl(["validate", str(pipeline)], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_quoted_number_from_environment(tmp_path, env):
    pipeline = write_pipeline(tmp_path / "p.yaml", """
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - {id: numbers, stage: generate, config: {count: "${COUNT:-3}"}}
          sinks:
            - {id: out, stage: write-jsonl, config: {path: "-"}, inputs: [numbers]}
        """)
    result = run_flowctl(["run", str(pipeline)], {**env, "COUNT": "2"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ['{"seq":0}', '{"seq":1}']


def test_alias_expansion_is_bounded(tmp_path, env):
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 9):
        previous, current = chr(ord("a") + level - 1), chr(ord("a") + level)
        lines.append(f"{current}: &{current} [" + ", ".join(
            [f"*{previous}"] * 8) + "]")
    pipeline = tmp_path / "laughs.yaml"
    pipeline.write_text("\n".join(lines) + "\n")
    result = run_flowctl(["validate", str(pipeline)], env, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == (
        f"{pipeline}:1: the YAML expands to more than 100,000 values "
        f"(check the aliases, written *name, in the file)")


# The checkpoint section

# A valid pipeline that ends in checkpoint:, so the section's first line is 9.
CHECKPOINT_HEAD = """\
apiVersion: flowctl/v1
kind: Pipeline
spec:
  sources:
    - {id: numbers, stage: generate, config: {count: 3}}
  sinks:
    - {id: out, stage: discard, inputs: [numbers]}
  checkpoint:
"""


def load_with_checkpoint(section: str):
    """Validate CHECKPOINT_HEAD with `section` as spec.checkpoint.

    Return the pipeline and the problems and warnings, each formatted as
    flowctl validate prints it.
    """
    body = textwrap.dedent(section).lstrip("\n")
    text = CHECKPOINT_HEAD + textwrap.indent(body, "    ")
    pipeline, problems, warnings = validate_document(
        document.load(text, FILENAME, {}))
    return (pipeline, [problem.format(FILENAME) for problem in problems],
            [warning.format(FILENAME) for warning in warnings])


FULL_CHECKPOINT = """
    enabled: true
    interval: 45s
    strategy: adaptive
    adaptive: {min_interval: 2s, max_interval: 5m, target_share: 4%}
    storage: {type: local, directory: ./state, compression: zstd}
    directory: state
    include: [source_offsets, metrics]
    triggers: {records: 10000, on_shutdown: false}
    retain: 5
    recovery:
      mode: manual
      strategy: {missing: fail, corrupted: start-fresh, partial: fail}
      validate: {schema: false, integrity: true, age: 24h}
    compression: true
    distributed: {enabled: false, coordination: redis,
                  partition_strategy: hash, worker_id: worker-1}
    barriers: {enabled: true, timeout: 1m, min_workers: 2}
"""


def test_checkpoint_full_section():
    pipeline, problems, warnings = load_with_checkpoint(FULL_CHECKPOINT)

    assert problems == []
    assert warnings == []
    assert pipeline.checkpoint == CheckpointConfig(
        enabled=True, interval=45.0, strategy="adaptive", storage="local",
        directory="./state", include=("source_offsets", "metrics"),
        records=10000, on_shutdown=False, retain=5, compression="zstd",
        timeout=60.0,
        recovery=Recovery(mode="manual", missing="fail",
                          corrupted="start-fresh", partial="fail",
                          validate_schema=False, validate_integrity=True,
                          max_age=86400.0),
        adaptive=Adaptive(min_interval=2.0, max_interval=300.0,
                          target_share=0.04))


def test_checkpoint_full_section_validates(tmp_path, env):
    result = validate(tmp_path, env, CHECKPOINT_HEAD + textwrap.indent(
        textwrap.dedent(FULL_CHECKPOINT), "    "))

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_checkpoint_absent_is_off():
    text = CHECKPOINT_HEAD.replace("  checkpoint:\n", "")
    pipeline, problems, _ = validate_document(
        document.load(text, FILENAME, {}))

    assert problems == []
    assert pipeline.checkpoint == CheckpointConfig()
    assert pipeline.checkpoint.enabled is False


def test_checkpoint_empty_section_is_on():
    pipeline, problems, _ = load_with_checkpoint("")

    assert problems == []
    assert pipeline.checkpoint == CheckpointConfig(enabled=True)


def test_checkpoint_enabled_false():
    pipeline, problems, _ = load_with_checkpoint("""
        enabled: false
        interval: 10s
    """)

    assert problems == []
    assert pipeline.checkpoint.enabled is False
    assert pipeline.checkpoint.interval == 10.0


def test_checkpoint_reports_every_problem(tmp_path, env):
    result = validate(tmp_path, env, """
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - {id: numbers, stage: generate}
          sinks:
            - {id: out, stage: discard, inputs: [numbers]}
          checkpoint:
            enabled: yes please
            interval: soon
            strategy: adaptiv
            include: [source_offsets, metrcs, source_offsets]
            triggers: {records: 0, on_shutdwn: true}
            retain: 0
            recovery:
              mode: automatic
              strategy: {missing: skip}
              validate: {schema: maybe, age: forever}
            compression: gzip
            distributed: {enabled: true}
            barriers: {enabled: false, timeout: -1, min_workers: 0}
        """)

    assert result.returncode == EXIT_USAGE
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "pipeline.yaml:9: spec.checkpoint.enabled must be true or false, "
        "not 'yes please'",
        "pipeline.yaml:10: spec.checkpoint.interval must be a duration, not "
        "'soon' (write a number with a unit: ms, s, m, h or d, as in 30s)",
        "pipeline.yaml:11: spec.checkpoint.strategy must be one of fixed, "
        "adaptive, not 'adaptiv' (did you mean 'adaptive'?)",
        "pipeline.yaml:12: each entry of spec.checkpoint.include must be one "
        "of source_offsets, processor_state, metrics, errors, not 'metrcs' "
        "(did you mean 'metrics'?)",
        "pipeline.yaml:12: spec.checkpoint.include lists 'source_offsets' "
        "twice",
        "pipeline.yaml:13: unknown key 'on_shutdwn' in "
        "spec.checkpoint.triggers (did you mean 'on_shutdown'?)",
        "pipeline.yaml:13: spec.checkpoint.triggers.records must be a "
        "positive integer, not 0",
        "pipeline.yaml:14: spec.checkpoint.retain must be a positive "
        "integer, not 0",
        "pipeline.yaml:16: spec.checkpoint.recovery.mode must be one of "
        "auto, manual, off, not 'automatic' (did you mean 'auto'?)",
        "pipeline.yaml:17: spec.checkpoint.recovery.strategy.missing must be "
        "one of start-fresh, fail, not 'skip'",
        "pipeline.yaml:18: spec.checkpoint.recovery.validate.schema must be "
        "true or false, not 'maybe'",
        "pipeline.yaml:18: spec.checkpoint.recovery.validate.age must be a "
        "duration, not 'forever' (write a number with a unit: ms, s, m, h "
        "or d, as in 30s)",
        "pipeline.yaml:19: spec.checkpoint.compression must be one of none, "
        "zstd, not 'gzip'",
        "pipeline.yaml:20: distributed checkpointing is not available in "
        "this version of flowctl (remove spec.checkpoint.distributed, or set "
        "enabled: false)",
        "pipeline.yaml:21: unaligned checkpoints are not available; barriers "
        "are always aligned (remove barriers.enabled, or set it to true)",
        "pipeline.yaml:21: spec.checkpoint.barriers.timeout must be longer "
        "than 0s, not -1",
        "pipeline.yaml:21: spec.checkpoint.barriers.min_workers must be a "
        "positive integer, not 0",
        "17 problems found in pipeline.yaml",
    ]


def test_checkpoint_unknown_key_did_you_mean():
    _, problems, _ = load_with_checkpoint("""
        interval: 30s
        retian: 3
    """)

    assert problems == [
        "pipeline.yaml:10: unknown key 'retian' in spec.checkpoint (did you "
        "mean 'retain'?)",
    ]


def test_checkpoint_nested_unknown_key():
    _, problems, _ = load_with_checkpoint("""
        recovery:
          strategy: {corupted: fail}
    """)

    assert problems == [
        "pipeline.yaml:10: unknown key 'corupted' in "
        "spec.checkpoint.recovery.strategy (did you mean 'corrupted'?)",
    ]


@pytest.mark.parametrize("storage, line", [
    ("storage: redis", 9),
    ("storage: {type: redis, url: 'redis://127.0.0.1:6379'}", 9),
    ("storage:\n  type: redis", 10),
], ids=["name", "mapping", "type-line"])
def test_checkpoint_redis_not_available(storage, line):
    _, problems, _ = load_with_checkpoint(storage)

    assert problems == [
        f"pipeline.yaml:{line}: redis storage is not available in this "
        f"version of flowctl (use storage: local)",
    ]


def test_checkpoint_etcd_not_available():
    _, problems, _ = load_with_checkpoint("storage: etcd")

    assert problems == [
        "pipeline.yaml:9: etcd storage is not available in this version of "
        "flowctl (use storage: local)",
    ]


def test_checkpoint_unknown_storage():
    _, problems, _ = load_with_checkpoint("storage: lcoal")

    assert problems == [
        "pipeline.yaml:9: unknown storage type 'lcoal' (did you mean "
        "'local'?)",
    ]


@pytest.mark.parametrize("written, compression", [
    ("true", "zstd"),
    ("false", "none"),
    ("zstd", "zstd"),
    ("none", "none"),
])
def test_checkpoint_compression(written, compression):
    pipeline, problems, _ = load_with_checkpoint(f"compression: {written}")

    assert problems == []
    assert pipeline.checkpoint.compression == compression


def test_checkpoint_compression_default_none():
    pipeline, _, _ = load_with_checkpoint("interval: 30s")

    assert pipeline.checkpoint.compression == "none"


def test_checkpoint_triggers_interval_overrides():
    pipeline, problems, warnings = load_with_checkpoint("""
        interval: 30s
        triggers: {interval: 1m}
    """)

    assert problems == []
    assert pipeline.checkpoint.interval == 60.0
    assert warnings == [
        "pipeline.yaml:9: spec.checkpoint.interval is ignored because "
        "spec.checkpoint.triggers.interval is set (remove one of them)",
    ]


def test_checkpoint_triggers_interval_alone():
    pipeline, problems, warnings = load_with_checkpoint(
        "triggers: {interval: 2m, records: 500}")

    assert problems == []
    assert warnings == []
    assert pipeline.checkpoint.interval == 120.0
    assert pipeline.checkpoint.records == 500


def test_checkpoint_directories_differ():
    _, problems, _ = load_with_checkpoint("""
        directory: ./one
        storage: {type: local, directory: ./two}
    """)

    assert problems == [
        "pipeline.yaml:10: spec.checkpoint.storage.directory './two' "
        "differs from spec.checkpoint.directory './one' (give the directory "
        "in one place)",
    ]


def test_checkpoint_same_directory_twice():
    pipeline, problems, _ = load_with_checkpoint("""
        directory: state
        storage: {type: local, directory: ./state/}
    """)

    assert problems == []
    assert pipeline.checkpoint.directory == "./state/"


def test_checkpoint_storage_without_type_is_local():
    pipeline, problems, _ = load_with_checkpoint(
        "storage: {directory: /var/lib/flowctl}")

    assert problems == []
    assert pipeline.checkpoint.storage == "local"
    assert pipeline.checkpoint.directory == "/var/lib/flowctl"


@pytest.mark.parametrize("written, share", [
    ("5%", 0.05),
    ("'12.5%'", 0.125),
    ("0.2", 0.2),
])
def test_checkpoint_target_share(written, share):
    pipeline, problems, _ = load_with_checkpoint(f"""
        strategy: adaptive
        adaptive: {{target_share: {written}}}
    """)

    assert problems == []
    assert pipeline.checkpoint.adaptive.target_share == pytest.approx(share)


@pytest.mark.parametrize("written", ["0", "1", "100%", "0%", "-5%", "true",
                                     "lots", "'5'"])
def test_checkpoint_target_share_invalid(written):
    _, problems, _ = load_with_checkpoint(f"""
        strategy: adaptive
        adaptive: {{target_share: {written}}}
    """)

    assert len(problems) == 1
    assert problems[0].startswith(
        "pipeline.yaml:10: spec.checkpoint.adaptive.target_share must be a "
        "number between 0 and 1 or a percentage, not ")


def test_checkpoint_adaptive_bounds_reversed():
    _, problems, _ = load_with_checkpoint("""
        strategy: adaptive
        adaptive:
          min_interval: 5m
          max_interval: 1m
    """)

    assert problems == [
        "pipeline.yaml:11: spec.checkpoint.adaptive.min_interval 300s is "
        "longer than spec.checkpoint.adaptive.max_interval 60s (make "
        "min_interval at most max_interval)",
    ]


def test_checkpoint_adaptive_min_above_default_max():
    _, problems, _ = load_with_checkpoint("""
        strategy: adaptive
        adaptive: {min_interval: 20m}
    """)

    assert problems == [
        "pipeline.yaml:10: spec.checkpoint.adaptive.min_interval 1200s is "
        "longer than the default max_interval 600s (make min_interval at "
        "most max_interval)",
    ]


def test_checkpoint_adaptive_with_fixed_warns():
    pipeline, problems, warnings = load_with_checkpoint(
        "adaptive: {min_interval: 5s}")

    assert problems == []
    assert pipeline.checkpoint.adaptive.min_interval == 5.0
    assert warnings == [
        "pipeline.yaml:9: spec.checkpoint.adaptive has no effect with "
        "strategy fixed (set strategy: adaptive, or remove adaptive)",
    ]


def test_checkpoint_distributed_without_enabled():
    _, problems, _ = load_with_checkpoint(
        "distributed: {coordination: etcd, worker_id: 3}")

    assert problems == [
        "pipeline.yaml:9: distributed checkpointing is not available in this "
        "version of flowctl (remove spec.checkpoint.distributed, or set "
        "enabled: false)",
    ]


@pytest.mark.parametrize("section, problem", [
    ("true", "pipeline.yaml:8: spec.checkpoint must be a mapping, not bool "
             "(write, for example, checkpoint: {enabled: true})"),
    ("[interval]", "pipeline.yaml:8: spec.checkpoint must be a mapping, not "
                   "list (write, for example, checkpoint: {enabled: true})"),
])
def test_checkpoint_section_not_mapping(section, problem):
    text = CHECKPOINT_HEAD.replace("checkpoint:\n", f"checkpoint: {section}\n")
    _, problems, _ = validate_document(document.load(text, FILENAME, {}))

    assert [item.format(FILENAME) for item in problems] == [problem]


@pytest.mark.parametrize("section, problem", [
    ("interval: 0s", "spec.checkpoint.interval must be longer than 0s, "
                     "not '0s'"),
    ("retain: 2.5", "spec.checkpoint.retain must be a positive integer, "
                    "not 2.5"),
    ("retain: true", "spec.checkpoint.retain must be a positive integer, "
                     "not True"),
    ("directory: 42", "spec.checkpoint.directory must be a directory path, "
                      "not 42"),
    ("include: metrics", "spec.checkpoint.include must be a non-empty list, "
                         "not 'metrics' (list some of source_offsets, "
                         "processor_state, metrics, errors)"),
    ("include: []", "spec.checkpoint.include must be a non-empty list, not "
                    "[] (list some of source_offsets, processor_state, "
                    "metrics, errors)"),
    ("storage: 3", "spec.checkpoint.storage must be a storage type or a "
                   "mapping, not 3 (write storage: local)"),
    ("triggers: 1m", "spec.checkpoint.triggers must be a mapping, not str"),
    ("triggers: {on_shutdown: 1}", "spec.checkpoint.triggers.on_shutdown "
                                   "must be true or false, not 1"),
    ("recovery: {validate: {age: 0}}", "spec.checkpoint.recovery.validate."
                                       "age must be longer than 0s, not 0"),
    ("distributed: {enabled: false, worker_id: [1]}",
     "spec.checkpoint.distributed.worker_id must be a string or an "
     "integer, not [1]"),
    ("distributed: {enabled: false, coordination: 5}",
     "spec.checkpoint.distributed.coordination must be a string, not 5"),
    ("barriers: {timeout: never}", "spec.checkpoint.barriers.timeout must "
                                   "be a duration, not 'never' (write a "
                                   "number with a unit: ms, s, m, h or d, "
                                   "as in 30s)"),
])
def test_checkpoint_wrong_type(section, problem):
    _, problems, _ = load_with_checkpoint(section)

    assert problems == [f"pipeline.yaml:9: {problem}"]
