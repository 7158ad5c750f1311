"""The pipeline model: stages, their wiring, and run-wide settings.

A `Pipeline` is only ever built by `flowctl.validate`, from a pipeline file
or the inline form, after every check has passed.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from flowctl import codecs, protocol, runtime
from flowctl.checkpoints.config import CheckpointConfig
from flowctl.restarts import RestartPolicy

API_VERSION = "flowctl/v1"
KIND = "Pipeline"

DEFAULT_STOP_TIMEOUT = 10.0
DEFAULT_STOP_SIGNAL = "SIGTERM"
DEFAULT_LIVENESS_TIMEOUT = None   # off unless the pipeline file sets it


@dataclass
class StageSpec:
    """One stage of a pipeline, as the pipeline file declares it.

    Exactly one of `builtin` and `command` is set; a `shell:` string in the
    file becomes the command `/bin/sh -c STRING`.
    """

    id: str
    role: str                      # "source", "processor" or "sink"
    builtin: str | None = None
    command: list[str] | None = None
    codec: str = "msgpack"
    config: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    inputs: list[str] = field(default_factory=list)
    success_exit_codes: list[int] = field(default_factory=lambda: [0])
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    stop_signal: str = DEFAULT_STOP_SIGNAL
    stop_timeout: float = DEFAULT_STOP_TIMEOUT
    liveness_timeout: float | None = DEFAULT_LIVENESS_TIMEOUT
    line: int = 0

    def writes_to_stdout(self) -> bool:
        """Return whether this stage writes to flowctl's standard output:
        a built-in sink given path '-', or an executable sink with a text
        codec, whose own stdout is flowctl's.  An msgpack executable's
        stdout goes to its log."""
        if self.role != "sink":
            return False
        if self.command is not None:
            return self.codec in codecs.TEXT_CODECS
        return self.config.get("path") == "-"

    @property
    def label(self) -> str:
        if self.builtin:
            return self.builtin
        return shlex.join(self.command or [])


@dataclass
class Pipeline:
    """A validated pipeline: stages in an order where inputs come first."""

    name: str
    source: str                    # the file it came from, or "-e"
    stages: list[StageSpec]
    max_frame_size: int = protocol.DEFAULT_MAX_FRAME_SIZE
    batch_size: int = runtime.DEFAULT_BATCH_SIZE
    flush_interval: float = runtime.DEFAULT_FLUSH_INTERVAL
    # How long the stages may drain after Ctrl-C before they are stopped.
    drain_timeout: float = DEFAULT_STOP_TIMEOUT
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def stage(self, stage_id: str) -> StageSpec:
        for stage in self.stages:
            if stage.id == stage_id:
                return stage
        raise KeyError(stage_id)

    def readers_of(self, stage_id: str) -> list[StageSpec]:
        return [stage for stage in self.stages if stage_id in stage.inputs]

    def writes_to_stdout(self) -> bool:
        """Return whether some stage writes to flowctl's standard output."""
        return any(stage.writes_to_stdout() for stage in self.stages)
