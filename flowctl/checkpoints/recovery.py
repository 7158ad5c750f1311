"""Choose the checkpoint a run resumes from, and check it first.

A checkpoint is checked before anything is restored from it. Its manifest
must exist and be readable, or else the checkpoint is partial. The format
version must be this flowctl's. Every part must be present, with the
recorded size and SHA-256 checksum. Then its stages are compared with the
pipeline's, because a stage whose definition changed cannot take up the
state saved for the old one.

The configured strategies decide what happens when the newest checkpoint
is missing, damaged ("corrupted") or partial; `RecoveryError` carries the
message when the decision is to fail.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from flowctl.checkpoints.config import CheckpointConfig
from flowctl.checkpoints.manifest import (FORMAT_VERSION, Manifest,
                                          checksum, decode_part)
from flowctl.checkpoints.storage import (CheckpointInfo, CheckpointStorage,
                                         StorageError)
from flowctl.pipeline import Pipeline, StageSpec


class RecoveryError(Exception):
    """No checkpoint can be resumed from, and the configured strategy is
    to fail."""


def definition(spec: StageSpec) -> dict[str, Any]:
    """Return what of a stage's definition its saved state depends on."""
    return {"stage": spec.builtin, "command": spec.command,
            "codec": spec.codec, "config": spec.config,
            "inputs": sorted(spec.inputs), "role": spec.role}


def fingerprint(spec: StageSpec) -> str:
    text = json.dumps(definition(spec), sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def describe_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Say in words how a stage's definition changed."""
    changes = []
    for key in ("role", "stage", "command", "codec", "inputs"):
        if old.get(key) != new.get(key):
            changes.append(f"its {key} changed from {old.get(key)!r} to "
                           f"{new.get(key)!r}")
    old_config, new_config = old.get("config") or {}, new.get("config") or {}
    for key in sorted(set(old_config) | set(new_config)):
        if old_config.get(key) != new_config.get(key):
            if key not in new_config:
                changes.append(f"config key '{key}' was removed")
            elif key not in old_config:
                changes.append(f"config key '{key}' was added")
            else:
                changes.append(f"config key '{key}' changed from "
                               f"{old_config[key]!r} to {new_config[key]!r}")
    return "; ".join(changes) or "its definition changed"


def verify(storage: CheckpointStorage, info: CheckpointInfo,
           integrity: bool = True) -> list[str]:
    """Return what is wrong with a checkpoint, each naming the part."""
    manifest = info.manifest
    if manifest is None:
        return ["manifest.json is missing or unreadable: the checkpoint is "
                "partial (its writing was interrupted)"]
    if manifest.format_version != FORMAT_VERSION:
        return [f"manifest.json has format version "
                f"{manifest.format_version}; this flowctl reads version "
                f"{FORMAT_VERSION}"]
    problems = []
    for stage_id, entry in sorted(manifest.stages.items()):
        name = entry.get("part")
        if name is not None and name not in manifest.parts:
            problems.append(f"stage '{stage_id}' names part {name!r}, which "
                            f"the manifest does not list")
    for name, part in sorted(manifest.parts.items()):
        try:
            stored = storage.read_part(manifest.id, name)
        except StorageError as error:
            problems.append(f"part {name!r} cannot be read: {error}")
            continue
        if len(stored) != part.size:
            problems.append(f"part {name!r} is truncated or extended: "
                            f"{len(stored)} bytes, the manifest says "
                            f"{part.size}")
        elif integrity and checksum(stored) != part.sha256:
            problems.append(f"part {name!r} is corrupted: its SHA-256 "
                            f"checksum does not match the manifest")
    return problems


def read_states(storage: CheckpointStorage, manifest: Manifest,
                check: bool = True) -> dict[str, bytes | None]:
    """Return each stage's saved state, decompressed; with `check`, first
    compare each part with its size and checksum in the manifest."""
    states: dict[str, bytes | None] = {}
    for stage_id, entry in manifest.stages.items():
        name = entry.get("part")
        if name is None:
            states[stage_id] = None
            continue
        part = manifest.parts[name]
        stored = storage.read_part(manifest.id, name)
        if check and (len(stored) != part.size
                      or checksum(stored) != part.sha256):
            raise StorageError(f"part {name!r} of checkpoint {manifest.id} "
                               f"does not match its size and checksum in "
                               f"the manifest")
        try:
            states[stage_id] = decode_part(stored, part)
        except ValueError as error:
            raise StorageError(f"part {name!r} of checkpoint {manifest.id}: "
                               f"{error}") from None
    return states


@dataclass
class RestorePlan:
    """The state each stage starts from: a checkpoint's, or none."""

    manifest: Manifest | None = None
    states: dict[str, bytes | None] = field(default_factory=dict)
    finished: dict[str, bool] = field(default_factory=dict)
    # Stages that start without their saved state.
    fresh: set[str] = field(default_factory=set)

    def restore_for(self, stage_id: str) -> dict[str, Any] | None:
        """Return what the stage reads at start, or None for a fresh one."""
        if self.manifest is None or stage_id in self.fresh \
                or stage_id not in self.states:
            return None
        return {"checkpoint": self.manifest.id,
                "state": self.states[stage_id],
                "finished": self.finished.get(stage_id, False)}


Warn = Callable[[str], None]


def plan_resume(storage: CheckpointStorage, config: CheckpointConfig,
                pipeline: Pipeline, warn: Warn,
                from_id: str | None = None) -> RestorePlan:
    """Pick and check the checkpoint to resume from, following the
    configured recovery strategies; raise RecoveryError to fail."""
    recovery = config.recovery
    if recovery.mode == "off":
        raise RecoveryError("checkpoint recovery is off (recovery.mode: off) "
                            "in the pipeline file, so the run cannot resume")
    try:
        found = storage.list_checkpoints()
    except StorageError as error:
        raise RecoveryError(str(error)) from None
    if from_id is not None:
        return _plan_from(storage, config, pipeline, warn, found, from_id)
    ours = [info for info in found if info.manifest is None
            or info.manifest.pipeline == pipeline.name]
    _check_partial(ours, recovery.partial, storage, warn)
    for info in reversed([info for info in ours if info.manifest]):
        problems = verify(storage, info, recovery.validate_integrity)
        if problems:
            if recovery.corrupted == "fail":
                raise RecoveryError(_damage_message(storage, info, problems))
            if recovery.corrupted == "start-fresh":
                warn(f"{_damage_message(storage, info, problems)}; starting "
                     f"from the beginning (recovery.strategy.corrupted: "
                     f"start-fresh)")
                return RestorePlan()
            warn(f"{_damage_message(storage, info, problems)}; trying the "
                 f"previous checkpoint (recovery.strategy.corrupted: "
                 f"use-previous)")
            continue
        if _too_old(info.manifest, config):
            age = time.time() - info.manifest.created_at
            return _missing(config, storage, warn,
                            f"the newest valid checkpoint, {info.id}, is "
                            f"{age / 3600:.1f}h old, older than "
                            f"recovery.validate.age")
        return _plan_for(storage, config, pipeline, warn, info.manifest)
    return _missing(config, storage, warn,
                    f"no valid checkpoint of pipeline '{pipeline.name}' in "
                    f"{storage.location}")


def _plan_from(storage: CheckpointStorage, config: CheckpointConfig,
               pipeline: Pipeline, warn: Warn, found: list[CheckpointInfo],
               from_id: str) -> RestorePlan:
    matches = [info for info in found
               if info.id == from_id or info.id.lstrip("0") == from_id.lstrip("0")]
    if not matches:
        raise RecoveryError(f"checkpoint {from_id} not found in "
                            f"{storage.location}; `flowctl checkpoint list` "
                            f"shows the checkpoints there")
    info = matches[0]
    problems = verify(storage, info, config.recovery.validate_integrity)
    if problems:
        raise RecoveryError(_damage_message(storage, info, problems))
    if info.manifest.pipeline != pipeline.name:
        raise RecoveryError(f"checkpoint {info.id} belongs to pipeline "
                            f"'{info.manifest.pipeline}', not "
                            f"'{pipeline.name}'")
    return _plan_for(storage, config, pipeline, warn, info.manifest)


def _check_partial(found: list[CheckpointInfo], strategy: str,
                   storage: CheckpointStorage, warn: Warn) -> None:
    complete = [int(info.id) for info in found if info.manifest is not None]
    newest = complete[-1] if complete else 0
    for info in found:
        if info.manifest is None and int(info.id) > newest:
            message = (f"checkpoint {info.id} in {storage.location} is "
                       f"partial: its manifest was never written")
            if strategy == "fail":
                raise RecoveryError(f"{message} (recovery.strategy.partial: "
                                    f"fail)")
            warn(f"{message}; it is skipped (recovery.strategy.partial: "
                 f"best-effort)")


def _damage_message(storage: CheckpointStorage, info: CheckpointInfo,
                    problems: list[str]) -> str:
    return (f"checkpoint {info.id} in {storage.location} is damaged: "
            f"{'; '.join(problems)}")


def _too_old(manifest: Manifest, config: CheckpointConfig) -> bool:
    max_age = config.recovery.max_age
    return max_age is not None and time.time() - manifest.created_at > max_age


def _missing(config: CheckpointConfig, storage: CheckpointStorage, warn: Warn,
             reason: str) -> RestorePlan:
    if config.recovery.missing == "fail":
        raise RecoveryError(f"{reason} (recovery.strategy.missing: fail)")
    warn(f"{reason}; starting from the beginning "
         f"(recovery.strategy.missing: start-fresh)")
    return RestorePlan()


def _plan_for(storage: CheckpointStorage, config: CheckpointConfig,
              pipeline: Pipeline, warn: Warn, manifest: Manifest) -> RestorePlan:
    try:
        # verify() has compared the parts already.
        states = read_states(storage, manifest, check=False)
    except StorageError as error:
        raise RecoveryError(str(error)) from None
    plan = RestorePlan(manifest=manifest, states=states)
    for stage_id, entry in manifest.stages.items():
        plan.finished[stage_id] = bool(entry.get("finished"))
    if config.recovery.validate_schema:
        _check_stages(config, pipeline, manifest, plan, warn)
    return plan


def _check_stages(config: CheckpointConfig, pipeline: Pipeline,
                  manifest: Manifest, plan: RestorePlan, warn: Warn) -> None:
    """Compare the pipeline's stages with those the checkpoint saved."""
    manual = config.recovery.mode == "manual"
    current = {spec.id: spec for spec in pipeline.stages}
    for spec in pipeline.stages:
        entry = manifest.stages.get(spec.id)
        if entry is None:
            if spec.role == "source":
                effect = "it starts from the beginning of its input"
            else:
                effect = (f"it starts without state and gets only the "
                          f"records that follow checkpoint {manifest.id}")
            message = f"stage '{spec.id}' is not in checkpoint {manifest.id}"
            if manual:
                raise RecoveryError(
                    f"{message}. With recovery.mode: manual the run does not "
                    f"resume; undo the change, or run without --resume to "
                    f"start over")
            plan.fresh.add(spec.id)
            warn(f"{message}; {effect}")
            continue
        if entry.get("fingerprint") == fingerprint(spec):
            continue
        change = describe_change(entry.get("definition") or {},
                                 definition(spec))
        if entry.get("part") is None:
            warn(f"stage '{spec.id}' changed since checkpoint {manifest.id} "
                 f"({change}); it keeps no state, so the run resumes")
            continue
        message = (f"stage '{spec.id}' changed since checkpoint "
                   f"{manifest.id}: {change}; its saved state was made by "
                   f"the old definition")
        if manual:
            raise RecoveryError(
                f"{message}. With recovery.mode: manual the run does not "
                f"resume; undo the change, resume another checkpoint with "
                f"--from, or run without --resume to start over")
        plan.fresh.add(spec.id)
        warn(f"{message}, so it starts without it (recovery.mode: auto)")
    for stage_id, entry in manifest.stages.items():
        if stage_id in current:
            continue
        message = (f"stage '{stage_id}' of checkpoint {manifest.id} is no "
                   f"longer in the pipeline")
        if entry.get("part") is None:
            warn(f"{message}; it kept no state")
        elif manual:
            raise RecoveryError(
                f"{message}, and its saved state would be lost. With "
                f"recovery.mode: manual the run does not resume; undo the "
                f"change, or run without --resume to start over")
        else:
            warn(f"{message}; its saved state is dropped, so what it held "
                 f"(a source's position, a sink's output) does not carry "
                 f"over")
