"""What a run does when its teacher is not in the cache yet: `teacher.when_missing`.

`train` trains it (under the cache's lock, so runs started together train it once), `fail`
refuses at once, and `auto`, the default, is `fail` in a job of a multirun submitted to SLURM
and `train` everywhere else. In a SLURM sweep every job would otherwise find the same teacher
missing: one trains it on its GPU while the others wait on the lock, each holding an
allocation; the teacher is trained once beforehand with `distill-teacher` and the same
overrides instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.errors import ConfigError
from distill.validate import require_choice

FIELD = "teacher.when_missing"
WHEN_MISSING = ("auto", "train", "fail")


class MissingTeacherError(ConfigError):
    """A teacher the run must not train (`teacher.when_missing=fail`) is not in the cache;
    `key` is its cache key and `path` where its weights would be."""

    def __init__(self, field: str, key: str, path: Path) -> None:
        self.teacher_field = field
        self.key = key
        self.path = path
        super().__init__(
            FIELD,
            "fail",
            f"a teacher that is already cached, and {field} (cache key {key}) is not: no "
            f"{path}. Train it once first, with the same overrides as this run: "
            "distill-teacher <overrides> (auto means fail in a job of a SLURM sweep)",
        )


def resolve_when_missing(setting: object, slurm_sweep_job: bool) -> str:
    """The policy a run applies, `train` or `fail`, for its `teacher.when_missing` setting;
    `slurm_sweep_job` says whether the run is a job of a SLURM-launched multirun."""
    chosen = str(require_choice(FIELD, setting, WHEN_MISSING))
    if chosen == "auto":
        return "fail" if slurm_sweep_job else "train"
    return chosen


def when_missing_of(cfg: Any) -> str:
    """The policy of the run config `cfg`. `distill-train` has already replaced `auto` by what
    it means for the job it runs (it alone can ask Hydra how it was launched); any other
    caller is no SLURM sweep job, so `auto` trains."""
    teacher = cfg.get("teacher") or {}
    return resolve_when_missing(teacher.get("when_missing", "auto"), slurm_sweep_job=False)
