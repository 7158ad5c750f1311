"""Check a loaded pipeline file and build the `Pipeline` it describes.

Every problem is collected, so `flowctl validate` reports them all at once,
each with its line and, where one helps, a hint such as "did you mean".
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
from typing import Any

from flowctl import codecs, document, units
from flowctl.builtins import BUILTINS, ROLE_SECTIONS
from flowctl.document import Document, Problem
from flowctl.pipeline import API_VERSION, KIND, Pipeline, StageSpec
from flowctl.process import stage_path
from flowctl.restarts import POLICIES, RestartPolicy

TOP_KEYS = ("apiVersion", "kind", "metadata", "spec")
METADATA_KEYS = ("name", "description", "labels")
SPEC_KEYS = ("sources", "processors", "sinks", "frames", "supervisor",
             "checkpoint")
FRAMES_KEYS = ("max_size", "batch_size", "flush_interval")
STOP_KEYS = ("restart", "stop_signal", "stop_timeout", "liveness_timeout")
SUPERVISOR_KEYS = STOP_KEYS + ("drain_timeout",)
RESTART_KEYS = ("policy", "backoff", "max_restarts", "window")
BACKOFF_KEYS = ("initial", "max", "multiplier", "jitter")
STAGE_KEYS = ("id", "stage", "command", "shell", "config", "env", "cwd",
              "inputs", "codec", "success_exit_codes", "description"
              ) + STOP_KEYS
SECTION_ROLES = {section: role for role, section in ROLE_SECTIONS.items()}

STAGE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def did_you_mean(word: str, choices: Any) -> str:
    import difflib  # only when there is a mistake to suggest a fix for

    matches = difflib.get_close_matches(str(word), list(choices), n=1,
                                        cutoff=0.6)
    return f"did you mean '{matches[0]}'?" if matches else ""


class Validator:
    """Collects problems while walking one document."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.problems: list[Problem] = list(doc.problems)
        self.warnings: list[Problem] = []

    def problem(self, path: tuple, message: str, hint: str = "",
                key: bool = False) -> None:
        line = self.doc.key_line(path) if key else self.doc.line(path)
        self.problems.append(Problem(line, message, hint))

    def warning(self, path: tuple, message: str, hint: str = "") -> None:
        self.warnings.append(Problem(self.doc.line(path), message, hint))

    def mapping(self, path: tuple, what: str) -> dict | None:
        value = self._get(path)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.problem(path, f"{what} must be a mapping, not "
                               f"{type(value).__name__}")
            return None
        return value

    def _get(self, path: tuple) -> Any:
        value = self.doc.data
        for part in path:
            if isinstance(value, dict):
                value = value.get(part)
            elif isinstance(value, list) and isinstance(part, int):
                value = value[part] if part < len(value) else None
            else:
                return None
        return value

    def known_keys(self, path: tuple, value: dict, allowed: tuple,
                   where: str) -> None:
        for key in value:
            if key not in allowed:
                self.problem(path + (key,), f"unknown key '{key}' in {where}",
                             did_you_mean(key, allowed), key=True)

    def duration(self, path: tuple, value: Any) -> float | None:
        try:
            return units.parse_duration(value)
        except ValueError as error:
            self.problem(path, str(error), units.DURATION_HINT)
            return None

    def size(self, path: tuple, value: Any) -> int | None:
        try:
            return units.parse_size(value)
        except ValueError as error:
            self.problem(path, str(error), units.SIZE_HINT)
            return None


def validate(doc: Document) -> tuple[Pipeline | None, list[Problem],
                                     list[Problem]]:
    """Return the pipeline (None if there are problems), problems, warnings."""
    checker = Validator(doc)
    if doc.data is None:
        return None, checker.problems, checker.warnings
    top = checker.mapping((), "a pipeline file")
    if top is None:
        return None, checker.problems, checker.warnings
    checker.known_keys((), top, TOP_KEYS, "the pipeline file")
    if top.get("apiVersion") != API_VERSION:
        checker.problem(("apiVersion",),
                        f"apiVersion must be '{API_VERSION}', not "
                        f"{top.get('apiVersion')!r}")
    if top.get("kind") != KIND:
        checker.problem(("kind",), f"kind must be '{KIND}', not "
                                   f"{top.get('kind')!r}")
    metadata = checker.mapping(("metadata",), "metadata") or {}
    checker.known_keys(("metadata",), metadata, METADATA_KEYS, "metadata")
    spec = checker.mapping(("spec",), "spec")
    if spec is None:
        if "spec" not in top:
            checker.problem((), "the pipeline has no 'spec' section")
        return None, checker.problems, checker.warnings
    checker.known_keys(("spec",), spec, SPEC_KEYS, "spec")
    pipeline = Pipeline(name=str(metadata.get("name") or
                                 _default_name(doc.filename)),
                        source=doc.filename, stages=[])
    _check_settings(checker, spec, pipeline)
    # Imported here because validate_checkpoint imports Validator and
    # did_you_mean from this module, so a top-level import would be circular.
    from flowctl.validate_checkpoint import check_checkpoint
    pipeline.checkpoint = check_checkpoint(checker, spec)
    supervisor = spec.get("supervisor")
    defaults = _stop_settings(
        checker, ("spec", "supervisor"),
        supervisor if isinstance(supervisor, dict) else {},
        StageSpec(id="", role=""))
    stages = _check_stages(checker, spec, defaults)
    _check_graph(checker, stages)
    _check_standard_streams(checker, stages)
    if checker.problems:
        return None, checker.problems, checker.warnings
    pipeline.stages = _topological(stages)
    return pipeline, checker.problems, checker.warnings


def _default_name(filename: str) -> str:
    base = os.path.basename(filename)
    return os.path.splitext(base)[0] if base and base != "-e" else "inline"


def _check_settings(checker: Validator, spec: dict, pipeline: Pipeline) -> None:
    frames = checker.mapping(("spec", "frames"), "spec.frames") or {}
    checker.known_keys(("spec", "frames"), frames, FRAMES_KEYS, "spec.frames")
    if "max_size" in frames:
        size = checker.size(("spec", "frames", "max_size"), frames["max_size"])
        if size is not None:
            if size < 1024:
                checker.problem(("spec", "frames", "max_size"),
                                f"max_size {size} bytes is too small",
                                "use at least 1KiB")
            pipeline.max_frame_size = size
    if "batch_size" in frames:
        value = frames["batch_size"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            checker.problem(("spec", "frames", "batch_size"),
                            f"batch_size must be a positive number of "
                            f"records, not {value!r}")
        else:
            pipeline.batch_size = value
    if "flush_interval" in frames:
        seconds = checker.duration(("spec", "frames", "flush_interval"),
                                   frames["flush_interval"])
        if seconds is not None:
            pipeline.flush_interval = seconds
    supervisor = checker.mapping(("spec", "supervisor"), "spec.supervisor") or {}
    checker.known_keys(("spec", "supervisor"), supervisor, SUPERVISOR_KEYS,
                       "spec.supervisor")
    if "drain_timeout" in supervisor:
        seconds = checker.duration(("spec", "supervisor", "drain_timeout"),
                                   supervisor["drain_timeout"])
        if seconds is not None:
            pipeline.drain_timeout = seconds


def _stop_settings(checker: Validator, path: tuple, block: dict,
                   base: StageSpec) -> StageSpec:
    """Apply restart, stop and liveness keys of `block` over `base`."""
    changes: dict[str, Any] = {}
    if "restart" in block:
        changes["restart"] = _restart_policy(checker, path + ("restart",),
                                             block["restart"], base.restart)
    if "stop_signal" in block:
        name = str(block["stop_signal"]).upper()
        name = name if name.startswith("SIG") else "SIG" + name
        if not isinstance(getattr(signal, name, None), signal.Signals):
            checker.problem(path + ("stop_signal",), f"unknown signal "
                            f"{block['stop_signal']!r}", "use a name such as "
                            "SIGTERM, SIGINT or SIGHUP")
        else:
            changes["stop_signal"] = name
    if "stop_timeout" in block:
        seconds = checker.duration(path + ("stop_timeout",),
                                   block["stop_timeout"])
        if seconds is not None:
            changes["stop_timeout"] = seconds
    if "liveness_timeout" in block:
        value = block["liveness_timeout"]
        if value in ("off", False, 0):
            changes["liveness_timeout"] = None
        else:
            seconds = checker.duration(path + ("liveness_timeout",), value)
            if seconds is not None:
                changes["liveness_timeout"] = seconds
    return dataclasses.replace(base, **changes)


def _restart_policy(checker: Validator, path: tuple, block: Any,
                    base: RestartPolicy) -> RestartPolicy:
    if isinstance(block, str):
        block = {"policy": block}
    if not isinstance(block, dict):
        checker.problem(path, "'restart' must be a mapping or a policy name")
        return base
    checker.known_keys(path, block, RESTART_KEYS, "restart")
    changes: dict[str, Any] = {}
    if "policy" in block:
        if block["policy"] not in POLICIES:
            checker.problem(path + ("policy",), f"unknown restart policy "
                            f"{block['policy']!r}",
                            did_you_mean(block["policy"], POLICIES) or
                            "use " + ", ".join(POLICIES))
        else:
            changes["policy"] = block["policy"]
    if "window" in block:
        seconds = checker.duration(path + ("window",), block["window"])
        if seconds is not None:
            changes["window"] = seconds
    if "max_restarts" in block:
        value = block["max_restarts"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            checker.problem(path + ("max_restarts",), f"max_restarts must be "
                            f"a number of restarts, not {value!r}")
        else:
            changes["max_restarts"] = value
    backoff = block.get("backoff", {})
    if not isinstance(backoff, dict):
        checker.problem(path + ("backoff",), "'backoff' must be a mapping")
        backoff = {}
    checker.known_keys(path + ("backoff",), backoff, BACKOFF_KEYS, "backoff")
    for key in ("initial", "max"):
        if key in backoff:
            seconds = checker.duration(path + ("backoff", key), backoff[key])
            if seconds is not None:
                changes[key] = seconds
    for key, low in (("multiplier", 1.0), ("jitter", 0.0)):
        if key in backoff:
            value = backoff[key]
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or value < low or (key == "jitter" and value > 1)):
                checker.problem(path + ("backoff", key), f"invalid {key} "
                                f"{value!r}", "multiplier is 1 or more, "
                                "jitter from 0 to 1")
            else:
                changes[key] = float(value)
    return dataclasses.replace(base, **changes)


def _check_stages(checker: Validator, spec: dict,
                  defaults: StageSpec) -> list[StageSpec]:
    stages: list[StageSpec] = []
    first_line: dict[str, int] = {}
    for section, role in SECTION_ROLES.items():
        entries = spec.get(section)
        if entries is None:
            continue
        if not isinstance(entries, list):
            checker.problem(("spec", section),
                            f"spec.{section} must be a list of stages")
            continue
        for index, entry in enumerate(entries):
            path = ("spec", section, index)
            if not isinstance(entry, dict):
                checker.problem(path, f"each entry of spec.{section} must be "
                                      f"a mapping with an id")
                continue
            stage = _check_stage(checker, path, entry, role, defaults)
            if stage is None:
                continue
            if stage.id in first_line:
                checker.problem(path + ("id",),
                                f"duplicate stage id '{stage.id}'",
                                f"first used on line {first_line[stage.id]}")
                continue
            first_line[stage.id] = stage.line
            stages.append(stage)
    if not any(stage.role == "source" for stage in stages):
        if not checker.problems:
            checker.problem(("spec",), "the pipeline has no sources")
    if not any(stage.role == "sink" for stage in stages):
        if not checker.problems:
            checker.problem(("spec",), "the pipeline has no sinks")
    return stages


def _check_stage(checker: Validator, path: tuple, entry: dict,
                 role: str, defaults: StageSpec) -> StageSpec | None:
    checker.known_keys(path, entry, STAGE_KEYS, f"a {role}")
    stage_id = entry.get("id")
    if stage_id is None:
        checker.problem(path, f"a {role} has no id")
        return None
    stage_id = str(stage_id)
    if not STAGE_ID.match(stage_id):
        checker.problem(path + ("id",), f"invalid stage id '{stage_id}'",
                        "use letters, digits, '-', '_' and '.'")
    stage = _stop_settings(checker, path, entry, dataclasses.replace(
        defaults, id=stage_id, role=role, line=checker.doc.line(path)))
    kinds = [key for key in ("stage", "command", "shell") if key in entry]
    if len(kinds) != 1:
        message = (f"stage '{stage_id}' has none of 'stage', 'command' and "
                   f"'shell'" if not kinds else
                   f"stage '{stage_id}' has both " + " and ".join(
                       f"'{kind}'" for kind in kinds))
        checker.problem(path, message, "give exactly one of them")
    elif "stage" in entry:
        _check_builtin(checker, path, entry, stage)
    else:
        _check_command(checker, path, entry, stage)
    _check_common(checker, path, entry, stage)
    return stage


def _check_builtin(checker: Validator, path: tuple, entry: dict,
                   stage: StageSpec) -> None:
    name = entry["stage"]
    builtin = BUILTINS.get(name)
    if builtin is None:
        checker.problem(path + ("stage",), f"unknown built-in stage {name!r}",
                        did_you_mean(name, BUILTINS) or
                        "run 'flowctl stages' for the list")
        return
    stage.builtin = name
    if builtin.role != stage.role:
        checker.problem(path + ("stage",),
                        f"'{name}' is a {builtin.role}, but stage "
                        f"'{stage.id}' is listed under spec."
                        f"{ROLE_SECTIONS[stage.role]}",
                        f"move it to spec.{ROLE_SECTIONS[builtin.role]}")
    if "codec" in entry:
        checker.problem(path + ("codec",), "'codec' is only for 'command' "
                        "stages; built-in stages speak flowctl frames",
                        key=True)
    config = entry.get("config") or {}
    if not isinstance(config, dict):
        return
    for key, value in config.items():
        param = builtin.params.get(key)
        config_path = path + ("config", key)
        if param is None:
            hint = did_you_mean(key, builtin.params) or (
                "it takes " + ", ".join(builtin.params) if builtin.params
                else "it takes no config")
            checker.problem(config_path, f"unknown config key '{key}' for "
                            f"'{name}'", hint, key=True)
            continue
        value = _coerce_number(value, param.type)
        config[key] = value
        if isinstance(value, bool) or not isinstance(value, param.type):
            expected = (param.type.__name__ if isinstance(param.type, type)
                        else " or ".join(t.__name__ for t in param.type))
            checker.problem(config_path, f"config key '{key}' of '{name}' "
                            f"must be {expected}, not {value!r}")
        elif param.minimum is not None and value < param.minimum:
            checker.problem(config_path, f"config key '{key}' of '{name}' "
                            f"must be {param.minimum:g} or more, not "
                            f"{value!r}")
        elif param.choices and value not in param.choices:
            checker.problem(config_path, f"config key '{key}' of '{name}' "
                            f"must be one of "
                            f"{', '.join(map(str, param.choices))}",
                            did_you_mean(value, param.choices))
        elif key in ("where", "expr"):
            _check_expression(checker, config_path, value)
    for key, param in builtin.params.items():
        if param.required and key not in config:
            checker.problem(path, f"'{name}' stage '{stage.id}' needs "
                                  f"config key '{key}'", param.help)


def _coerce_number(value: Any, expected: type | tuple[type, ...]) -> Any:
    """Read a quoted number, as `"${COUNT:-3}"` gives, as the number."""
    if not isinstance(value, str):
        return value
    types = expected if isinstance(expected, tuple) else (expected,)
    for kind in (int, float):
        if kind in types:
            try:
                return kind(value.strip())
            except ValueError:
                continue
    return value


def _check_expression(checker: Validator, path: tuple, source: str) -> None:
    try:
        compile(f"lambda r: ({source}\n)", "<expression>", "eval")
    except SyntaxError as error:
        checker.problem(path, f"invalid Python expression {source!r}: "
                              f"{error.msg}")


def _check_command(checker: Validator, path: tuple, entry: dict,
                   stage: StageSpec) -> None:
    if "shell" in entry:
        script = entry["shell"]
        if not isinstance(script, str) or not script.strip():
            checker.problem(path + ("shell",), "'shell' must be a command "
                            "string for /bin/sh")
            return
        stage.command = ["/bin/sh", "-c", script]
    else:
        command = entry["command"]
        if isinstance(command, str):
            checker.problem(path + ("command",),
                            "'command' must be a list of arguments",
                            f"write command: {command.split()!r}, or use "
                            f"'shell:' to run it through /bin/sh")
            return
        if (not isinstance(command, list) or not command
                or not all(isinstance(arg, (str, int, float))
                           for arg in command)):
            checker.problem(path + ("command",), "'command' must be a "
                            "non-empty list of strings")
            return
        stage.command = [str(arg) for arg in command]
    codec = entry.get("codec", "msgpack")
    if codec not in codecs.CODECS:
        checker.problem(path + ("codec",), f"unknown codec {codec!r}",
                        did_you_mean(codec, codecs.CODECS) or
                        "use one of " + ", ".join(codecs.CODECS))
    else:
        stage.codec = codec
    if "config" in entry and codec in codecs.TEXT_CODECS:
        checker.warning(path + ("config",), f"stage '{stage.id}' runs with "
                        f"the {codec} codec and never sees its config")
    codes = entry.get("success_exit_codes", [0])
    if (not isinstance(codes, list) or not codes or not all(
            isinstance(code, int) and not isinstance(code, bool)
            and 0 <= code <= 255 for code in codes)):
        checker.problem(path + ("success_exit_codes",),
                        "success_exit_codes must be a list of exit codes "
                        "from 0 to 255")
    else:
        stage.success_exit_codes = codes
    _check_executable(checker, path, entry, stage.command)


def _check_executable(checker: Validator, path: tuple, entry: dict,
                      command: list[str]) -> None:
    env = entry.get("env") if isinstance(entry.get("env"), dict) else {}
    cwd = entry.get("cwd") if isinstance(entry.get("cwd"), str) else None
    program = command[0]
    where = path + ("shell" if "shell" in entry else "command",)
    if "/" in program:
        full = os.path.join(cwd or ".", program)
        if not os.path.exists(full):
            checker.problem(where, f"command not found: {program!r}",
                            "check the path; relative paths start from "
                            "the stage's cwd")
        elif os.path.isdir(full):
            checker.problem(where, f"command is a directory: {program!r}",
                            "name the program inside it")
        elif not os.access(full, os.X_OK):
            checker.problem(where, f"command is not executable: {program!r}",
                            f"run chmod +x {program}")
    else:
        search_path = str(env.get("PATH") or
                          stage_path(os.environ.get("PATH", "")))
        if shutil.which(program, path=search_path) is None:
            checker.problem(where, f"command not found: {program!r}",
                            "install it or check PATH")
        elif (os.path.basename(program).startswith("python")
              and len(command) > 1 and command[1].endswith(".py")):
            script = os.path.join(cwd or ".", command[1])
            if not os.path.exists(script):
                checker.problem(where, f"script not found: {command[1]!r}",
                                "relative paths start from the directory "
                                "flowctl runs in, or the stage's cwd")


def _check_common(checker: Validator, path: tuple, entry: dict,
                  stage: StageSpec) -> None:
    if "config" in entry:
        config = entry["config"]
        if config is None:
            config = {}
        if not isinstance(config, dict):
            checker.problem(path + ("config",), "'config' must be a mapping")
        else:
            stage.config = config
    if "env" in entry:
        env = entry["env"]
        if not isinstance(env, dict) or not all(
                isinstance(value, (str, int, float, bool))
                for value in env.values()):
            checker.problem(path + ("env",), "'env' must map names to "
                            "strings or numbers")
        else:
            stage.env = {str(key): str(value) for key, value in env.items()}
    if "cwd" in entry:
        cwd = entry["cwd"]
        if not isinstance(cwd, str) or not os.path.isdir(cwd):
            checker.problem(path + ("cwd",), f"cwd {cwd!r} is not a "
                            f"directory")
        else:
            stage.cwd = cwd
    inputs = entry.get("inputs")
    if stage.role == "source":
        if inputs:
            checker.problem(path + ("inputs",), f"source '{stage.id}' has "
                            f"inputs", "sources read no other stage; list it "
                            "under spec.processors", key=True)
        return
    if inputs is None:
        checker.problem(path, f"{stage.role} '{stage.id}' has no inputs",
                        "add inputs: [ID] naming the stages it reads")
        return
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        checker.problem(path + ("inputs",), "'inputs' must be a non-empty "
                        "list of stage ids")
        return
    for index, item in enumerate(inputs):
        if not isinstance(item, str):
            checker.problem(path + ("inputs", index), f"input {item!r} is "
                            f"not a stage id", "stage ids are strings; "
                            "quote ids that look like numbers")
            return
    seen = set()
    for item in inputs:
        if item in seen:
            checker.problem(path + ("inputs",), f"stage '{stage.id}' lists "
                            f"input '{item}' twice")
        seen.add(item)
    stage.inputs = list(inputs)


def _check_standard_streams(checker: Validator,
                            stages: list[StageSpec]) -> None:
    """At most one stage may read flowctl's stdin, and one write its stdout.

    Two would split or interleave the stream at random.
    """
    readers = [stage for stage in stages if stage.role == "source"
               and stage.builtin and stage.config.get("path") == "-"]
    writers = [stage for stage in stages if stage.writes_to_stdout()]
    for users, stream in ((readers, "standard input"),
                          (writers, "standard output")):
        for stage in users[1:]:
            checker.problems.append(Problem(
                stage.line, f"stage '{stage.id}' uses flowctl's {stream}, "
                            f"which stage '{users[0].id}' already uses",
                "give one of them a file path"))


def _check_graph(checker: Validator, stages: list[StageSpec]) -> None:
    by_id = {stage.id: stage for stage in stages}
    for stage in stages:
        for index, name in enumerate(stage.inputs):
            line = _input_line(checker, stage, index)
            if name not in by_id:
                checker.problems.append(Problem(
                    line, f"stage '{stage.id}' reads from '{name}', which is "
                          f"not a stage", did_you_mean(name, by_id)))
            elif by_id[name].role == "sink":
                checker.problems.append(Problem(
                    line, f"stage '{stage.id}' reads from sink '{name}', but "
                          f"sinks have no output",
                    "list it under spec.processors if it should emit "
                    "records"))
    for cycle in _cycles(stages, by_id):
        checker.problems.append(Problem(
            by_id[cycle[0]].line, "the stages form a cycle: " +
            " -> ".join(cycle + [cycle[0]]),
            "a pipeline must be a directed acyclic graph"))
    for stage in stages:
        if stage.role != "sink" and not any(
                stage.id in other.inputs for other in stages):
            checker.warnings.append(Problem(
                stage.line, f"no stage reads the output of '{stage.id}', so "
                            f"its records are dropped"))


def _input_line(checker: Validator, stage: StageSpec, index: int) -> int:
    for section, role in SECTION_ROLES.items():
        if role != stage.role:
            continue
        entries = (checker.doc.data.get("spec") or {}).get(section) or []
        for position, entry in enumerate(entries):
            if isinstance(entry, dict) and str(entry.get("id")) == stage.id:
                path = ("spec", section, position, "inputs", index)
                return checker.doc.line(path)
    return stage.line


def _cycles(stages: list[StageSpec], by_id: dict[str, StageSpec]
            ) -> list[list[str]]:
    """Find cycles by depth-first search, each reported once."""
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(stage_id: str) -> None:
        state[stage_id] = 1
        stack.append(stage_id)
        for name in by_id[stage_id].inputs:
            if name not in by_id:
                continue
            if state.get(name) == 1:
                cycles.append(list(reversed(stack[stack.index(name):])))
            elif name not in state:
                visit(name)
        stack.pop()
        state[stage_id] = 2

    for stage in stages:
        if stage.id not in state:
            visit(stage.id)
    return cycles


def _topological(stages: list[StageSpec]) -> list[StageSpec]:
    done: set[str] = set()
    ordered: list[StageSpec] = []
    by_id = {stage.id: stage for stage in stages}

    def visit(stage: StageSpec) -> None:
        if stage.id in done:
            return
        done.add(stage.id)
        for name in stage.inputs:
            visit(by_id[name])
        ordered.append(stage)

    for stage in stages:
        visit(stage)
    return ordered


def load_pipeline(path: str) -> tuple[Pipeline | None, list[Problem],
                                      list[Problem]]:
    """Load and validate a pipeline file."""
    try:
        doc = document.load_file(path)
    except OSError as error:
        return None, [Problem(1, f"cannot read the file: "
                                 f"{error.strerror}")], []
    return validate(doc)
