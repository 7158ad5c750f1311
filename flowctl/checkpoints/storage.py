"""The interface of a checkpoint storage backend.

A backend stores checkpoints by id.  Writing one is two steps: the parts
(`write_part`, any number, in any order) and then the manifest
(`publish`), which must become visible atomically and only after every
part is durable.  A crash at any point leaves either no new checkpoint or
a partial one that `list_checkpoints` reports as partial, and never
disturbs a checkpoint that was already published.

Backends raise `StorageError` with a message naming the checkpoint, the
part and the place (a path, a server) for every failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from flowctl.checkpoints.manifest import Manifest


class StorageError(Exception):
    """A checkpoint could not be written, read or removed."""


@dataclass
class CheckpointInfo:
    """A checkpoint as listed: its manifest, or why it has none."""

    id: str
    state: str                  # "complete" or "partial"
    manifest: Manifest | None
    size: int                   # bytes stored, parts and manifest


class CheckpointStorage(Protocol):
    """The operations every backend (local, Redis, etcd) provides."""

    location: str

    def write_part(self, checkpoint_id: str, name: str, data: bytes) -> None:
        """Store one part durably; it stays invisible until publish."""

    def publish(self, manifest: Manifest) -> None:
        """Store the manifest last, atomically, making the checkpoint whole."""

    def read_part(self, checkpoint_id: str, name: str) -> bytes:
        """Return a part's bytes exactly as stored."""

    def list_checkpoints(self) -> list[CheckpointInfo]:
        """Return every checkpoint, complete or partial, oldest first."""

    def delete(self, checkpoint_id: str) -> None:
        """Remove a checkpoint and all its parts."""

    def lock(self) -> None:
        """Claim the storage for this run until the process exits.

        Raise StorageError when another run has claimed it, because the
        two runs' checkpoint ids would collide.
        """
