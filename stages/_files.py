"""File sources and sinks that take part in checkpoints.

Kept apart from `_common` so that stages which do not read or write
files (map, filter) start without importing what these need.
"""

from __future__ import annotations

import hashlib
import os
import select
import shutil
import stat
import sys
import uuid
from typing import IO, Any, Iterator

import msgpack

from flowctl import faults
from flowctl.checkpoints.local import fsync_directory
from flowctl.stage import (IDLE, Checkpointable, Sink, Source, StageError,
                           context)
from flowctl.stages._common import open_output

RESTORE_ADVICE = ("restore the file, or run without --resume to start "
                  "over")

# The first bytes of a file, hashed, tell a replaced file from the one a
# checkpoint read, also when it was copied to a new inode.
HEAD_BYTES = 64 * 1024
# Bytes per read from a pipe or terminal.
STREAM_READ_SIZE = 64 * 1024


def _head_hash(path: str, size: int) -> str:
    with open(path, "rb") as file:
        return hashlib.sha256(file.read(size)).hexdigest()


class FileSource(Source, Checkpointable):
    """A source that reads a file line by line and checkpoints its position.

    The state is the byte offset after the last line read (in the
    decompressed stream for '.gz' files) with the file's identity: device,
    inode, size, and a hash of its first bytes.  A resumed run seeks back
    to the offset, after checking that the file is the same one and is not
    shorter than the offset.  flowctl's stdin cannot be rewound: a resumed
    run reads on from whatever stdin gives it then.
    """

    def open(self, config: dict[str, Any]) -> None:
        self.path = config["path"]
        self.offset = 0
        self.lines_read = 0
        self.records_read = 0
        if self.path == "-":
            # The text file object owns the descriptor; keep it open.
            self.stdin = context().open_stdin()
            self.file = self.stdin.buffer
            self.identity: dict[str, Any] = {}
            return
        if self.path.endswith(".gz"):
            import gzip

            self.file = gzip.open(self.path, "rb")
        else:
            self.file = open(self.path, "rb")
        status = os.fstat(self.file.fileno()) if not self.path.endswith(
            ".gz") else os.stat(self.path)
        head = min(HEAD_BYTES, status.st_size)
        self.identity = {"device": status.st_dev, "inode": status.st_ino,
                         "head_size": head,
                         "head_sha256": _head_hash(self.path, head)}

    def lines(self, idle: bool = False) -> Iterator[Any]:
        """Yield the file's lines; the offset counts each before it is
        yielded, so a save between two records includes the last one.

        With `idle`, a pipe or terminal that has no line ready yields IDLE
        before the read blocks, so that the records so far go out at once
        instead of waiting in a batch for lines that come later.
        """
        if idle and not self.path.endswith(".gz") and not stat.S_ISREG(
                os.fstat(self.file.fileno()).st_mode):
            yield from self._stream_lines()
            return
        for line in self.file:
            self.offset += len(line)
            self.lines_read += 1
            yield line

    def _stream_lines(self) -> Iterator[Any]:
        fd = self.file.fileno()
        rest = b""
        while True:
            if not select.select([fd], [], [], 0)[0]:
                yield IDLE
            chunk = os.read(fd, STREAM_READ_SIZE)
            if not chunk:
                break
            data = rest + chunk if rest else chunk
            start = 0
            end = data.find(b"\n")
            while end >= 0:
                line = data[start:end + 1]
                self.offset += len(line)
                self.lines_read += 1
                yield line
                start = end + 1
                end = data.find(b"\n", start)
            rest = data[start:]
        if rest:
            self.offset += len(rest)
            self.lines_read += 1
            yield rest

    def save_checkpoint(self) -> bytes:
        return msgpack.packb({"path": self.path, "offset": self.offset,
                              "records": self.records_read,
                              "lines": self.lines_read,
                              "identity": self.identity,
                              "extra": self.extra_state()})

    def extra_state(self) -> Any:
        """Return what a subclass needs besides the offset, such as a CSV
        header."""
        return None

    def checkpoint_info(self) -> dict[str, Any]:
        return {"path": self.path, "offset": self.offset,
                "records": self.records_read}

    def restore_checkpoint(self, data: bytes) -> None:
        state = msgpack.unpackb(data, raw=False)
        offset = int(state["offset"])
        self.records_read = int(state.get("records", 0))
        self.lines_read = int(state.get("lines", 0))
        self.restore_extra(state.get("extra"))
        if self.path == "-":
            print("reading flowctl's stdin, which cannot be rewound: the "
                  "resumed run reads on from the input it is given now",
                  file=sys.stderr)
            return
        saved = state.get("identity") or {}
        head = int(saved.get("head_size", 0))
        status = os.stat(self.path)
        if not self.path.endswith(".gz") and status.st_size < offset:
            raise StageError(
                f"{self.path} was truncated: it has {status.st_size} bytes, "
                f"but the checkpoint had read {offset}; {RESTORE_ADVICE}")
        if _head_hash(self.path, head) != saved.get("head_sha256"):
            raise StageError(
                f"{self.path} is not the file the checkpoint read: its first "
                f"{head} bytes differ (the file was replaced or rewritten), "
                f"so the saved offset {offset} means nothing in it; "
                f"{RESTORE_ADVICE}")
        self.file.seek(offset)
        if self.file.tell() != offset:
            raise StageError(
                f"{self.path} was truncated: it ends before offset {offset}, "
                f"where the checkpoint stopped reading; {RESTORE_ADVICE}")
        self.offset = offset

    def restore_extra(self, extra: Any) -> None:
        """Take up what `extra_state` returned."""

    def close(self) -> None:
        self.file.close()


class FileSink(Sink, Checkpointable):
    """A sink writing text to a file, exactly once under checkpointing.

    Without checkpointing, records go straight to the file (see
    `open_output`).  With it, they go to a pending file in a hidden
    directory beside the target (`.NAME.flowctl/`).  At a barrier the
    pending file is fsynced and closed, and the state lists it with the
    target's committed size; the commit appends the pending files to the
    target, fsyncs it and deletes them.  Restoring truncates the target to
    the committed size the checkpoint saw, plus the pending files that
    were already committed (those that are gone), appends the others, and
    deletes every pending file a later checkpoint left.  A crash at any
    point therefore leaves the target holding each record once after the
    resumed run.  '-' (flowctl's stdout) cannot be taken back: records are
    written at once, which is at-least-once after a recovery.
    """

    def open(self, config: dict[str, Any]) -> None:
        self.path = config["path"]
        ctx = context()
        self.transactional = ctx.checkpointing and self.path != "-"
        self.pending: list[list[Any]] = []
        if not self.transactional:
            self.file = open_output(self.path)
            return
        self.path = os.path.abspath(self.path)
        directory, name = os.path.split(self.path)
        os.makedirs(directory, exist_ok=True)
        self.pending_dir = os.path.join(directory, f".{name}.flowctl")
        os.makedirs(self.pending_dir, mode=0o700, exist_ok=True)
        if ctx.restore is None:
            # A fresh start: the run begins with an empty file.
            with open(self.path, "wb"):
                pass
            self._drop_pending(keep=())
        self.file = self._new_pending_file()

    def _new_pending_file(self) -> IO[str]:
        self.current = os.path.join(self.pending_dir,
                                    f"{uuid.uuid4().hex}.pending")
        return open(self.current, "w", encoding="utf-8", newline="")

    def written(self) -> int:
        """Bytes written so far, committed, prepared or pending."""
        if not self.transactional:
            return self.file.tell() if self.file.seekable() else 0
        self.file.flush()
        return (os.path.getsize(self.path)
                + sum(size for _, size in self.pending)
                + os.fstat(self.file.fileno()).st_size)

    def flush(self) -> None:
        self.file.flush()

    def save_checkpoint(self) -> bytes:
        if not self.transactional:
            self.file.flush()
            return msgpack.packb({"stdout": True})
        self.file.flush()
        size = os.fstat(self.file.fileno()).st_size
        if size:
            os.fsync(self.file.fileno())
            self.file.close()
            self.pending.append([os.path.basename(self.current), size])
            fsync_directory(self.pending_dir)
            self.file = self._new_pending_file()
        return msgpack.packb({"base": os.path.getsize(self.path),
                              "pending": self.pending})

    def checkpoint_info(self) -> dict[str, Any]:
        return {"path": self.path,
                "pending_bytes": sum(size for _, size in self.pending)}

    def commit_checkpoint(self, data: bytes) -> None:
        if self.transactional:
            self._apply(msgpack.unpackb(data, raw=False))

    def restore_checkpoint(self, data: bytes) -> None:
        state = msgpack.unpackb(data, raw=False)
        if self.transactional and "base" in state:
            self._apply(state)
            self._drop_pending(keep=(os.path.basename(self.current),))

    def _apply(self, state: dict[str, Any]) -> None:
        """Commit what `state` lists; safe to repeat after a crash."""
        # Pending files already committed were deleted, in order, so they
        # form a prefix of the list, and their bytes follow `base`.
        size = int(state["base"])
        entries = state["pending"]
        done = 0
        while done < len(entries) and not os.path.exists(
                os.path.join(self.pending_dir, entries[done][0])):
            size += int(entries[done][1])
            done += 1

        if not os.path.exists(self.path):
            raise StageError(
                f"{self.path} is missing, but it held the output committed "
                f"up to the checkpoint; {RESTORE_ADVICE}")
        actual = os.path.getsize(self.path)
        if actual < size:
            raise StageError(
                f"{self.path} has {actual} bytes, fewer than the {size} "
                f"committed to it: the file was changed outside flowctl; "
                f"{RESTORE_ADVICE}")

        # Truncating first drops a commit a crash interrupted.
        with open(self.path, "r+b") as target:
            target.truncate(size)
            target.seek(size)
            for name, _ in entries[done:]:
                with open(os.path.join(self.pending_dir, name), "rb") as part:
                    shutil.copyfileobj(part, target)
                faults.hit("commit", context().stage_id)
            target.flush()
            os.fsync(target.fileno())

        for name, _ in entries[done:]:
            os.unlink(os.path.join(self.pending_dir, name))
        fsync_directory(self.pending_dir)
        committed = {name for name, _ in entries}
        self.pending = [entry for entry in self.pending
                        if entry[0] not in committed]

    def _drop_pending(self, keep: tuple[str, ...]) -> None:
        for name in os.listdir(self.pending_dir):
            if name not in keep:
                os.unlink(os.path.join(self.pending_dir, name))

    def close(self) -> None:
        self.file.close()
        if not self.transactional:
            return
        if os.path.getsize(self.current) == 0:
            os.unlink(self.current)
        if not os.listdir(self.pending_dir):
            os.rmdir(self.pending_dir)
