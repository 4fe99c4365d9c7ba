"""The clinical drop folder: which dropped files are complete, and a wake-up when something changes.

A file is taken only once it is whole: at once when its exporter wrote a `NAME.csv.done` marker
after it, otherwise when its size and modification time have not changed for `stable_s` seconds
between two looks. watchdog only wakes the daemon early; the daemon also polls, and its first
`ready()` after start-up is the sweep that finds files dropped while the agent was down.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from agent import log
from agent.spool.store import save_file

MARKER_SUFFIX = ".done"
# Reading a file raises inotify "opened" and "closed_no_write" events; waking on them would make
# the daemon's own reads wake it again.
_QUIET_EVENTS = frozenset({"opened", "closed_no_write"})

_log = log.get("clinical")


def is_candidate(name: str) -> bool:
    """A CSV a person or an export job dropped, not a hidden, temporary, lock or marker file.

    Only names ending `.csv` qualify, so `x.csv.part`, `x.csv.tmp`, `x.csv~` and `x.csv.done` never
    do; names starting `.` (rsync's temporaries) or `~` (Office lock files) are skipped too.
    """
    return not name.startswith((".", "~")) and name.casefold().endswith(".csv")


class _Wake(FileSystemEventHandler):
    """Calls `wake` on each change; notes when the watched folder itself is deleted (its watch ends)."""

    def __init__(self, wake: Callable[[], None], folder: str) -> None:
        self.wake = wake
        self.folder = folder
        self.lost = False

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _QUIET_EVENTS:
            return
        if event.event_type == "deleted" and event.is_directory and event.src_path == self.folder:
            self.lost = True
        try:
            self.wake()
        except Exception as exc:  # a notification: the observer thread must survive its handler
            _log.error("clinical_wake_failed", error=type(exc).__name__)


class DropFolder:
    """The drop folder, created 0700 if missing. Not thread-safe: one caller asks `ready()`."""

    def __init__(self, path: Path, stable_s: float) -> None:
        self.path = path
        self.stable_s = stable_s
        self._seen: dict[str, tuple[int, int, float]] = {}  # name -> size, mtime_ns, unchanged since
        self._inodes: dict[str, tuple[int, int]] = {}  # name -> (st_dev, st_ino) when last listed
        self._skipped: set[str] = set()  # names skipped and said so once
        self._observer: BaseObserver | None = None
        self._handler: _Wake | None = None
        self._wake: Callable[[], None] | None = None
        self._watched: tuple[int, int] | None = None  # (st_dev, st_ino) of the folder being watched
        self._lock = threading.Lock()
        self._ensure()

    def _ensure(self) -> tuple[int, int]:
        """Create the folder if it is missing (0700: it receives identifiable data)."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = self.path.stat()
        return st.st_dev, st.st_ino

    def ready(self, now: float | None = None) -> list[Path]:
        """Complete files, oldest first. `now` is a monotonic time (tests pass their own).

        The caller takes each file away (`finish`) once done with it; until then it is listed again.
        """
        now = time.monotonic() if now is None else now
        folder = self._ensure()
        if self._wake is not None and (folder != self._watched or (self._handler is not None and self._handler.lost)):
            self._rewatch()  # the folder was removed (and made again): the old watch has ended
        with os.scandir(self.path) as entries:
            files = {entry.name: entry for entry in entries if entry.is_file(follow_symlinks=False)}
        complete: list[tuple[int, str]] = []
        for name in list(self._seen):
            if name not in files:
                del self._seen[name]
        for name, entry in files.items():
            if not is_candidate(name):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # taken away between the listing and now
                continue
            if st.st_nlink != 1:  # a hard link: the same data is reachable elsewhere; never taken
                if name not in self._skipped:
                    self._skipped.add(name)
                    _log.warning("clinical_file_skipped", reason="a hard link (more than one name for its data):"
                                 " copy the export into the drop folder instead")
                continue
            self._inodes[name] = (st.st_dev, st.st_ino)
            if name + MARKER_SUFFIX in files or self._stable(name, st.st_size, st.st_mtime_ns, now):
                complete.append((st.st_mtime_ns, name))
        return [self.path / name for _, name in sorted(complete)]

    def _stable(self, name: str, size: int, mtime_ns: int, now: float) -> bool:
        previous = self._seen.get(name)
        if previous is None or previous[:2] != (size, mtime_ns):
            self._seen[name] = (size, mtime_ns, now)
            since = now
        else:
            since = previous[2]
        return now - since >= self.stable_s

    def _open(self, path: Path) -> int:
        """Open a listed file as it was listed: never through a symbolic link (O_NOFOLLOW), and
        only the regular, singly linked file of the inode the listing saw (not one swapped in
        since). Raises OSError (the caller looks again at its next round)."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or \
                    self._inodes.get(path.name) != (st.st_dev, st.st_ino):
                raise OSError(errno.EPERM, "not the regular, singly linked file that was listed")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def read(self, path: Path) -> bytes:
        """The bytes of a listed file, read through the descriptor `_open` checked."""
        fd = self._open(path)
        with os.fdopen(fd, "rb") as fh:
            return fh.read()

    def finish(self, path: Path, *, archive_as: Path | None = None) -> None:
        """Done with a dropped file: move it to `archive_as` (0600 through its descriptor, 0700
        folder) or delete it, and delete its marker, so it is not listed again. What is moved is
        checked to be the file that was read; anything swapped in meanwhile is left where it is."""
        if archive_as is not None:
            archive_as.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(archive_as.parent, 0o700)
            fd = self._open(path)
            try:
                os.fchmod(fd, 0o600)
                self._move(fd, path, archive_as)
            finally:
                os.close(fd)
        else:
            path.unlink(missing_ok=True)
        (path.parent / (path.name + MARKER_SUFFIX)).unlink(missing_ok=True)
        self._seen.pop(path.name, None)
        self._inodes.pop(path.name, None)

    @staticmethod
    def _move(fd: int, path: Path, target: Path) -> None:
        """Rename `path` (the file open as `fd`) to `target`, or copy what `fd` reads there when
        the target is on another file system; either way only the file that was read."""
        mine = os.fstat(fd)
        taking = target.parent / f".taking-{os.getpid()}-{target.name}"
        try:
            os.link(path, taking, follow_symlinks=False)  # a second name, checked before it counts
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            os.lseek(fd, 0, os.SEEK_SET)
            with os.fdopen(os.dup(fd), "rb") as fh:
                save_file(target, fh.read(), mode=0o600)
        else:
            linked = os.lstat(taking)
            if (linked.st_dev, linked.st_ino) != (mine.st_dev, mine.st_ino):
                taking.unlink()  # swapped in between: not ours to keep, and nothing overwritten
                raise OSError(errno.EPERM, "the dropped file was replaced while it was taken")
            os.replace(taking, target)
        now = os.lstat(path)
        if (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            path.unlink()

    def watch(self, wake: Callable[[], None]) -> None:
        """Call `wake` (from watchdog's thread) whenever something in the folder changes."""
        with self._lock:
            self._wake = wake
        self._rewatch()

    def _rewatch(self) -> None:
        with self._lock:
            self._stop()
            if self._wake is None:
                return
            self._watched = self._ensure()
            observer = Observer()
            observer.daemon = True
            self._handler = _Wake(self._wake, str(self.path))
            observer.schedule(self._handler, str(self.path), recursive=False)
            observer.start()
            self._observer = observer

    def _stop(self) -> None:
        observer, self._observer, self._handler = self._observer, None, None
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)

    def close(self) -> None:
        """Stop watching; `ready()` still works (the daemon may poll without watchdog)."""
        with self._lock:
            self._wake = None
            self._watched = None
            self._stop()

    def __enter__(self) -> DropFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
