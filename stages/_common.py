"""Helpers shared by the built-in stages."""

from __future__ import annotations

import datetime
import json
import math
import os
import re
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any, Callable

from flowctl.stage import context

# Names an expression may use besides the record r and Python's builtins.
EXPRESSION_GLOBALS: dict[str, Any] = {
    "math": math, "re": re, "json": json, "datetime": datetime,
}


def compile_expression(source: str, key: str) -> Callable[[Any], Any]:
    """Compile a Python expression over r into a one-argument function.

    Expressions come from the user's own pipeline file and run with full
    Python power, like an awk program; they are not a sandbox.
    """
    try:
        code = compile(f"lambda r: ({source}\n)", f"<{key}>", "eval")
    except SyntaxError as error:
        raise ValueError(f"invalid Python expression in '{key}': "
                         f"{source!r}: {error.msg}") from None
    return eval(code, dict(EXPRESSION_GLOBALS))


def compile_batch(template: str, source: str, key: str
                  ) -> Callable[[list[Any]], list[Any]]:
    """Compile `template`, with EXPR replaced by `source`, into a function
    of a list of records named `records`; each record is `r` in EXPR."""
    text = template.replace("EXPR", f"({source}\n)")
    try:
        code = compile(f"lambda records: {text}", f"<{key}>", "eval")
    except SyntaxError as error:
        raise ValueError(f"invalid Python expression in '{key}': "
                         f"{source!r}: {error.msg}") from None
    return eval(code, dict(EXPRESSION_GLOBALS))


def open_input(path: str, newline: str | None = None) -> IO[str]:
    """Open a text input: '-' is flowctl's stdin, '.gz' is decompressed."""
    if path == "-":
        return context().open_stdin()
    if path.endswith(".gz"):
        import gzip

        return gzip.open(path, "rt", encoding="utf-8", errors="replace",
                         newline=newline)
    return open(path, encoding="utf-8", errors="replace", newline=newline)


def open_output(path: str) -> IO[str]:
    """Open a text output: '-' is flowctl's stdout; parents are created.

    A file is truncated on the stage's first start and appended to after a
    restart, without the partial last line a killed writer may have left.
    """
    if path == "-":
        return context().open_stdout()
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    if context().restarts == 0:
        return open(path, "w", encoding="utf-8", newline="")
    _cut_partial_line(path)
    return open(path, "a", encoding="utf-8", newline="")


def _cut_partial_line(path: str) -> None:
    try:
        with open(path, "rb+") as file:
            data = file.read()
            end = data.rfind(b"\n") + 1
            if end != len(data):
                file.truncate(end)
    except FileNotFoundError:
        pass
