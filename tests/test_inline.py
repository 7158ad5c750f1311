"""The inline form: `flowctl run -e 'SOURCE | PROCESSOR | SINK'`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import STAGES, run_flowctl
from flowctl.inline import parse_inline

EXIT_USAGE = 2
FOREIGN_STAGE = STAGES / "foreign_stage.py"


def run_inline(expression: str, env: dict[str, str], cwd: Path
               ) -> subprocess.CompletedProcess:
    return run_flowctl(["run", "-e", expression], env, cwd=cwd)


def started_stages(stderr: str) -> list[str]:
    """Stage ids from the run log's `stage=ID started` lines."""
    return sorted(re.findall(r" stage=(\S+) started pid=", stderr))


def test_generate_map_prints_json_lines(tmp_path, env):
    result = run_inline(
        "generate count=5 | map expr=\"{'n': r['seq'], 'sq': r['seq'] ** 2}\"",
        env, tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout == ('{"n":0,"sq":0}\n'
                             '{"n":1,"sq":1}\n'
                             '{"n":2,"sq":4}\n'
                             '{"n":3,"sq":9}\n'
                             '{"n":4,"sq":16}\n')


def test_source_alone_prints_records(tmp_path, env):
    result = run_inline("generate count=3", env, tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout == '{"seq":0}\n{"seq":1}\n{"seq":2}\n'


def test_values_are_yaml_scalars(tmp_path, env):
    result = run_inline(
        "generate count=2 | map expr=\"[r['seq'], type(r['seq']).__name__]\"",
        env, tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout == '[0,"int"]\n[1,"int"]\n'


def test_string_keys_keep_text(tmp_path, env):
    result = run_inline("generate count=2 | filter where=True | map expr=7",
                        env, tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "7\n7\n"


def test_exec_lines_codec(tmp_path, env):
    (tmp_path / "words.txt").write_text("hello\nflow world\n")

    result = run_inline(
        "read-lines path=words.txt | exec tr a-z A-Z | write-jsonl path=-",
        env, tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout == '{"line":"HELLO"}\n{"line":"FLOW WORLD"}\n'


def test_exec_lines_codec_sends_json(tmp_path, env):
    result = run_inline("generate count=2 | exec tr a-z A-Z | map expr=r",
                        env, tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout == ('{"line":"{\\"SEQ\\":0}"}\n'
                             '{"line":"{\\"SEQ\\":1}"}\n')


def test_exec_jsonl_codec(tmp_path, env):
    result = run_inline(
        "generate count=3 | exec --codec jsonl cat | map expr=\"r['seq'] * 10\"",
        env, tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "0\n10\n20\n"


def test_exec_codec_equals_form(tmp_path, env):
    result = run_inline(
        "generate count=2 | exec --codec=jsonl cat | write-jsonl path=-",
        env, tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout == '{"seq":0}\n{"seq":1}\n'


def test_exec_csv_codec(tmp_path, env):
    result = run_inline(
        "generate count=3 | exec --codec csv sort -r | write-jsonl path=-",
        env, tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout == '{"seq":"2"}\n{"seq":"1"}\n{"seq":"0"}\n'


def test_exec_last_writes_stdout(tmp_path, env):
    result = run_inline("generate count=7 | exec wc -l", env, tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "7\n"


def test_exec_last_jsonl_writes_stdout(tmp_path, env):
    result = run_inline("generate count=2 | exec --codec jsonl cat", env,
                        tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout == '{"seq":0}\n{"seq":1}\n'


def test_exec_as_source(tmp_path, env):
    result = run_inline("exec seq 3 | map expr=\"int(r['line']) * 2\"", env,
                        tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "2\n4\n6\n"


def test_exec_alone_prints_records(tmp_path, env):
    result = run_inline("exec seq 2", env, tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout == '{"line":"1"}\n{"line":"2"}\n'


def test_exec_msgpack_last_gets_default_sink(tmp_path, env):
    result = run_inline(
        f"generate count=3 | exec --codec msgpack {sys.executable} "
        f"{FOREIGN_STAGE}", env, tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout == '{"seq":0}\n{"seq":1}\n{"seq":2}\n'


def test_hash_inside_word_is_text(tmp_path, env):
    (tmp_path / "notes#1.txt").write_text("a#b\nb#c\nc\n")

    result = run_inline(
        "read-lines path=notes#1.txt | exec grep -v b#c "
        "| write-jsonl path=kept.jsonl", env, tmp_path)

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "kept.jsonl").read_text() == (
        '{"line":"a#b"}\n{"line":"c"}\n')


def test_quoted_bar_is_an_argument(tmp_path, env):
    (tmp_path / "rows.txt").write_text("a|b|c\nd|e|f\n")

    result = run_inline(
        "read-lines path=rows.txt | exec cut -d \"|\" -f 2 "
        "| exec tr '|' ','", env, tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "b\ne\n"


def test_values_typed_not_parsed():
    doc = parse_inline("generate count=null | map expr=r "
                       "| write-jsonl path=*.jsonl nulls='a #b'")

    assert doc.data["spec"]["sources"][0]["config"] == {"count": None}
    assert doc.data["spec"]["sinks"][0]["config"] == {
        "path": "*.jsonl", "nulls": "a #b"}


def test_list_key_reads_flow_sequence():
    doc = parse_inline("read-csv path=x.csv types=auto nulls='[\"\", NA]' "
                       "| write-csv path=- columns=[b,a]")

    assert doc.data["spec"]["sources"][0]["config"] == {
        "path": "x.csv", "types": "auto", "nulls": ["", "NA"]}
    assert doc.data["spec"]["sinks"][0]["config"] == {
        "path": "-", "columns": ["b", "a"]}


def test_duplicate_key_reported(tmp_path, env):
    result = run_inline("generate count=1 count=2", env, tmp_path)

    assert result.returncode == EXIT_USAGE
    assert result.stderr.splitlines() == [
        "-e segment 1: duplicate key 'count' ('generate' takes each key "
        "once)",
        "1 problem found in -e",
    ]


def test_repeated_names_numbered(tmp_path, env):
    result = run_inline(
        "generate count=4 | map expr=\"r['seq']\" | map expr=r+1 "
        "| exec cat | exec cat | map expr=\"int(r['line']) * 10\"",
        env, tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "10\n20\n30\n40\n"
    assert started_stages(result.stderr) == [
        "cat", "cat-2", "generate", "map", "map-2", "map-3", "write-jsonl"]


def test_repeated_names_numbered_in_document():
    doc = parse_inline("generate | map expr=r | map expr=r | discard")

    processors = doc.data["spec"]["processors"]
    assert [entry["id"] for entry in processors] == ["map", "map-2"]
    assert [entry["inputs"] for entry in processors] == [["generate"],
                                                         ["map"]]
    assert doc.data["spec"]["sinks"] == [
        {"id": "discard", "stage": "discard", "inputs": ["map-2"]}]


def test_exec_id_is_program_name(tmp_path, env):
    doc = parse_inline("generate | exec /usr/bin/tr a-z A-Z | discard")

    assert doc.data["spec"]["processors"] == [
        {"id": "tr", "command": ["/usr/bin/tr", "a-z", "A-Z"],
         "codec": "lines", "inputs": ["generate"]}]


def test_errors_reported_by_segment(tmp_path, env):
    result = run_inline(
        "generate count=3 | | mpa expr=r | filter foo | exec", env, tmp_path)

    assert result.returncode == EXIT_USAGE
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "-e segment 2: empty segment between '|' signs",
        "-e segment 3: unknown built-in stage 'mpa' (did you mean 'map'?)",
        "-e segment 4: expected key=value after 'filter', got 'foo'",
        "-e segment 4: 'filter' stage 'filter' needs config key 'where' "
        "(Python expression over the record r)",
        "-e segment 5: 'exec' needs a program to run",
        "5 problems found in -e",
    ]


def test_exec_errors_reported_by_segment(tmp_path, env):
    result = run_inline(
        "generate count=2 | exec --codec yaml cat | exec flowctl-no-such-program",
        env, tmp_path)

    assert result.returncode == EXIT_USAGE
    assert result.stderr.splitlines() == [
        "-e segment 2: unknown codec 'yaml' (use one of msgpack, lines, "
        "jsonl, csv)",
        "-e segment 3: command not found: 'flowctl-no-such-program' "
        "(install it or check PATH)",
        "2 problems found in -e",
    ]


def test_config_errors_reported_by_segment(tmp_path, env):
    result = run_inline(
        "generate cuont=3 | filter where=\"r['seq'] > 0\" "
        "| write-sqlite path=x.db",
        env, tmp_path)

    assert result.returncode == EXIT_USAGE
    assert result.stderr.splitlines() == [
        "-e segment 1: unknown config key 'cuont' for 'generate' (did you "
        "mean 'count'?)",
        "-e segment 3: 'write-sqlite' stage 'write-sqlite' needs config key "
        "'table' (table name, created if missing)",
        "2 problems found in -e",
    ]


def test_processor_first_reported(tmp_path, env):
    result = run_inline("map expr=r | discard", env, tmp_path)

    assert result.returncode == EXIT_USAGE
    assert result.stderr.splitlines() == [
        "-e segment 1: processor 'map' has no inputs (add inputs: [ID] "
        "naming the stages it reads)",
        "1 problem found in -e",
    ]


def test_sink_in_middle_reported(tmp_path, env):
    result = run_inline("generate count=1 | discard | map expr=r", env,
                        tmp_path)

    assert result.returncode == EXIT_USAGE
    assert result.stderr.splitlines() == [
        "-e segment 3: stage 'map' reads from sink 'discard', but sinks "
        "have no output (list it under spec.processors if it should emit "
        "records)",
        "1 problem found in -e",
    ]


def test_unclosed_quote_reported(tmp_path, env):
    result = run_inline("generate | map expr=\"r['seq']", env, tmp_path)

    assert result.returncode == EXIT_USAGE
    assert result.stderr.splitlines() == [
        "-e segment 2: cannot split the segment: No closing quotation",
        "1 problem found in -e",
    ]


def test_empty_expression_reported(tmp_path, env):
    result = run_inline("  ", env, tmp_path)

    assert result.returncode == EXIT_USAGE
    assert result.stderr.splitlines() == [
        "-e segment 1: the pipeline is empty",
        "1 problem found in -e",
    ]


def test_file_and_expression_rejected(tmp_path, env):
    result = run_flowctl(["run", "p.yaml", "-e", "generate | discard"], env,
                         cwd=tmp_path)

    assert result.returncode == EXIT_USAGE
    assert result.stderr.splitlines()[-1] == (
        "Error: give a pipeline FILE or -e PIPELINE, not both and not "
        "neither")


def test_exec_success_exit_codes_option(env):
    result = run_flowctl(
        ["run", "-e", "generate count=3 | exec --success-exit-codes 0,1 "
                      "grep nomatch"], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
