"""Checkpoints as directories on the local disk.

Layout, under the configured directory::

    000012/                 one directory per checkpoint, mode 0700
        parse.state         one file per part, mode 0600
        count.state.zst     (a compressed part)
        manifest.json       written last
    000013/                 no manifest yet: partial

Every file is written to a temporary name, fsynced, renamed into place,
and the directory fsynced, so a crash leaves either the old state or the
new one.  The manifest goes last, so a checkpoint directory without one is
partial and is never restored.
"""

from __future__ import annotations

import errno
import os
import shutil
from typing import Callable

from flowctl import faults

from flowctl.checkpoints.manifest import Manifest
from flowctl.checkpoints.storage import CheckpointInfo, StorageError

MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".lock"
TEMPORARY_SUFFIX = ".tmp"


def fsync_directory(path: str) -> None:
    """Make a rename or unlink in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomically(path: str, data: bytes,
                          before_rename: Callable[[], None] | None = None
                          ) -> None:
    """Write, fsync, rename over `path`, fsync the directory."""
    temporary = path + TEMPORARY_SUFFIX
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    os.close(fd)
    if before_rename is not None:
        before_rename()
    os.rename(temporary, path)
    fsync_directory(os.path.dirname(path))


def describe_os_error(error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        return "no space left on the device"
    if error.errno == errno.EFBIG:
        return "file too large for the file size limit"
    return error.strerror or str(error)


class LocalStorage:
    """A checkpoint directory on the local file system."""

    def __init__(self, directory: str) -> None:
        self.location = os.path.abspath(directory)

    def _path(self, checkpoint_id: str, name: str = "") -> str:
        return os.path.join(self.location, checkpoint_id, name)

    def write_part(self, checkpoint_id: str, name: str, data: bytes) -> None:
        directory = self._path(checkpoint_id)
        path = self._path(checkpoint_id, name)
        try:
            os.makedirs(self.location, mode=0o700, exist_ok=True)
            os.makedirs(directory, mode=0o700, exist_ok=True)
            write_file_atomically(path, data)
        except OSError as error:
            raise StorageError(
                f"cannot write part {name!r} of checkpoint {checkpoint_id} "
                f"to {path}: {describe_os_error(error)}") from None

    def publish(self, manifest: Manifest) -> None:
        path = self._path(manifest.id, MANIFEST_NAME)
        try:
            write_file_atomically(path, manifest.to_json(),
                                  lambda: faults.hit("manifest"))
            fsync_directory(self.location)
        except OSError as error:
            raise StorageError(
                f"cannot write the manifest of checkpoint {manifest.id} to "
                f"{path}: {describe_os_error(error)}") from None

    def read_part(self, checkpoint_id: str, name: str) -> bytes:
        path = self._path(checkpoint_id, name)
        try:
            with open(path, "rb") as file:
                return file.read()
        except OSError as error:
            raise StorageError(
                f"cannot read part {name!r} of checkpoint {checkpoint_id} "
                f"from {path}: {describe_os_error(error)}") from None

    def list_checkpoints(self) -> list[CheckpointInfo]:
        # Only directories named by a checkpoint number are checkpoints;
        # anything else in the directory is left alone.  Numbers sort as
        # numbers, so 1000000 comes after 999999.
        try:
            names = sorted((name for name in os.listdir(self.location)
                            if name.isdigit()), key=int)
        except FileNotFoundError:
            return []
        except OSError as error:
            raise StorageError(f"cannot list checkpoints in {self.location}: "
                               f"{describe_os_error(error)}") from None
        found = []
        for name in names:
            directory = self._path(name)
            if not os.path.isdir(directory):
                continue
            try:
                size = sum(entry.stat().st_size
                           for entry in os.scandir(directory)
                           if entry.is_file())
            except FileNotFoundError:
                continue    # removed while it was listed
            manifest = self._load_manifest(name)
            state = "complete" if manifest is not None else "partial"
            found.append(CheckpointInfo(name, state, manifest, size))
        return found

    def _load_manifest(self, checkpoint_id: str) -> Manifest | None:
        path = self._path(checkpoint_id, MANIFEST_NAME)
        try:
            with open(path, "rb") as file:
                return Manifest.from_json(file.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            # An unreadable manifest makes the checkpoint partial: it can
            # be listed and removed, never restored.
            return None

    def lock(self) -> None:
        import fcntl

        path = os.path.join(self.location, LOCK_NAME)
        try:
            os.makedirs(self.location, mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            raise StorageError(f"cannot use the checkpoint directory "
                               f"{self.location}: "
                               f"{describe_os_error(error)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip()
            os.close(fd)
            raise StorageError(
                f"the checkpoint directory {self.location} is in use by "
                f"another flowctl run (pid {holder or 'unknown'}); give this "
                f"run its own directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode("ascii"))
        # The descriptor stays open, and the lock held, until flowctl exits.
        self._lock_fd = fd

    def delete(self, checkpoint_id: str) -> None:
        directory = self._path(checkpoint_id)
        try:
            shutil.rmtree(directory)
        except FileNotFoundError:
            return
        except OSError as error:
            raise StorageError(f"cannot remove checkpoint {checkpoint_id} "
                               f"at {directory}: {describe_os_error(error)}"
                               ) from None
