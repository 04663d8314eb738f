"""Writing files so that a reader never sees a half-written one."""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

# POSIX only; on Windows the atomic rename alone keeps files whole. A `sys.platform` test (not
# try/except ImportError) so that type checkers know where `fcntl` exists.
if sys.platform != "win32":
    import fcntl

log = logging.getLogger(__name__)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Write through a temporary file in the same directory, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    return path


def remove_abandoned_writes(path: str | Path) -> list[Path]:
    """Delete the temporary files that `atomic_write(path)` left behind in writers that died
    before their rename (a killed job); returns them. Only safe while holding the lock that
    every writer of `path` holds: a live writer's temporary file would go too."""
    path = Path(path)
    abandoned = sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
    for leftover in abandoned:
        log.info("Removing %s, left by a writer that died", leftover)
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
    return abandoned


def atomic_write_json(path: str | Path, payload: Any) -> Path:
    text = json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n"
    return atomic_write(path, lambda handle: handle.write(text.encode()))


@contextlib.contextmanager
def exclusive_lock(path: Path, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if needed). Another holder is waited for, or,
    with `wait=False`, raises BlockingIOError."""
    with open(path, "a+") as handle:
        if sys.platform == "win32":  # pragma: no cover
            yield
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise
            log.info("Another run holds %s; waiting for it", path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
