"""The catalogue of built-in stages: names, roles and config keys.

The programs themselves live in `stages/` (installed as `flowctl.stages`);
this table is what validation and the inline form check against.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Param:
    """One config key of a built-in stage."""

    type: type | tuple[type, ...]
    required: bool = False
    help: str = ""
    choices: tuple[Any, ...] = ()
    minimum: float | None = None


@dataclass(frozen=True)
class Builtin:
    """A built-in stage program and the config keys it accepts."""

    name: str
    role: str
    module: str
    summary: str
    params: dict[str, Param] = field(default_factory=dict)

    def argv(self) -> list[str]:
        return module_argv(f"flowctl.stages.{self.module}")


def module_argv(module: str) -> list[str]:
    """Return the command that runs an installed flowctl module.

    `python -m` would put the current directory first on sys.path, so a
    pipeline started from a checkout of flowctl would import the checkout
    instead of the installed package.  This command drops that entry first.
    """
    code = ("import sys, runpy; sys.path.pop(0); "
            f"runpy.run_module({module!r}, run_name='__main__', "
            "alter_sys=True)")
    return [sys.executable, "-c", code]


PATH_HELP = "file to read; '-' reads flowctl's standard input; .gz is unpacked"
OUT_PATH_HELP = "file to write; '-' writes to flowctl's standard output"

BUILTINS: dict[str, Builtin] = {b.name: b for b in [
    Builtin("read-lines", "source", "read_lines",
            "one record {'line': text} per line of a file",
            {"path": Param(str, True, PATH_HELP)}),
    Builtin("read-jsonl", "source", "read_jsonl",
            "one record per JSON line of a file",
            {"path": Param(str, True, PATH_HELP)}),
    Builtin("read-csv", "source", "read_csv",
            "one record per CSV row, a mapping keyed by the header",
            {"path": Param(str, True, PATH_HELP),
             "delimiter": Param(str, help="field separator, ',' by default"),
             "types": Param(str, help="'text' keeps every value a string; "
                                      "'auto' turns numbers without a "
                                      "leading zero into numbers and the "
                                      "nulls into null",
                            choices=("text", "auto")),
             "nulls": Param(list, help="with types: auto, the field values "
                                       "read as null; [\"\"] by default")}),
    Builtin("generate", "source", "generate",
            "records {'seq': i} for i from 0",
            {"count": Param(int, help="how many records; endless if absent",
                            minimum=0),
             "rate": Param((int, float), help="records per second; "
                                              "as fast as possible if absent",
                           minimum=0),
             "payload": Param(int, help="add a 'data' field of this many "
                                        "characters", minimum=0)}),
    Builtin("filter", "processor", "filter",
            "keep records for which a Python expression over r is true",
            {"where": Param(str, True, "Python expression over the record r")}),
    Builtin("map", "processor", "map",
            "replace each record by a Python expression over r",
            {"expr": Param(str, True, "Python expression over the record r; "
                                      "None drops the record")}),
    Builtin("count-by", "processor", "count_by",
            "count records per value of a field, emitted at the end",
            {"key": Param(str, True, "the field whose values are counted")}),
    Builtin("write-jsonl", "sink", "write_jsonl",
            "write each record as one JSON line",
            {"path": Param(str, True, OUT_PATH_HELP)}),
    Builtin("write-csv", "sink", "write_csv",
            "write mapping records as CSV rows with a header",
            {"path": Param(str, True, OUT_PATH_HELP),
             "columns": Param(list, help="column order; the first record's "
                                         "keys if absent"),
             "delimiter": Param(str, help="field separator, ',' by default")}),
    Builtin("write-sqlite", "sink", "write_sqlite",
            "insert mapping records as rows of a SQLite table",
            {"path": Param(str, True, "database file, created if missing"),
             "table": Param(str, True, "table name, created if missing"),
             "mode": Param(str, help="'append' (default) keeps existing rows; "
                                     "'replace' empties the table first",
                           choices=("append", "replace"))}),
    Builtin("discard", "sink", "discard", "count records and drop them", {}),
]}

ROLE_SECTIONS = {"source": "sources", "processor": "processors",
                 "sink": "sinks"}
