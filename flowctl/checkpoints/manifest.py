"""The manifest: the contents of one checkpoint and how to check them.

A manifest is a JSON document stored last, after every part it lists, so
a checkpoint without a manifest is partial and never taken for a whole
one.  Each part is listed with its size and SHA-256 checksum as stored
(after compression), so damage is found before anything is restored.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

FORMAT_VERSION = 1


@dataclass
class Part:
    """One stored blob of a checkpoint: a stage's state, as stored."""

    name: str
    size: int
    sha256: str
    compression: str = "none"   # "none" or "zstd"
    raw_size: int = 0           # size before compression


@dataclass
class Manifest:
    """Everything needed to validate and restore one checkpoint."""

    id: str
    pipeline: str
    created_at: float = field(default_factory=time.time)
    format_version: int = FORMAT_VERSION
    parts: dict[str, Part] = field(default_factory=dict)
    # Per stage: a fingerprint of its definition, so a resumed pipeline
    # whose stage changed is caught, and what the stage reported about its state.
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> bytes:
        data = asdict(self)
        return json.dumps(data, indent=2, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        raw = json.loads(data.decode("utf-8"))
        parts = {name: Part(**part) for name, part in raw.pop("parts").items()}
        return cls(parts=parts, **raw)


def checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
