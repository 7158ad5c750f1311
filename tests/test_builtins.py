"""Each built-in stage, run end to end by `flowctl run` on small real files."""

from __future__ import annotations

import gzip
import json
import re
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path
from typing import Any

import yaml

from conftest import run_flowctl

EXIT_FAILED = 1


def run_chain(tmp_path: Path, env: dict[str, str],
              *stages: tuple[str, dict[str, Any]]
              ) -> subprocess.CompletedProcess:
    """Run built-in stages as a chain: a source, processors, then a sink.

    Each stage is a (name, config) pair and gets the id source, step1,
    step2, ... or sink.  The pipeline file and relative paths live in
    tmp_path.
    """
    entries = []
    for index, (name, config) in enumerate(stages):
        if index == 0:
            stage_id = "source"
        elif index == len(stages) - 1:
            stage_id = "sink"
        else:
            stage_id = f"step{index}"
        entry: dict[str, Any] = {"id": stage_id, "stage": name}
        if config:
            entry["config"] = config
        if entries:
            entry["inputs"] = [entries[-1]["id"]]
        entries.append(entry)
    document = {
        "apiVersion": "flowctl/v1",
        "kind": "Pipeline",
        "spec": {"sources": entries[:1], "processors": entries[1:-1],
                 "sinks": entries[-1:]},
    }
    if not document["spec"]["processors"]:
        del document["spec"]["processors"]
    (tmp_path / "pipeline.yaml").write_text(
        yaml.safe_dump(document, sort_keys=False))
    return run_flowctl(["run", "pipeline.yaml"], env, cwd=tmp_path)


def printed(result: subprocess.CompletedProcess) -> list[Any]:
    """The records a run printed on stdout, one JSON value per line."""
    return [json.loads(line) for line in result.stdout.splitlines()]


def failure_line(result: subprocess.CompletedProcess) -> str:
    """flowctl's closing message, without the log path it ends with."""
    last = result.stderr.splitlines()[-1]
    return re.sub(r"; see \S+\.log$", "", last)


STDOUT = ("write-jsonl", {"path": "-"})


# read-lines

def test_read_lines_plain_file(tmp_path, env):
    (tmp_path / "in.txt").write_bytes(
        b"alpha\n\n  spaced  \ncrlf\r\ncaf\xc3\xa9\nlast without newline")

    result = run_chain(tmp_path, env, ("read-lines", {"path": "in.txt"}),
                       STDOUT)

    assert result.returncode == 0, result.stderr
    assert printed(result) == [
        {"line": "alpha"},
        {"line": ""},
        {"line": "  spaced  "},
        {"line": "crlf"},
        {"line": "café"},
        {"line": "last without newline"},
    ]


def test_read_lines_gzip_file(tmp_path, env):
    (tmp_path / "in.txt.gz").write_bytes(gzip.compress(b"one\ntwo\nthree"))

    result = run_chain(tmp_path, env, ("read-lines", {"path": "in.txt.gz"}),
                       STDOUT)

    assert result.returncode == 0, result.stderr
    assert printed(result) == [{"line": "one"}, {"line": "two"},
                               {"line": "three"}]


def test_read_lines_invalid_utf8(tmp_path, env):
    (tmp_path / "in.txt").write_bytes(b"ok\nbad \xff byte\n")

    result = run_chain(tmp_path, env, ("read-lines", {"path": "in.txt"}),
                       STDOUT)

    assert result.returncode == 0, result.stderr
    assert printed(result) == [{"line": "ok"}, {"line": "bad \ufffd byte"}]


def test_read_lines_empty_file(tmp_path, env):
    (tmp_path / "in.txt").write_bytes(b"")

    result = run_chain(tmp_path, env, ("read-lines", {"path": "in.txt"}),
                       STDOUT)

    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_read_lines_missing_file(tmp_path, env):
    result = run_chain(tmp_path, env, ("read-lines", {"path": "absent.txt"}),
                       ("discard", {}))

    assert result.returncode == EXIT_FAILED
    assert failure_line(result) == (
        "flowctl: stage 'source' failed at start: FileNotFoundError: [Errno 2] No "
        "such file or directory: 'absent.txt'")


# read-jsonl

def test_read_jsonl_records(tmp_path, env):
    (tmp_path / "in.jsonl").write_text(
        '{"id": 1, "tags": ["a", "b"], "name": "café"}\n'
        "\n"
        "   \n"
        "[1, 2.5, null]\n"
        '"text"\n'
        "42\n"
        '{"last": true}', encoding="utf-8")

    result = run_chain(tmp_path, env, ("read-jsonl", {"path": "in.jsonl"}),
                       STDOUT)

    assert result.returncode == 0, result.stderr
    assert printed(result) == [
        {"id": 1, "tags": ["a", "b"], "name": "café"},
        [1, 2.5, None],
        "text",
        42,
        {"last": True},
    ]


def test_read_jsonl_keeps_null(tmp_path, env):
    (tmp_path / "in.jsonl").write_text("1\nnull\n2\n")

    result = run_chain(tmp_path, env, ("read-jsonl", {"path": "in.jsonl"}),
                       STDOUT)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "1\nnull\n2\n"


def test_read_jsonl_gzip_file(tmp_path, env):
    (tmp_path / "in.jsonl.gz").write_bytes(
        gzip.compress(b'{"a": 1}\n{"a": 2}\n'))

    result = run_chain(tmp_path, env, ("read-jsonl", {"path": "in.jsonl.gz"}),
                       STDOUT)

    assert result.returncode == 0, result.stderr
    assert printed(result) == [{"a": 1}, {"a": 2}]


def test_read_jsonl_invalid_line(tmp_path, env):
    (tmp_path / "in.jsonl").write_text('{"a": 1}\n\n{"a": oops}\n')

    result = run_chain(tmp_path, env, ("read-jsonl", {"path": "in.jsonl"}),
                       ("discard", {}))

    assert result.returncode == EXIT_FAILED
    assert failure_line(result) == (
        "flowctl: stage 'source' failed: ValueError: in.jsonl:3: invalid "
        "JSON: Expecting value")


# read-csv

CSV_TEXT = ('id,name,score,note\n'
            '1,ann,2.5,\n'
            '2,"bo, b",10,"two\nlines"\n'
            '3,"say ""hi""",-4,x\n')


def test_read_csv_text(tmp_path, env):
    (tmp_path / "in.csv").write_text(CSV_TEXT)

    result = run_chain(tmp_path, env, ("read-csv", {"path": "in.csv"}),
                       STDOUT)

    assert result.returncode == 0, result.stderr
    assert printed(result) == [
        {"id": "1", "name": "ann", "score": "2.5", "note": ""},
        {"id": "2", "name": "bo, b", "score": "10", "note": "two\nlines"},
        {"id": "3", "name": 'say "hi"', "score": "-4", "note": "x"},
    ]


def test_read_csv_types_text_explicit(tmp_path, env):
    (tmp_path / "in.csv").write_text("a,b\n1,\n")

    result = run_chain(tmp_path, env,
                       ("read-csv", {"path": "in.csv", "types": "text"}),
                       STDOUT)

    assert result.returncode == 0, result.stderr
    assert printed(result) == [{"a": "1", "b": ""}]


def test_read_csv_types_auto(tmp_path, env):
    (tmp_path / "in.csv").write_text(CSV_TEXT)

    result = run_chain(tmp_path, env,
                       ("read-csv", {"path": "in.csv", "types": "auto"}),
                       STDOUT)

    assert result.returncode == 0, result.stderr
    assert printed(result) == [
        {"id": 1, "name": "ann", "score": 2.5, "note": None},
        {"id": 2, "name": "bo, b", "score": 10, "note": "two\nlines"},
        {"id": 3, "name": 'say "hi"', "score": -4, "note": "x"},
    ]


def test_read_csv_auto_number_forms(tmp_path, env):
    (tmp_path / "in.csv").write_text(
        "plus,lead,exp,dot,dash,word,inf\n"
        "+5,007,1e3,.5,-,NaN,inf\n")

    result = run_chain(tmp_path, env,
                       ("read-csv", {"path": "in.csv", "types": "auto"}),
                       STDOUT)

    assert result.returncode == 0, result.stderr
    assert printed(result) == [{"plus": 5, "lead": "007", "exp": 1000.0,
                                "dot": 0.5, "dash": "-", "word": "NaN",
                                "inf": "inf"}]


def test_read_csv_auto_keeps_non_numbers(tmp_path, env):
    (tmp_path / "in.csv").write_text("period,power\n2024_01,1²\n",
                                     encoding="utf-8")

    result = run_chain(tmp_path, env,
                       ("read-csv", {"path": "in.csv", "types": "auto"}),
                       STDOUT)

    assert result.returncode == 0, result.stderr
    assert printed(result) == [{"period": "2024_01", "power": "1²"}]


def test_read_csv_auto_nulls(tmp_path, env):
    (tmp_path / "in.csv").write_text("a,b,c\nNA,,7\n")

    result = run_chain(tmp_path, env,
                       ("read-csv", {"path": "in.csv", "types": "auto",
                                     "nulls": ["", "NA"]}),
                       STDOUT)

    assert result.returncode == 0, result.stderr
    assert printed(result) == [{"a": None, "b": None, "c": 7}]


def test_read_csv_delimiter(tmp_path, env):
    (tmp_path / "in.csv").write_text("a;b\n1,5;x\n")

    result = run_chain(tmp_path, env,
                       ("read-csv", {"path": "in.csv", "delimiter": ";"}),
                       STDOUT)

    assert result.returncode == 0, result.stderr
    assert printed(result) == [{"a": "1,5", "b": "x"}]


def test_read_csv_gzip_file(tmp_path, env):
    (tmp_path / "in.csv.gz").write_bytes(gzip.compress(b"a,b\n1,2\n3,4"))

    result = run_chain(tmp_path, env,
                       ("read-csv", {"path": "in.csv.gz", "types": "auto"}),
                       STDOUT)

    assert result.returncode == 0, result.stderr
    assert printed(result) == [{"a": 1, "b": 2}, {"a": 3, "b": 4}]


# generate

def test_generate_count(tmp_path, env):
    result = run_chain(tmp_path, env, ("generate", {"count": 4}), STDOUT)

    assert result.returncode == 0, result.stderr
    assert result.stdout == '{"seq":0}\n{"seq":1}\n{"seq":2}\n{"seq":3}\n'


def test_generate_count_zero(tmp_path, env):
    result = run_chain(tmp_path, env, ("generate", {"count": 0}), STDOUT)

    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_generate_payload(tmp_path, env):
    result = run_chain(tmp_path, env,
                       ("generate", {"count": 2, "payload": 3}), STDOUT)

    assert result.returncode == 0, result.stderr
    assert printed(result) == [{"seq": 0, "data": "xxx"},
                               {"seq": 1, "data": "xxx"}]


# filter and map

def test_filter_keeps_matching(tmp_path, env):
    result = run_chain(tmp_path, env, ("generate", {"count": 10}),
                       ("filter", {"where": "r['seq'] % 3 == 0"}), STDOUT)

    assert result.returncode == 0, result.stderr
    assert printed(result) == [{"seq": 0}, {"seq": 3}, {"seq": 6},
                               {"seq": 9}]


def test_filter_truthy_values(tmp_path, env):
    (tmp_path / "in.jsonl").write_text(
        '{"v": 0}\n{"v": 1}\n{"v": ""}\n{"v": "x"}\n{"v": []}\n'
        '{"v": [0]}\n{"v": null}\n')

    result = run_chain(tmp_path, env, ("read-jsonl", {"path": "in.jsonl"}),
                       ("filter", {"where": "r['v']"}), STDOUT)

    assert result.returncode == 0, result.stderr
    assert printed(result) == [{"v": 1}, {"v": "x"}, {"v": [0]}]


def test_map_replaces_records(tmp_path, env):
    result = run_chain(tmp_path, env, ("generate", {"count": 3}),
                       ("map", {"expr": "{'n': r['seq'], "
                                        "'root': math.sqrt(r['seq'] * 4), "
                                        "'label': f\"#{r['seq']}\"}"}),
                       STDOUT)

    assert result.returncode == 0, result.stderr
    assert printed(result) == [
        {"n": 0, "root": 0.0, "label": "#0"},
        {"n": 1, "root": 2.0, "label": "#1"},
        {"n": 2, "root": 2.8284271247461903, "label": "#2"},
    ]


def test_map_none_drops(tmp_path, env):
    result = run_chain(tmp_path, env, ("generate", {"count": 6}),
                       ("map", {"expr": "None if r['seq'] % 2 else "
                                        "r['seq'] // 2"}),
                       STDOUT)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "0\n1\n2\n"


def test_map_then_filter(tmp_path, env):
    result = run_chain(tmp_path, env, ("generate", {"count": 5}),
                       ("map", {"expr": "{'sq': r['seq'] ** 2}"}),
                       ("filter", {"where": "r['sq'] > 4"}), STDOUT)

    assert result.returncode == 0, result.stderr
    assert printed(result) == [{"sq": 9}, {"sq": 16}]


def test_map_error_fails_run(tmp_path, env):
    result = run_chain(tmp_path, env, ("generate", {"count": 2}),
                       ("map", {"expr": "r['missing']"}), ("discard", {}))

    assert result.returncode == EXIT_FAILED
    assert failure_line(result) == ("flowctl: stage 'step1' failed: "
                                    "KeyError: 'missing' (record "
                                    "{'seq': 0})")


# write-jsonl

def test_write_jsonl_file(tmp_path, env):
    (tmp_path / "in.jsonl").write_text(
        '{"name": "café", "n": [1, 2]}\n"s"\n3.5\n[null]\n', encoding="utf-8")

    result = run_chain(tmp_path, env, ("read-jsonl", {"path": "in.jsonl"}),
                       ("write-jsonl", {"path": "out/deep/result.jsonl"}))

    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    written = (tmp_path / "out" / "deep" / "result.jsonl").read_text(
        encoding="utf-8")
    assert written == '{"name":"café","n":[1,2]}\n"s"\n3.5\n[null]\n'


def test_write_jsonl_overwrites_file(tmp_path, env):
    (tmp_path / "result.jsonl").write_text("old line\nanother\n")

    result = run_chain(tmp_path, env, ("generate", {"count": 1}),
                       ("write-jsonl", {"path": "result.jsonl"}))

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "result.jsonl").read_text() == '{"seq":0}\n'


def test_write_jsonl_stdout(tmp_path, env):
    result = run_chain(tmp_path, env, ("generate", {"count": 2}),
                       ("write-jsonl", {"path": "-"}))

    assert result.returncode == 0, result.stderr
    assert result.stdout == '{"seq":0}\n{"seq":1}\n'
    assert not (tmp_path / "-").exists()


# write-csv

def test_write_csv_file(tmp_path, env):
    (tmp_path / "in.jsonl").write_text(
        '{"id": 1, "text": "a, b", "score": 2.5}\n'
        '{"id": 2, "text": "say \\"hi\\"", "score": null}\n'
        '{"id": 3, "text": "two\\nlines", "extra": "dropped"}\n')

    result = run_chain(tmp_path, env, ("read-jsonl", {"path": "in.jsonl"}),
                       ("write-csv", {"path": "out/result.csv"}))

    assert result.returncode == 0, result.stderr
    written = (tmp_path / "out" / "result.csv").read_bytes()
    assert written == (b'id,text,score\n'
                       b'1,"a, b",2.5\n'
                       b'2,"say ""hi""",\n'
                       b'3,"two\nlines",\n')


def test_write_csv_columns(tmp_path, env):
    result = run_chain(tmp_path, env, ("generate", {"count": 2}),
                       ("map", {"expr": "{'a': r['seq'], 'b': 'x', "
                                        "'c': r['seq'] * 10}"}),
                       ("write-csv", {"path": "result.csv",
                                      "columns": ["c", "a"]}))

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "result.csv").read_bytes() == (b"c,a\n0,0\n"
                                                      b"10,1\n")


def test_write_csv_delimiter_stdout(tmp_path, env):
    result = run_chain(tmp_path, env, ("generate", {"count": 2}),
                       ("map", {"expr": "{'n': r['seq'], 't': 'a;b'}"}),
                       ("write-csv", {"path": "-", "delimiter": ";"}))

    assert result.returncode == 0, result.stderr
    assert result.stdout == 'n;t\n0;"a;b"\n1;"a;b"\n'


def test_write_csv_read_csv_round_trip(tmp_path, env):
    (tmp_path / "in.csv").write_text(CSV_TEXT)

    result = run_chain(tmp_path, env, ("read-csv", {"path": "in.csv"}),
                       ("write-csv", {"path": "copy.csv"}))

    assert result.returncode == 0, result.stderr
    with open(tmp_path / "copy.csv", newline="") as file:
        copy = file.read()
    assert copy == CSV_TEXT


# write-sqlite

def table_columns(database: Path, table: str) -> list[tuple[str, str]]:
    """(name, declared type) of each column, in table order."""
    with closing(sqlite3.connect(database)) as connection:
        rows = connection.execute(f'PRAGMA table_info("{table}")').fetchall()
    return [(row[1], row[2]) for row in rows]


def table_rows(database: Path, table: str) -> list[tuple]:
    with closing(sqlite3.connect(database)) as connection:
        return connection.execute(
            f'SELECT * FROM "{table}" ORDER BY rowid').fetchall()


def test_write_sqlite_creates_typed_table(tmp_path, env):
    (tmp_path / "in.jsonl").write_text(
        '{"id": 1, "price": 2.5, "name": "ann", "ok": true, '
        '"tags": ["a", "b"], "none": null}\n'
        '{"id": 2, "price": 3.0, "name": "bo", "ok": false, '
        '"tags": {"k": 1}, "none": null}\n')

    result = run_chain(tmp_path, env, ("read-jsonl", {"path": "in.jsonl"}),
                       ("write-sqlite", {"path": "out/data.db",
                                         "table": "items"}))

    assert result.returncode == 0, result.stderr
    database = tmp_path / "out" / "data.db"
    assert table_columns(database, "items") == [
        ("id", "INTEGER"), ("price", "REAL"), ("name", "TEXT"),
        ("ok", "INTEGER"), ("tags", "TEXT"), ("none", "TEXT")]
    assert table_rows(database, "items") == [
        (1, 2.5, "ann", 1, '["a", "b"]', None),
        (2, 3.0, "bo", 0, '{"k": 1}', None)]


def test_write_sqlite_adds_new_columns(tmp_path, env):
    (tmp_path / "in.jsonl").write_text(
        '{"k": 0, "v": 1.5}\n'
        '{"k": 1, "v": 1.5}\n'
        '{"k": 2, "extra": "e", "v": 2.5}\n'
        '{"k": 3, "n": 7}\n')

    result = run_chain(tmp_path, env, ("read-jsonl", {"path": "in.jsonl"}),
                       ("write-sqlite", {"path": "data.db", "table": "t"}))

    assert result.returncode == 0, result.stderr
    database = tmp_path / "data.db"
    assert table_columns(database, "t") == [
        ("k", "INTEGER"), ("v", "REAL"), ("extra", "TEXT"), ("n", "INTEGER")]
    assert table_rows(database, "t") == [
        (0, 1.5, None, None), (1, 1.5, None, None), (2, 2.5, "e", None),
        (3, None, None, 7)]


def test_write_sqlite_non_mapping_value(tmp_path, env):
    result = run_chain(tmp_path, env, ("generate", {"count": 3}),
                       ("map", {"expr": "r['seq'] * 2"}),
                       ("write-sqlite", {"path": "data.db", "table": "t"}))

    assert result.returncode == 0, result.stderr
    database = tmp_path / "data.db"
    assert table_columns(database, "t") == [("value", "INTEGER")]
    assert table_rows(database, "t") == [(0,), (2,), (4,)]


def existing_table(database: Path) -> None:
    """Create table t with the rows 100 and 101, as an earlier run would."""
    with closing(sqlite3.connect(database)) as connection:
        connection.execute('CREATE TABLE "t" ("seq" INTEGER)')
        connection.executemany('INSERT INTO "t" VALUES (?)',
                               [(100,), (101,)])
        connection.commit()


def test_write_sqlite_appends_by_default(tmp_path, env):
    database = tmp_path / "data.db"
    existing_table(database)

    result = run_chain(tmp_path, env, ("generate", {"count": 2}),
                       ("write-sqlite", {"path": "data.db", "table": "t"}))

    assert result.returncode == 0, result.stderr
    assert table_rows(database, "t") == [(100,), (101,), (0,), (1,)]


def test_write_sqlite_mode_replace(tmp_path, env):
    database = tmp_path / "data.db"
    existing_table(database)

    result = run_chain(tmp_path, env, ("generate", {"count": 2}),
                       ("write-sqlite", {"path": "data.db", "table": "t",
                                         "mode": "replace"}))

    assert result.returncode == 0, result.stderr
    assert table_columns(database, "t") == [("seq", "INTEGER")]
    assert table_rows(database, "t") == [(0,), (1,)]


def test_write_sqlite_mode_replace_new_table(tmp_path, env):
    result = run_chain(tmp_path, env, ("generate", {"count": 1}),
                       ("write-sqlite", {"path": "data.db", "table": "fresh",
                                         "mode": "replace"}))

    assert result.returncode == 0, result.stderr
    assert table_rows(tmp_path / "data.db", "fresh") == [(0,)]


def test_write_sqlite_quoted_names(tmp_path, env):
    result = run_chain(tmp_path, env, ("generate", {"count": 1}),
                       ("map", {"expr": "{'my col': 1, 'say \"x\"': 'y'}"}),
                       ("write-sqlite", {"path": "data.db",
                                         "table": "odd table"}))

    assert result.returncode == 0, result.stderr
    database = tmp_path / "data.db"
    assert table_columns(database, "odd table") == [
        ("my col", "INTEGER"), ('say "x"', "TEXT")]
    assert table_rows(database, "odd table") == [(1, "y")]


# discard

def test_discard_counts_records(tmp_path, env):
    result = run_chain(tmp_path, env, ("generate", {"count": 5}),
                       ("discard", {}))

    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    finished = [line.split(" stage=", 1)[1]
                for line in result.stderr.splitlines()
                if re.search(r" stage=\S+ finished ", line)]
    assert sorted(finished) == ["sink finished in=5 out=0",
                                "source finished in=0 out=5"]


def test_read_csv_auto_keeps_leading_zeros(tmp_path, env):
    source = tmp_path / "ids.csv"
    source.write_text("id,zip,count\n007,02134,0\n")
    result = run_flowctl(
        ["run", "-e", f"read-csv path={source} types=auto"], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        '{"id":"007","zip":"02134","count":0}']


def test_write_csv_reports_dropped_keys(tmp_path, env):
    (tmp_path / "in.jsonl").write_text('{"a": 1}\n{"a": 2, "b": 3}\n')

    result = run_chain(tmp_path, env,
                       ("read-jsonl", {"path": "in.jsonl"}),
                       ("write-csv", {"path": "out.csv"}))

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.csv").read_text() == "a\n1\n2\n"
    assert ("keys that are not columns are left out: b; set 'columns' to "
            "keep them") in result.stderr
