"""Read a YAML pipeline file into plain values, keeping line numbers.

Validation reports problems by line, so loading keeps, for every value and
every mapping key, the line it came from.  Environment variables are
interpolated here, in scalars only: `${VAR}`, `${VAR:-default}`, and `$$`
for a literal dollar sign.  Nothing goes through a shell.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    import yaml

Path = tuple  # a path into the document, e.g. ("spec", "sources", 0, "id")

# Aliases can make a small file expand to billions of values ("billion
# laughs"); a pipeline file never needs more than this many.
MAX_VALUES = 100_000

_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class Problem:
    """One mistake in a pipeline file, at a line, with an optional hint."""

    line: int
    message: str
    hint: str = ""

    def format(self, filename: str) -> str:
        text = f"{filename}:{self.line}: {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text


@dataclass
class Document:
    """A loaded pipeline file: its values and where each one was written."""

    filename: str
    data: Any
    value_lines: dict[Path, int] = field(default_factory=dict)
    key_lines: dict[Path, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def line(self, path: Path) -> int:
        """Line of the value at `path`, or of its nearest ancestor."""
        while path:
            if path in self.value_lines:
                return self.value_lines[path]
            path = path[:-1]
        return 1

    def key_line(self, path: Path) -> int:
        return self.key_lines.get(path) or self.line(path)


def interpolate(text: str, environ: Mapping[str, str]
                ) -> tuple[str, list[str]]:
    """Replace `${VAR}` and `${VAR:-default}`; return text and unset names."""
    missing: list[str] = []

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        value = environ.get(name)
        if value is None or (value == "" and default is not None):
            if default is not None:
                return default
            missing.append(name)
            return ""
        return value

    return _VARIABLE.sub(replace, text), missing


class TooManyValues(Exception):
    """The document expands to more than MAX_VALUES values."""


class _Builder:
    def __init__(self, document: Document, environ: Mapping[str, str]):
        self.document = document
        self.environ = environ
        import yaml
        self.yaml = yaml
        self.constructor = yaml.SafeLoader("")
        self.count = 0

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise TooManyValues()
        self.document.value_lines[path] = node.start_mark.line + 1
        if isinstance(node, self.yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, self.yaml.SequenceNode):
            return [self.build(item, path + (index,))
                    for index, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict:
        result: dict = {}
        for key_node, value_node in node.value:
            key = self._scalar(key_node, path)
            line = key_node.start_mark.line + 1
            if isinstance(key, (dict, list)) or key is None:
                self.document.problems.append(
                    Problem(line, f"invalid key {key!r}"))
                continue
            if key in result:
                self.document.problems.append(Problem(
                    line, f"duplicate key {key!r}",
                    f"first written on line "
                    f"{self.document.key_lines[path + (key,)]}"))
                continue
            self.document.key_lines[path + (key,)] = line
            result[key] = self.build(value_node, path + (key,))
        return result

    def _scalar(self, node: yaml.Node, path: Path) -> Any:
        if not isinstance(node, self.yaml.ScalarNode):
            return self.build(node, path)
        value = self.constructor.construct_object(node, deep=True)
        if not isinstance(value, str) or "$" not in node.value:
            return value
        text, missing = interpolate(node.value, self.environ)
        for name in missing:
            self.document.problems.append(Problem(
                node.start_mark.line + 1,
                f"environment variable {name} is not set",
                f"set it, or give a default as ${{{name}:-value}}"))
        if node.style is None:
            # A plain scalar is typed after interpolation, so that
            # `count: ${N:-10}` is the number 10.
            resolved = self.yaml.safe_load(text) if text.strip() else text
            if not isinstance(resolved, (dict, list)):
                return resolved
        return text


def load(text: str, filename: str,
         environ: Mapping[str, str] | None = None) -> Document:
    """Parse YAML text into a Document; syntax errors become problems."""
    # Imported here because the inline form of a pipeline needs no YAML
    # parser, and importing one costs about 12 ms.
    import yaml

    document = Document(filename, None)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(error, "problem", None) or str(error)
        document.problems.append(Problem(line, f"invalid YAML: {problem}"))
        return document
    if node is None:
        document.problems.append(Problem(1, "the file is empty"))
        return document
    builder = _Builder(document, os.environ if environ is None else environ)
    try:
        document.data = builder.build(node, ())
    except RecursionError:
        document.problems.append(Problem(
            1, "the YAML nests too deeply or an alias refers to itself"))
    except TooManyValues:
        document.problems.append(Problem(
            1, f"the YAML expands to more than {MAX_VALUES:,} values",
            "check the aliases, written *name, in the file"))
    return document


def load_file(path: str, environ: Mapping[str, str] | None = None) -> Document:
    with open(path, "rb") as file:
        raw = file.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        document = Document(path, None)
        line = raw[:error.start].count(b"\n") + 1
        document.problems.append(Problem(
            line, f"the file is not UTF-8 text (byte {error.start})"))
        return document
    return load(text, path, environ)
