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


_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_loader: Any = None


def _yaml_loader() -> Any:
    """Return a YAML loader used only to type and build single scalars."""
    global _loader
    if _loader is None:
        # Imported here because the inline form of a pipeline needs no
        # YAML parser, and importing one costs about 12 ms.
        import yaml
        _loader = yaml.SafeLoader("")
    return _loader


def plain_scalar(text: str) -> Any:
    """Return the value of `text` written as a plain YAML scalar.

    The text is typed, not parsed: `10` is a number, `true` a boolean and
    `null` None, but `*.jsonl`, `out #1` or `[a]` stay text as written.
    Raises ValueError for a value that YAML types but cannot build, such
    as the date 2024-02-30.
    """
    import yaml

    loader = _yaml_loader()
    tag = loader.resolve(yaml.ScalarNode, text, (True, False))
    if tag == _STR_TAG:
        return text
    node = yaml.ScalarNode(tag, text)
    try:
        return loader.yaml_constructors[tag](loader, node)
    except (ValueError, OverflowError, yaml.YAMLError) as error:
        raise ValueError(f"invalid value {text!r}: {error}") from None


class _Builder:
    def __init__(self, document: Document, environ: Mapping[str, str]):
        import yaml
        self.yaml = yaml
        self.document = document
        self.environ = environ
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
        merged = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merged.extend(self._merged_pairs(value_node))
                continue
            key = self._key(key_node, path)
            if key is None:
                continue
            line = key_node.start_mark.line + 1
            if key in result:
                self.document.problems.append(Problem(
                    line, f"duplicate key {key!r}",
                    f"first written on line "
                    f"{self.document.key_lines[path + (key,)]}"))
                continue
            self.document.key_lines[path + (key,)] = line
            result[key] = self.build(value_node, path + (key,))
        # Keys from a merge (`<<: *defaults`) fill in only what the mapping
        # does not set itself, and the first merged mapping wins.
        for key_node, value_node in merged:
            key = self._key(key_node, path)
            if key is None or key in result:
                continue
            self.document.key_lines[path + (key,)] = (
                key_node.start_mark.line + 1)
            result[key] = self.build(value_node, path + (key,))
        return result

    def _key(self, node: yaml.Node, path: Path) -> Any:
        key = self._scalar(node, path)
        if isinstance(key, (dict, list)) or key is None:
            self.document.problems.append(Problem(
                node.start_mark.line + 1, f"invalid key {key!r}"))
            return None
        return key

    def _merged_pairs(self, node: yaml.Node) -> list:
        """Return the key and value nodes that a merge key brings in."""
        if isinstance(node, self.yaml.MappingNode):
            own = [pair for pair in node.value if pair[0].tag != _MERGE_TAG]
            inherited = [pair for key_node, value_node in node.value
                         if key_node.tag == _MERGE_TAG
                         for pair in self._merged_pairs(value_node)]
            return own + inherited
        if isinstance(node, self.yaml.SequenceNode) and all(
                isinstance(item, self.yaml.MappingNode) for item in node.value):
            return [pair for item in node.value
                    for pair in self._merged_pairs(item)]
        self.document.problems.append(Problem(
            node.start_mark.line + 1,
            "a merge key '<<' takes a mapping or a list of mappings",
            "write <<: *name, where &name marks a mapping"))
        return []

    def _scalar(self, node: yaml.Node, path: Path) -> Any:
        if not isinstance(node, self.yaml.ScalarNode):
            return self.build(node, path)
        line = node.start_mark.line + 1
        try:
            value = self.constructor.construct_object(node, deep=True)
        except (ValueError, OverflowError, self.yaml.YAMLError) as error:
            reason = getattr(error, "problem", None) or str(error)
            self.document.problems.append(Problem(
                line, f"invalid value {node.value!r}: {reason}"))
            return node.value
        if not isinstance(value, str) or "$" not in node.value:
            return value
        text, missing = interpolate(node.value, self.environ)
        for name in missing:
            self.document.problems.append(Problem(
                line, f"environment variable {name} is not set",
                f"set it, or give a default as ${{{name}:-value}}"))
        if node.style is None and text.strip():
            # A plain scalar is typed after interpolation, so that
            # `count: ${N:-10}` is the number 10.  The variable's value is
            # not read as YAML: `*.jsonl` or `out #1` stay text.
            try:
                return plain_scalar(text)
            except ValueError as error:
                self.document.problems.append(Problem(line, str(error)))
        return text


def load(text: str, filename: str,
         environ: Mapping[str, str] | None = None) -> Document:
    """Parse YAML text into a Document; syntax errors become problems."""
    import yaml  # about 12 ms, which the inline form does not need

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
