"""The inline form: a pipeline written on the command line.

    flowctl run -e 'read-lines path=/var/log/dpkg.log | exec grep install
                    | write-jsonl path=-'

Segments are separated by `|` outside quotes, and words are split as a
shell splits them (`#` starts no comment).  A segment is a built-in stage
name with `key=value` config, or `exec [--codec CODEC]
[--success-exit-codes 0,1] PROGRAM ARGS...` for an executable, with the
`lines` codec unless another is given.  Values are typed as plain YAML
scalars, so `count=10` is a number and `path=*.log` is text, and a key
that takes a list reads a YAML list such as `nulls='[NA]'`.  The first
segment is the source, the last the sink and the rest processors, in a
chain.  When the last segment is not a sink, `write-jsonl path=-` is added
so the records appear on standard output.  Stage ids are the names,
numbered when a name repeats (`map`, `map-2`).

The result is the same document a pipeline file would give, so it goes
through the same validation; problems are reported by segment number.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from flowctl.builtins import BUILTINS, ROLE_SECTIONS
from flowctl.codecs import TEXT_CODECS
from flowctl.document import Document, Problem, plain_scalar
from flowctl.pipeline import API_VERSION, KIND

# Values that YAML reads the same way without a parser: decimal integers
# without a leading zero, and plain words.  Words that YAML turns into
# booleans or null are left to the parser.
_PLAIN_INTEGER = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_PLAIN_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_YAML_WORDS = frozenset({"yes", "no", "true", "false", "on", "off", "null"})

INLINE_FILENAME = "-e"
DEFAULT_SINK = ("write-jsonl", {"path": "-"})


def _split_segments(text: str) -> list[str]:
    """Split the text at each `|` outside quotes, as a shell would."""
    segments: list[str] = []
    current: list[str] = []
    quote = ""
    escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "|":
            segments.append("".join(current))
            current = []
            continue
        current.append(char)
    segments.append("".join(current))
    return segments


def _parse_value(text: str) -> Any:
    if _PLAIN_INTEGER.fullmatch(text):
        return int(text)
    if (_PLAIN_WORD.fullmatch(text) and text.lower() not in _YAML_WORDS
            or not text.strip()):
        return text
    try:
        return plain_scalar(text)
    except ValueError:
        return text


def _parse_list(text: str) -> Any:
    """Return the list that `text` writes in YAML, or the text itself,
    which validation then rejects as not a list."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, list) else text


def _segment_entry(words: list[str], number: int,
                   problems: list[Problem]) -> dict[str, Any] | None:
    if not words:
        problems.append(Problem(number, "empty segment between '|' signs"))
        return None
    name, rest = words[0], words[1:]
    if name == "exec":
        options = {"--codec": "lines", "--success-exit-codes": ""}
        while rest and rest[0].split("=", 1)[0] in options:
            option, equals, value = rest[0].partition("=")
            if not equals:
                if len(rest) < 2:
                    break
                value, rest = rest[1], rest[1:]
            options[option] = value
            rest = rest[1:]
        if not rest:
            problems.append(Problem(number, "'exec' needs a program to run"))
            return None
        entry = {"id": rest[0].rsplit("/", 1)[-1], "command": rest,
                 "codec": options["--codec"]}
        if options["--success-exit-codes"]:
            try:
                entry["success_exit_codes"] = [
                    int(code)
                    for code in options["--success-exit-codes"].split(",")]
            except ValueError:
                problems.append(Problem(number, "--success-exit-codes takes "
                                                "numbers separated by commas"))
                return None
        return entry
    config = {}
    params = BUILTINS[name].params if name in BUILTINS else {}
    for word in rest:
        key, equals, value = word.partition("=")
        if not equals or not key:
            problems.append(Problem(number, f"expected key=value after "
                                            f"'{name}', got {word!r}"))
            continue
        if key in config:
            problems.append(Problem(number, f"duplicate key {key!r}",
                                    f"'{name}' takes each key once"))
            continue
        # A key that takes text keeps it as written: where=True is the
        # expression "True", not a boolean.  A key that takes a list reads
        # a YAML flow sequence, such as nulls='["", NA]'.
        kind = params[key].type if key in params else None
        if kind is str:
            config[key] = value
        elif kind is list:
            config[key] = _parse_list(value)
        else:
            config[key] = _parse_value(value)
    entry: dict[str, Any] = {"id": name, "stage": name}
    if config:
        entry["config"] = config
    return entry


def _role(entry: dict[str, Any], position: int, count: int) -> str:
    builtin = BUILTINS.get(entry.get("stage", ""))
    if builtin is not None:
        return builtin.role
    if position == 0:
        return "source"
    return "sink" if position == count - 1 else "processor"


def parse_inline(text: str) -> Document:
    """Turn the inline form into a pipeline document."""
    if not text.strip():
        return _failed("the pipeline is empty")
    problems: list[Problem] = []
    entries = []
    for number, segment in enumerate(_split_segments(text), 1):
        try:
            words = shlex.split(segment)
        except ValueError as error:
            problems.append(Problem(number, f"cannot split the segment: "
                                            f"{error}"))
            continue
        entry = _segment_entry(words, number, problems)
        if entry is not None:
            entries.append((number, entry))
    document = Document(INLINE_FILENAME, None, problems=problems)
    if not entries:
        return document

    _add_default_sink(entries)
    sections = _chain(entries, document)
    document.data = {"apiVersion": API_VERSION, "kind": KIND,
                     "metadata": {"name": "inline"},
                     "spec": {key: value for key, value in sections.items()
                              if value}}
    return document


def _failed(message: str) -> Document:
    document = Document(INLINE_FILENAME, None)
    document.problems.append(Problem(1, message))
    return document


def _add_default_sink(entries: list[tuple[int, dict[str, Any]]]) -> None:
    """Append `write-jsonl path=-` unless the last segment is a sink.

    An executable with a text codec as the last of several segments is a
    sink already: it writes to flowctl's standard output itself.  One that
    speaks msgpack is a processor, and the added sink prints its records.
    """
    last = entries[-1][1]
    builtin = BUILTINS.get(last.get("stage", ""))
    if builtin is not None and builtin.role == "sink":
        return
    if len(entries) > 1 and last.get("codec") in TEXT_CODECS:
        return
    name, config = DEFAULT_SINK
    entries.append((len(entries) + 1,
                    {"id": name, "stage": name, "config": dict(config)}))


def _chain(entries: list[tuple[int, dict[str, Any]]],
           document: Document) -> dict[str, list]:
    """Number repeated ids, link each stage to the one before, and sort
    the stages into sections, noting each one's segment as its line."""
    sections: dict[str, list] = {"sources": [], "processors": [], "sinks": []}
    seen: dict[str, int] = {}
    previous = None
    for position, (number, entry) in enumerate(entries):
        base = entry["id"]
        seen[base] = seen.get(base, 0) + 1
        if seen[base] > 1:
            entry["id"] = f"{base}-{seen[base]}"
        role = _role(entry, position, len(entries))
        if previous is not None and role != "source":
            entry["inputs"] = [previous]

        section = ROLE_SECTIONS[role]
        path = ("spec", section, len(sections[section]))
        sections[section].append(entry)
        document.value_lines[path] = number
        for key in entry:
            document.value_lines[path + (key,)] = number
        previous = entry["id"]
    return sections
