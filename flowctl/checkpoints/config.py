"""The `checkpoint` section of a pipeline file, as a validated model.

Defaults apply to every key the file leaves out; `flowctl run
--checkpoint-dir DIR` turns checkpointing on with these defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field

INCLUDE_CHOICES = ("source_offsets", "processor_state", "metrics", "errors")
MODES = ("auto", "manual", "off")
MISSING_CHOICES = ("start-fresh", "fail")
CORRUPTED_CHOICES = ("use-previous", "start-fresh", "fail")
PARTIAL_CHOICES = ("best-effort", "fail")
STRATEGIES = ("fixed", "adaptive")
COMPRESSIONS = ("none", "zstd")


@dataclass
class Adaptive:
    """Bounds of the adaptive strategy (see `Coordinator.interval`)."""

    min_interval: float = 1.0
    max_interval: float = 600.0
    # Share of wall time that checkpoints may take.
    target_share: float = 0.05


@dataclass
class Recovery:
    mode: str = "auto"
    missing: str = "start-fresh"
    corrupted: str = "use-previous"
    partial: str = "best-effort"
    validate_schema: bool = True
    validate_integrity: bool = True
    max_age: float | None = None        # seconds; None checks no age


@dataclass
class CheckpointConfig:
    enabled: bool = False
    interval: float = 30.0
    strategy: str = "fixed"
    storage: str = "local"
    directory: str = "./checkpoints"
    include: tuple[str, ...] = INCLUDE_CHOICES
    records: int | None = None          # a checkpoint every N source records
    on_shutdown: bool = True
    retain: int = 3
    compression: str = "none"
    timeout: float = 30.0               # barriers.timeout
    recovery: Recovery = field(default_factory=Recovery)
    adaptive: Adaptive = field(default_factory=Adaptive)
