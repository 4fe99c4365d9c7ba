"""DropFolder: a file is taken once complete, partial and temporary files never, and watchdog wakes the daemon."""

from __future__ import annotations

import os
import shutil
import stat
import threading
from pathlib import Path

from watchdog.events import FileClosedEvent, FileClosedNoWriteEvent, FileMovedEvent, FileOpenedEvent

from agent.clinical import DropFolder
from agent.clinical.drop import _Wake


def write(path: Path, text: str = "hospital_number\nHOSP123456\n") -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_done_marker_makes_a_file_ready_at_once(tmp_path: Path) -> None:
    """With NAME.csv.done beside it, a file is taken at the first look, whatever stable_s."""
    drop = DropFolder(tmp_path, stable_s=3600)
    export = write(tmp_path / "admissions.csv")
    assert drop.ready(now=0) == []
    write(tmp_path / "admissions.csv.done", "")
    assert drop.ready(now=0) == [export]


def test_file_is_ready_once_its_size_is_stable(tmp_path: Path) -> None:
    """Without a marker, a file is taken when size and mtime have not changed for stable_s seconds."""
    drop = DropFolder(tmp_path, stable_s=5)
    export = write(tmp_path / "admissions.csv", "hospital_number\n")
    assert drop.ready(now=100) == []
    with export.open("a", encoding="utf-8") as fh:  # the exporter is still writing
        fh.write("HOSP123456\n")
    assert drop.ready(now=104) == []
    assert drop.ready(now=108) == []  # unchanged for 4 s only
    assert drop.ready(now=109) == [export]


def test_files_dropped_while_down_are_swept_at_start(tmp_path: Path) -> None:
    """Files already there when the agent starts are found by the first looks, oldest first."""
    older, newer = write(tmp_path / "b.csv"), write(tmp_path / "a.CSV")
    os.utime(older, ns=(1_000_000_000, 1_000_000_000))
    drop = DropFolder(tmp_path, stable_s=2)
    assert drop.ready(now=0) == []
    assert drop.ready(now=2) == [older, newer]


def test_partial_hidden_temporary_and_marker_files_are_ignored(tmp_path: Path) -> None:
    """Only NAME.csv qualifies: .part, .tmp, ~, hidden, Office lock files, markers, folders, links never."""
    folder = tmp_path / "drop"
    folder.mkdir()
    for name in ("a.csv.part", "b.tmp", "c.csv.tmp", "d.csv~", ".e.csv", "~$f.csv", "g.csv.done", "h.txt"):
        write(folder / name)
    (folder / "folder.csv").mkdir()
    (folder / "link.csv").symlink_to(write(tmp_path / "elsewhere.csv"))
    drop = DropFolder(folder, stable_s=0)
    assert drop.ready(now=0) == []
    export = write(folder / "i.csv")
    assert drop.ready(now=0) == [export]


def test_folder_is_created_0700_when_missing(tmp_path: Path) -> None:
    """A missing drop folder is created, mode 0700 (it receives identifiable data), even after removal."""
    folder = tmp_path / "clinical" / "drop"
    drop = DropFolder(folder, stable_s=0)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    shutil.rmtree(folder)
    assert drop.ready() == []
    assert folder.is_dir()


def test_finish_archives_the_file_and_removes_its_marker(tmp_path: Path) -> None:
    """Once done with, a file moves to the archive (0600) with its marker gone, and is not listed again."""
    drop = DropFolder(tmp_path / "drop", stable_s=0)
    export = write(tmp_path / "drop" / "admissions.csv")
    write(tmp_path / "drop" / "admissions.csv.done", "")
    archived = tmp_path / "archive" / "0123.csv"
    assert drop.ready() == [export]  # only a file the folder listed is taken
    drop.finish(export, archive_as=archived)
    assert archived.read_text(encoding="utf-8").startswith("hospital_number")
    assert stat.S_IMODE(archived.stat().st_mode) == 0o600
    assert stat.S_IMODE(archived.parent.stat().st_mode) == 0o700
    assert list((tmp_path / "drop").iterdir()) == []
    other = write(tmp_path / "drop" / "other.csv")
    drop.finish(other)
    assert not other.exists() and drop.ready() == []


def test_watch_wakes_when_a_file_is_dropped(tmp_path: Path) -> None:
    """watchdog calls wake when a file appears; after the folder is removed, polling makes and watches it again."""
    woken = threading.Event()
    folder = tmp_path / "drop"
    with DropFolder(folder, stable_s=0) as drop:
        drop.watch(woken.set)
        write(folder / "admissions.csv")
        assert woken.wait(10)
        shutil.rmtree(folder)
        assert any(woken_by_a_drop(drop, folder / f"probe{i}.csv", woken) for i in range(100))
    assert drop.ready()  # closed: polling still works


def woken_by_a_drop(drop: DropFolder, path: Path, woken: threading.Event) -> bool:
    """One poll of the daemon's loop (which re-creates and re-watches the folder), then a drop."""
    drop.ready()
    woken.clear()
    write(path)
    return woken.wait(0.1)


def test_reading_a_file_does_not_wake() -> None:
    """The daemon's own reads (inotify open and close-without-write events) do not wake it."""
    calls: list[str] = []
    handler = _Wake(lambda: calls.append("wake"), "/drop")
    handler.dispatch(FileOpenedEvent("/drop/a.csv"))
    handler.dispatch(FileClosedNoWriteEvent("/drop/a.csv"))
    assert calls == []
    handler.dispatch(FileClosedEvent("/drop/a.csv"))
    handler.dispatch(FileMovedEvent("/drop/.a.csv.tmp", "/drop/a.csv"))
    assert calls == ["wake", "wake"]


def test_a_failing_wake_does_not_stop_the_watch(tmp_path: Path) -> None:
    """An exception in wake is logged and the observer keeps calling it."""
    calls: list[int] = []
    again = threading.Event()

    def wake() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first wake fails")
        again.set()

    with DropFolder(tmp_path, stable_s=0) as drop:
        drop.watch(wake)
        write(tmp_path / "a.csv")
        write(tmp_path / "b.csv")
        assert again.wait(10)


def test_a_symbolic_or_hard_link_dropped_is_never_read(tmp_path: Path) -> None:
    """A link to a file elsewhere (the key, /etc/shadow, another site's export) is not listed,
    and one swapped in for a listed file after the listing is not read or moved: the open is
    O_NOFOLLOW, and the open file must be the regular, singly linked inode that was listed."""
    import os

    import pytest

    (tmp_path / "elsewhere").mkdir()
    secret = write(tmp_path / "elsewhere" / "secret.csv")
    drop = DropFolder(tmp_path / "drop", stable_s=0)
    (tmp_path / "drop" / "linked.csv").symlink_to(secret)
    os.link(secret, tmp_path / "drop" / "hard.csv")
    assert drop.ready() == []

    export = write(tmp_path / "drop" / "admissions.csv")
    assert drop.ready() == [export]
    export.unlink()
    export.symlink_to(secret)  # swapped between the listing and the read
    with pytest.raises(OSError):
        drop.read(export)
    with pytest.raises(OSError):
        drop.finish(export, archive_as=tmp_path / "archive" / "x.csv")
    assert not (tmp_path / "archive" / "x.csv").exists() and export.is_symlink()

    export.unlink()
    os.link(secret, export)  # a hard link swapped in: the same name, another inode, two links
    with pytest.raises(OSError):
        drop.read(export)
    replaced = write(tmp_path / "drop" / "other.csv")
    assert replaced in drop.ready()
    replaced.rename(tmp_path / "elsewhere" / "kept.csv")  # kept, so its inode is not reused
    write(replaced)  # a new file under the listed name: another inode
    with pytest.raises(OSError):
        drop.read(replaced)
    assert secret.read_text(encoding="utf-8").startswith("hospital_number")
