"""Durable files: written whole or not at all, and on disk before anyone is told they are.

One place for the pattern borg uses: a temporary file in the target folder, fsync, rename over
the target, fsync the folder. Spool file names are opaque keyed hashes, never UIDs or names.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent.config import SpoolConfig

_MB = 1024 * 1024
#: The outbox folder of pseudonymised clinical batches (study folders are pseudonyms: upper case).
CLINICAL_OUTBOX = "clinical"


class NoSpace(OSError):
    """The disk or the spool quota cannot take this write."""


def sync_dir(path: Path) -> None:
    """fsync a folder so a rename into it survives a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some network filesystems refuse fsync on a directory (EINVAL): their renames are
        # already synchronous, so there is nothing more to do.
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


def save_file(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write `path` durably: temp file, fsync, rename, fsync the folder. Raises NoSpace when full."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        sync_dir(path.parent)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpace(exc.errno, "no space left for the spool") from None
        raise


class Spool:
    """Identifiable instances as received, under opaque names, mode 0700/0600."""

    def __init__(self, directory: Path, *, quota_bytes: int, min_free_bytes: int) -> None:
        self.directory = directory
        self.quota_bytes = quota_bytes
        self.min_free_bytes = min_free_bytes
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)

    @classmethod
    def from_config(cls, config: SpoolConfig) -> Spool:
        return cls(config.directory, quota_bytes=config.quota_mb * _MB, min_free_bytes=config.min_free_mb * _MB)

    def path_of(self, sop_key: str) -> Path:
        return self.directory / sop_key[:2] / f"{sop_key}.dcm"

    @contextmanager
    def locked(self, sop_key: str) -> Iterator[None]:
        """Hold the lock of the instance's spool folder (one of 256, shared by every process): the
        receiver holds it from writing a copy to recording it, and whoever deletes a copy holds it
        from checking that the database still says so to the deletion, so that a copy the PACS
        resent in between is never the one deleted."""
        folder = self.path_of(sop_key).parent
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)  # the folder itself: no lock file to leave
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def store_file(self, sop_key: str, received: Path) -> Path:
        """Move a received file (on the spool's file system) into the spool durably: linked under
        a temporary name, fsync'd, renamed, the folder fsync'd. Copied when it is elsewhere."""
        path = self.path_of(sop_key)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.parent / f".tmp-{os.getpid()}-{received.name}"
        try:
            try:
                os.link(received, tmp)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                shutil.copyfile(received, tmp)
            os.chmod(tmp, 0o600)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            sync_dir(path.parent)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpace(exc.errno, "no space left for the spool") from None
            raise
        return path

    def room_while_receiving(self, incoming: int, next_bytes: int, used: int) -> str | None:
        """While an instance arrives (its bytes so far already on this disk): why it cannot be
        kept, or None. The quota counts it whole; the floor counts what is still to be written."""
        if used + incoming > self.quota_bytes:
            return "spool quota reached"
        if shutil.disk_usage(self.directory).free - next_bytes < self.min_free_bytes:
            return "disk free space under the configured floor"
        return None

    def check_received(self, size: int, used: int) -> None:
        """A received instance, already on this disk in a temporary file, may join the spool."""
        if used + size > self.quota_bytes:
            raise NoSpace(errno.EDQUOT, "spool quota reached")
        if shutil.disk_usage(self.directory).free < self.min_free_bytes:
            raise NoSpace(errno.ENOSPC, "disk free space under the configured floor")

    def sweep(self, known: set[str]) -> int:
        """Delete what no acknowledged instance owns: temp files of interrupted writes, and files
        spooled just before a crash, before the database recorded them (never acknowledged, so
        the PACS resends them). Returns how many files went."""
        removed = 0
        for path in self.directory.glob("*/*"):
            if path.name.startswith(".tmp-") or (path.suffix == ".dcm" and path.stem not in known):
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def remove(self, sop_key: str) -> None:
        try:
            self.path_of(sop_key).unlink()
        except FileNotFoundError:
            pass
