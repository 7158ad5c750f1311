"""`flowctl validate`: every problem of a pipeline file, each at its line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, run_flowctl, write_pipeline
from flowctl import document

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
