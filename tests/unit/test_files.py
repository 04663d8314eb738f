"""Writing files whole: atomic writes, and the half writes of killed writers cleaned up."""

from __future__ import annotations

from distill.files import atomic_write, remove_abandoned_writes


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
