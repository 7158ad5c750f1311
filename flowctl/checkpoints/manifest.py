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
    # Per stage: its definition and a fingerprint of it, which catch a
    # stage changed before a resume. Also the name of its part (None for a
    # stateless stage), whether it had reached the end of its stream, what
    # it reported about its state, and its counters.
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
        """Parse a manifest; raise ValueError if it is not a valid one.

        Keys this version does not know are ignored, so a manifest written
        by a newer flowctl with extra fields still reads.
        """
        raw = json.loads(data.decode("utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("the manifest is not a JSON object")
        parts_raw = raw.get("parts")
        stages = raw.get("stages")
        if not isinstance(parts_raw, dict) or not isinstance(stages, dict) \
                or not all(isinstance(entry, dict)
                           for entry in stages.values()):
            raise ValueError("'parts' and 'stages' must be JSON objects")
        part_fields = set(Part.__dataclass_fields__)
        parts = {name: Part(**{key: value for key, value in part.items()
                               if key in part_fields})
                 for name, part in parts_raw.items()}
        known = set(cls.__dataclass_fields__) - {"parts"}
        manifest = cls(parts=parts, **{key: value for key, value in raw.items()
                                       if key in known})
        if not isinstance(manifest.id, str) or not manifest.id.isdigit():
            raise ValueError(f"invalid checkpoint id {manifest.id!r}")
        if not isinstance(manifest.created_at, (int, float)) \
                or not isinstance(manifest.format_version, int):
            raise ValueError("'created_at' and 'format_version' must be "
                             "numbers")
        for name, part in parts.items():
            if not isinstance(part.size, int) or not isinstance(part.sha256,
                                                                 str):
                raise ValueError(f"part {name!r} needs a size and a sha256")
        return manifest

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
