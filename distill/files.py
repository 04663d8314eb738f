"""Writing files so that a reader never sees a half-written one."""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from distill.errors import ConfigError

# POSIX only; on Windows the atomic rename alone keeps files whole. A `sys.platform` test (not
# try/except ImportError) so that type checkers know where `fcntl` exists.
if sys.platform != "win32":
    import fcntl

log = logging.getLogger(__name__)


def require_writable_dir(field: str, path: str | Path) -> Path:
    """Refuse, naming `field`, a directory this process could not write: read-only, a file in
    the way, a filesystem that takes no new entries. Tried on `path` or its nearest existing
    parent with a probe file that leaves nothing behind (a refused run must not write), not
    with `os.access`: root passes permission checks, not read-only mounts."""
    directory = Path(path).expanduser().absolute()
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(existing))
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ConfigError(
            field,
            str(path),
            f"a directory this user can write (no new file in {existing}: "
            f"{error.strerror or error})",
        ) from error
    return directory


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Write through a temporary file in the same directory, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = _new_temporary_file(path)
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


def _new_temporary_file(path: Path) -> tuple[int, str]:
    """A new, open `.<name>.<random>.tmp` next to `path`, with the mode of any new file (0666
    less the umask). mkstemp's are 0600: the file renamed into a cache shared by a group, or
    into a run directory a colleague reads, could be read by its writer alone."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        name = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        with contextlib.suppress(FileExistsError):
            return os.open(name, flags, 0o666), name


def new_staging_dir(parent: Path, prefix: str) -> Path:
    """A new, empty `<prefix><random>` folder in `parent` to fill and then rename into place,
    with the mode of any new folder (0777 less the umask; mkdtemp's are 0700)."""
    while True:
        staging = parent / f"{prefix}{secrets.token_hex(4)}"
        with contextlib.suppress(FileExistsError):
            staging.mkdir(mode=0o777)
            return staging


def remove_abandoned_staging(entry: Path) -> list[Path]:
    """Delete the staging folders (`new_staging_dir(entry.parent, f".{entry.name}.")`) that jobs
    killed while filling `entry` left behind; returns them. Only safe while holding the lock
    that every job filling `entry` holds: a live job's staging folder would go too."""
    abandoned = [
        staging
        for staging in sorted(entry.parent.glob(f".{glob.escape(entry.name)}.*"))
        if staging.is_dir()
    ]
    for staging in abandoned:
        log.info("Removing %s, left by a job that died filling it", staging)
        shutil.rmtree(staging, ignore_errors=True)
    return abandoned


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
