"""Writing files whole: atomic writes, and the half writes of killed writers cleaned up."""

from __future__ import annotations

import os
import stat

import pytest

from distill.files import (
    atomic_write,
    new_staging_dir,
    remove_abandoned_staging,
    remove_abandoned_writes,
)


@pytest.fixture
def group_umask():
    """The umask of a group that shares a cache (002): new files 0664, folders 0775."""
    before = os.umask(0o002)
    yield
    os.umask(before)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_and_staging_folders_get_the_umask_mode(tmp_path, group_umask):
    # Not mkstemp's 0600 and mkdtemp's 0700: a teacher cached by one member of the group must
    # be readable by the others' jobs.
    written = atomic_write(tmp_path / "teacher.pt", lambda handle: handle.write(b"whole"))
    assert mode(written) == 0o664
    assert mode(new_staging_dir(tmp_path, prefix=".entry.")) == 0o775
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["teacher.pt"]


def test_only_the_temporary_files_of_that_path_are_removed(tmp_path):
    target = tmp_path / "teacher.pt"
    atomic_write(target, lambda handle: handle.write(b"whole"))
    abandoned = [tmp_path / ".teacher.pt.a1b2c3d4.tmp", tmp_path / ".teacher.pt.e5f6g7h8.tmp"]
    kept = [
        tmp_path / ".teacher.pt2.a1b2c3d4.tmp",  # another file's
        tmp_path / ".meta.json.a1b2c3d4.tmp",
        tmp_path / ".lock",
    ]
    for path in abandoned + kept:
        path.write_bytes(b"half")
    assert remove_abandoned_writes(target) == abandoned
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["teacher.pt", *(p.name for p in kept)]
    )
    assert target.read_bytes() == b"whole"
    assert remove_abandoned_writes(tmp_path / "absent.json") == []


def test_only_the_staging_folders_of_that_entry_are_removed(tmp_path):
    entry = tmp_path / "abc123"
    abandoned = [new_staging_dir(tmp_path, prefix=".abc123."), tmp_path / ".abc123.deadbeef"]
    abandoned[1].mkdir()
    (abandoned[0] / "pixels.npy").write_bytes(b"half")
    kept = [tmp_path / ".abc1234.cafe0000", tmp_path / "abc123"]  # another entry's, the entry
    for folder in kept:
        folder.mkdir()
    (tmp_path / ".abc123.lock").touch()  # the entry's lock: a file, never removed

    assert remove_abandoned_staging(entry) == sorted(abandoned)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".abc123.lock",
        ".abc1234.cafe0000",
        "abc123",
    ]
