"""The run directory, decided and checked before Hydra writes anything into it.

Hydra's app writes `.hydra/` (config, overrides) and starts the job log in the run directory
before the task runs, so a check in the task comes too late: pointing `hydra.run.dir` at an
earlier run would rewrite that run's saved config. Here the directory is resolved first
(timestamps included), refused if it holds a run that is not being resumed, and pinned on the
command line so Hydra uses exactly that one. A run refused later, in the task, leaves no
directory behind when it was the one that made it.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from distill.config import compose_train
from distill.errors import ConfigError
from distill.files import require_writable_dir
from distill.run_state import ensure_fresh_run_dir, process_rank

# What Hydra's app writes before the task starts.
HYDRA_OWN = frozenset({".hydra", "train.log"})


def single_run(arguments: Sequence[str]) -> bool:
    """Whether `arguments` start one run (not a multirun, a sweep, --help or --cfg)."""
    if any(argument.startswith("-") for argument in arguments):
        return False
    try:
        overrides = OverridesParser.create().parse_overrides(list(arguments))
    except HydraException:
        return False  # Hydra's own parse error says where the grammar broke
    return not any(override.is_sweep_override() for override in overrides)


# Names a job tries before giving up, when jobs keep taking the timestamped name it resolved.
CLAIM_ATTEMPTS = 20


def _resolve_run_dir(arguments: Sequence[str]) -> Path | None:
    cfg = compose_train(arguments, return_hydra_config=True)
    try:
        resolved = OmegaConf.select(cfg, "hydra.run.dir", throw_on_resolution_failure=True)
    except OmegaConfBaseException:
        return None
    return Path(str(resolved))


@dataclass(frozen=True)
class RunDirGuard:
    """The run directory of one run, and whether this process made it."""

    path: Path
    existed: bool
    # The nearest parent that existed before this run made its directory: the folders in
    # between (outputs/<date>/) were made for it too, and go with it when it is discarded.
    parent_before: Path | None = None

    @classmethod
    def plan(cls, arguments: Sequence[str], resuming: bool = False) -> RunDirGuard | None:
        """Resolve, check and claim the run directory of `arguments`; None when Hydra must
        decide it (a multirun, or a directory named through `${hydra:...}`, which only the app
        knows).

        A new directory is made here, atomically: of two jobs that resolve the same default
        (timestamped) name, only one makes it, and the other resolves a new name. A directory
        that exists already is checked for an earlier run (unless this is its resume).
        """
        if not single_run(arguments) or process_rank() > 0:
            return None  # a DDP rank > 0 runs in the directory rank 0 decided and checked
        named = any(argument.startswith("hydra.run.dir=") for argument in arguments)
        for _ in range(CLAIM_ATTEMPTS):
            path = _resolve_run_dir(arguments)
            if path is None:
                return None
            parent_before = _nearest_existing(path.parent)
            try:
                path.mkdir(parents=True)
            except FileExistsError:
                if not named:
                    continue  # another job took this instant's name: take the next one
                if not resuming:
                    ensure_fresh_run_dir(path)
                require_writable_dir("hydra.run.dir", path)
                return cls(path, existed=True)
            except OSError:
                require_writable_dir("hydra.run.dir", path)  # refuses, saying why
                raise
            return cls(path, existed=False, parent_before=parent_before)
        raise ConfigError(
            "hydra.run.dir",
            str(path),
            f"a directory no other run has ({CLAIM_ATTEMPTS} names in a row were taken)",
        )

    @property
    def pinned(self) -> str:
        """The override that makes Hydra use this directory (the resolved timestamp)."""
        return f"hydra.run.dir={self.path}"

    def discard_if_untouched(self) -> bool:
        """After a refusal: remove the directory if this run made it and only Hydra wrote into
        it (its `.hydra/` and the job log). True when it was removed."""
        if self.existed or not self.path.is_dir():
            return False
        if not {child.name for child in self.path.iterdir()} <= HYDRA_OWN:
            return False
        shutil.rmtree(self.path)
        # Then the folders made for it, while empty (another run may have made one its own).
        folder = self.path.parent.absolute()
        stop = self.parent_before.absolute() if self.parent_before else folder
        while folder != stop and stop in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                break  # not empty: another run's
            folder = folder.parent
        return True


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
