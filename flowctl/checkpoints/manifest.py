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
    # Per stage: its definition and a fingerprint of it, so a resumed
    # pipeline whose stage changed is caught; the name of its part (None
    # for a stateless stage); whether it had reached the end of its
    # stream; what it reported about its state; its counters.
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    run_id: str = ""
    # Taken after every stage reached the end of its stream.
    final: bool = False
    # Seconds from the barrier's injection until every part was stored.
    duration: float = 0.0

    def to_json(self) -> bytes:
        data = asdict(self)
        return json.dumps(data, indent=2, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        raw = json.loads(data.decode("utf-8"))
        parts = {name: Part(**part) for name, part in raw.pop("parts").items()}
        return cls(parts=parts, **raw)

    @property
    def number(self) -> int:
        return int(self.id)


def checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_part(name: str, data: bytes, compression: str) -> tuple[bytes, Part]:
    """Return the bytes to store for a part and its manifest entry."""
    stored = data
    if compression == "zstd":
        import zstandard

        stored = zstandard.ZstdCompressor(level=3).compress(data)
    return stored, Part(name=name, size=len(stored), sha256=checksum(stored),
                        compression=compression, raw_size=len(data))


def decode_part(stored: bytes, part: Part) -> bytes:
    """Return a part's original bytes; raise ValueError if they are bad."""
    if part.compression == "zstd":
        import zstandard

        try:
            return zstandard.ZstdDecompressor().decompress(
                stored, max_output_size=max(part.raw_size, 1))
        except zstandard.ZstdError as error:
            raise ValueError(f"cannot decompress: {error}") from None
    return stored


def checkpoint_name(number: int) -> str:
    """Return the id of checkpoint `number`: zero-padded, so ids sort."""
    return f"{number:06d}"
