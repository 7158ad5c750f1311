"""Check the `spec.checkpoint` section of a pipeline file.

`check_checkpoint` builds the `CheckpointConfig` for `Pipeline.checkpoint`
and reports every problem of the section through the caller's `Validator`,
each at its line.  The section, `distributed` and `barriers` each count as
enabled when they are present and have no `enabled` key.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from flowctl import units
from flowctl.checkpoints.config import (COMPRESSIONS, CORRUPTED_CHOICES,
                                        INCLUDE_CHOICES, MISSING_CHOICES,
                                        MODES, PARTIAL_CHOICES, STRATEGIES,
                                        Adaptive, CheckpointConfig, Recovery)
from flowctl.validate import Validator, did_you_mean

SECTION = ("spec", "checkpoint")
CHECKPOINT_KEYS = ("enabled", "interval", "strategy", "adaptive", "storage",
                   "directory", "include", "triggers", "retain", "recovery",
                   "compression", "distributed", "barriers")
ADAPTIVE_KEYS = ("min_interval", "max_interval", "target_share")
STORAGE_KEYS = ("type", "directory", "compression")
TRIGGERS_KEYS = ("interval", "records", "on_shutdown")
RECOVERY_KEYS = ("mode", "strategy", "validate")
RECOVERY_STRATEGY_KEYS = ("missing", "corrupted", "partial")
RECOVERY_VALIDATE_KEYS = ("schema", "integrity", "age")
DISTRIBUTED_KEYS = ("enabled", "coordination", "partition_strategy",
                    "worker_id")
BARRIERS_KEYS = ("enabled", "timeout", "min_workers")

STORAGE_TYPES = ("local",)
# Backends that the file format names but this version does not include.
UNAVAILABLE_STORAGE_TYPES = ("redis", "etcd")

# A parser reads one value at a path, reports it if it is invalid and then
# returns None.
Parser = Callable[[Validator, tuple, Any], Any]


def check_checkpoint(checker: Validator, spec: dict) -> CheckpointConfig:
    """Build the checkpoint settings from `spec.checkpoint`.

    Without the section checkpointing is off.  `checkpoint:` with no value
    turns it on with the defaults.
    """
    if "checkpoint" not in spec:
        return CheckpointConfig()
    section = spec["checkpoint"]
    if section is None:
        section = {}
    if not isinstance(section, dict):
        checker.problem(SECTION, f"spec.checkpoint must be a mapping, not "
                                 f"{type(section).__name__}",
                        "write, for example, checkpoint: {enabled: true}")
        return CheckpointConfig()
    checker.known_keys(SECTION, section, CHECKPOINT_KEYS, "spec.checkpoint")
    config = CheckpointConfig(enabled=True)
    _read(checker, section, SECTION, "enabled", _flag, config)
    _read(checker, section, SECTION, "interval", _duration, config)
    _read(checker, section, SECTION, "strategy", _one_of(STRATEGIES), config)
    _read(checker, section, SECTION, "include", _include, config)
    if "include" in section and "source_offsets" not in config.include:
        checker.warning(
            SECTION + ("include",),
            "include leaves out source_offsets: after a recovery or a "
            "resume the sources start from the beginning, while the sinks "
            "keep what they committed, so those records are written twice",
            "add source_offsets unless the sinks can take duplicates")
    _read(checker, section, SECTION, "retain", _positive_integer, config)
    _check_storage(checker, section, config)
    _check_triggers(checker, section, config)
    if "adaptive" in section:
        _check_adaptive(checker, config.adaptive)
        if section.get("strategy", "fixed") == "fixed":
            checker.warning(SECTION + ("adaptive",),
                            "spec.checkpoint.adaptive has no effect with "
                            "strategy fixed",
                            "set strategy: adaptive, or remove adaptive")
    if "recovery" in section:
        config.recovery = _check_recovery(checker)
    if "distributed" in section:
        _check_distributed(checker)
    if "barriers" in section:
        _check_barriers(checker, config)
    return config


def _name(path: tuple) -> str:
    return ".".join(str(part) for part in path)


def _block(checker: Validator, path: tuple, keys: tuple) -> dict:
    """Return the mapping at `path`, or {} if it is null or not a mapping."""
    block = checker.mapping(path, _name(path)) or {}
    checker.known_keys(path, block, keys, _name(path))
    return block


def _parse(checker: Validator, block: dict, path: tuple, key: str,
           parser: Parser) -> Any:
    """Return `block[key]` parsed, or None if it is absent or invalid."""
    if key not in block:
        return None
    return parser(checker, path + (key,), block[key])


def _read(checker: Validator, block: dict, path: tuple, key: str,
          parser: Parser, target: object, field: str = "") -> None:
    """Store `block[key]`, parsed, on `target` if it is present and valid."""
    value = _parse(checker, block, path, key, parser)
    if value is not None:
        setattr(target, field or key, value)


def _flag(checker: Validator, path: tuple, value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    checker.problem(path, f"{_name(path)} must be true or false, not "
                          f"{value!r}")
    return None


def _positive_integer(checker: Validator, path: tuple,
                      value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    checker.problem(path, f"{_name(path)} must be a positive integer, not "
                          f"{value!r}")
    return None


def _duration(checker: Validator, path: tuple, value: Any) -> float | None:
    """Return seconds for a duration longer than zero."""
    too_short = f"{_name(path)} must be longer than 0s, not {value!r}"
    if (isinstance(value, (int, float)) and not isinstance(value, bool)
            and value <= 0):
        checker.problem(path, too_short)
        return None
    try:
        seconds = units.parse_duration(value)
    except ValueError:
        checker.problem(path, f"{_name(path)} must be a duration, not "
                              f"{value!r}", units.DURATION_HINT)
        return None
    if seconds <= 0:
        checker.problem(path, too_short)
        return None
    return seconds


def _one_of(choices: tuple[str, ...]) -> Parser:
    def parse(checker: Validator, path: tuple, value: Any) -> str | None:
        return _choice(checker, path, value, choices, _name(path))
    return parse


def _choice(checker: Validator, path: tuple, value: Any,
            choices: tuple[str, ...], what: str) -> str | None:
    if isinstance(value, str) and value in choices:
        return value
    checker.problem(path, f"{what} must be one of {', '.join(choices)}, not "
                          f"{value!r}", did_you_mean(value, choices))
    return None


def _directory(checker: Validator, path: tuple, value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value
    checker.problem(path, f"{_name(path)} must be a directory path, not "
                          f"{value!r}")
    return None


def _compression(checker: Validator, path: tuple, value: Any) -> str | None:
    """Parse `zstd` or `none`, where YAML true means zstd and false none."""
    if value is True:
        return "zstd"
    if value is False:
        return "none"
    return _choice(checker, path, value, COMPRESSIONS, _name(path))


def _share(checker: Validator, path: tuple, value: Any) -> float | None:
    """Parse a share of wall time: a number such as 0.05, or "5%"."""
    share = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        share = float(value)
    elif isinstance(value, str) and value.strip().endswith("%"):
        try:
            share = float(value.strip()[:-1]) / 100
        except ValueError:
            share = None
    if share is None or not 0 < share < 1:
        checker.problem(path, f"{_name(path)} must be a number between 0 "
                              f"and 1 or a percentage, not {value!r}",
                        "write, for example, 0.05 or 5%")
        return None
    return share


def _include(checker: Validator, path: tuple,
             value: Any) -> tuple[str, ...] | None:
    if not isinstance(value, list) or not value:
        checker.problem(path, f"{_name(path)} must be a non-empty list, not "
                              f"{value!r}",
                        "list some of " + ", ".join(INCLUDE_CHOICES))
        return None
    parts: list[str] = []
    valid = True
    for index, item in enumerate(value):
        if _choice(checker, path + (index,), item, INCLUDE_CHOICES,
                   f"each entry of {_name(path)}") is None:
            valid = False
        elif item in parts:
            checker.problem(path + (index,), f"{_name(path)} lists {item!r} "
                                             f"twice")
            valid = False
        else:
            parts.append(item)
    return tuple(parts) if valid else None


def _check_storage(checker: Validator, section: dict,
                   config: CheckpointConfig) -> None:
    """Apply `storage`, `directory` and `compression`.

    The storage mapping may also set the directory and the compression.  If
    it and the section both set one, they must agree.
    """
    path = SECTION + ("storage",)
    directory = _parse(checker, section, SECTION, "directory", _directory)
    compression = _parse(checker, section, SECTION, "compression",
                         _compression)
    storage = section.get("storage", "local")
    block: dict = {}
    type_path = path
    if isinstance(storage, dict):
        block = storage
        storage_type = block.get("type", "local")
        type_path = path + ("type",)
    elif isinstance(storage, str):
        storage_type = storage
    else:
        checker.problem(path, f"spec.checkpoint.storage must be a storage "
                              f"type or a mapping, not {storage!r}",
                        "write storage: local")
        storage_type = None
    if storage_type in UNAVAILABLE_STORAGE_TYPES:
        checker.problem(type_path, f"{storage_type} storage is not available "
                                   f"in this version of flowctl",
                        "use storage: local")
        # Skip the other keys, which belong to a backend this version lacks.
        block = {}
    elif storage_type is not None and storage_type not in STORAGE_TYPES:
        checker.problem(type_path, f"unknown storage type {storage_type!r}",
                        did_you_mean(storage_type, STORAGE_TYPES +
                                     UNAVAILABLE_STORAGE_TYPES)
                        or "use local")
        block = {}
    elif storage_type is not None:
        config.storage = storage_type
        checker.known_keys(path, block, STORAGE_KEYS, _name(path))
    storage_directory = _parse(checker, block, path, "directory", _directory)
    storage_compression = _parse(checker, block, path, "compression",
                                 _compression)
    if directory is not None and storage_directory is not None and (
            os.path.normpath(directory) !=
            os.path.normpath(storage_directory)):
        _report_conflict(checker, "directory", directory, storage_directory)
    if (compression is not None and storage_compression is not None
            and compression != storage_compression):
        _report_conflict(checker, "compression", compression,
                         storage_compression)
    config.directory = storage_directory or directory or config.directory
    config.compression = (storage_compression or compression
                          or config.compression)


def _report_conflict(checker: Validator, key: str, section_value: str,
                     storage_value: str) -> None:
    checker.problem(SECTION + ("storage", key),
                    f"spec.checkpoint.storage.{key} {storage_value!r} "
                    f"differs from spec.checkpoint.{key} {section_value!r}",
                    f"give the {key} in one place")


def _check_triggers(checker: Validator, section: dict,
                    config: CheckpointConfig) -> None:
    """Apply `triggers`, whose interval replaces the section's interval."""
    path = SECTION + ("triggers",)
    triggers = _block(checker, path, TRIGGERS_KEYS)
    interval = _parse(checker, triggers, path, "interval", _duration)
    if interval is not None:
        config.interval = interval
        if "interval" in section:
            checker.warning(SECTION + ("interval",),
                            "spec.checkpoint.interval is ignored because "
                            "spec.checkpoint.triggers.interval is set",
                            "remove one of them")
    _read(checker, triggers, path, "records", _positive_integer, config)
    _read(checker, triggers, path, "on_shutdown", _flag, config)


def _check_adaptive(checker: Validator, adaptive: Adaptive) -> None:
    path = SECTION + ("adaptive",)
    block = _block(checker, path, ADAPTIVE_KEYS)
    bounds = {key: _parse(checker, block, path, key, _duration)
              for key in ("min_interval", "max_interval")}
    _read(checker, block, path, "target_share", _share, adaptive)
    if any(key in block and seconds is None
           for key, seconds in bounds.items()):
        return
    for key, seconds in bounds.items():
        if seconds is not None:
            setattr(adaptive, key, seconds)
    if adaptive.min_interval > adaptive.max_interval:
        def describe(key: str) -> str:
            seconds = getattr(adaptive, key)
            if key in block:
                return f"{_name(path + (key,))} {seconds:g}s"
            return f"the default {key} {seconds:g}s"

        at = "min_interval" if "min_interval" in block else "max_interval"
        checker.problem(path + (at,), f"{describe('min_interval')} is longer "
                                      f"than {describe('max_interval')}",
                        "make min_interval at most max_interval")


def _check_recovery(checker: Validator) -> Recovery:
    recovery = Recovery()
    path = SECTION + ("recovery",)
    block = _block(checker, path, RECOVERY_KEYS)
    if block.get("mode") is False:
        # YAML 1.1 reads an unquoted off as false.
        block = {**block, "mode": "off"}
    _read(checker, block, path, "mode", _one_of(MODES), recovery)
    strategy_path = path + ("strategy",)
    strategy = _block(checker, strategy_path, RECOVERY_STRATEGY_KEYS)
    for key, choices in (("missing", MISSING_CHOICES),
                         ("corrupted", CORRUPTED_CHOICES),
                         ("partial", PARTIAL_CHOICES)):
        _read(checker, strategy, strategy_path, key, _one_of(choices),
              recovery)
    validate_path = path + ("validate",)
    validate = _block(checker, validate_path, RECOVERY_VALIDATE_KEYS)
    _read(checker, validate, validate_path, "schema", _flag, recovery,
          "validate_schema")
    _read(checker, validate, validate_path, "integrity", _flag, recovery,
          "validate_integrity")
    _read(checker, validate, validate_path, "age", _duration, recovery,
          "max_age")
    return recovery


def _check_distributed(checker: Validator) -> None:
    """Check `distributed`, which this version accepts only when disabled.

    NOTE: CheckpointConfig has no fields for coordination,
    partition_strategy and worker_id, so they are checked and dropped.
    """
    path = SECTION + ("distributed",)
    block = _block(checker, path, DISTRIBUTED_KEYS)
    enabled = _parse(checker, block, path, "enabled", _flag)
    if "enabled" not in block:
        enabled = True
    if enabled:
        at = path + ("enabled",) if "enabled" in block else path
        checker.problem(at, "distributed checkpointing is not available in "
                            "this version of flowctl",
                        "remove spec.checkpoint.distributed, or set "
                        "enabled: false")
    for key in ("coordination", "partition_strategy"):
        if key in block and not isinstance(block[key], str):
            checker.problem(path + (key,), f"{_name(path + (key,))} must be "
                                           f"a string, not {block[key]!r}")
    worker_id = block.get("worker_id", "")
    if isinstance(worker_id, bool) or not isinstance(worker_id, (str, int)):
        checker.problem(path + ("worker_id",), f"{_name(path)}.worker_id "
                        f"must be a string or an integer, not {worker_id!r}")


def _check_barriers(checker: Validator, config: CheckpointConfig) -> None:
    """Apply `barriers`, whose timeout becomes `CheckpointConfig.timeout`.

    NOTE: CheckpointConfig has no field for min_workers, so it is checked
    and dropped.
    """
    path = SECTION + ("barriers",)
    block = _block(checker, path, BARRIERS_KEYS)
    if _parse(checker, block, path, "enabled", _flag) is False:
        checker.problem(path + ("enabled",), "unaligned checkpoints are not "
                        "available; barriers are always aligned",
                        "remove barriers.enabled, or set it to true")
    _read(checker, block, path, "timeout", _duration, config)
    _parse(checker, block, path, "min_workers", _positive_integer)
