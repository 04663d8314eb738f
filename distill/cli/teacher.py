"""`distill-teacher`: train and cache the teacher(s) of a recipe once, before a sweep.

It composes the same conf/train.yaml with the same overrides as `distill-train`, so
`distill-teacher data=X teacher=Y && distill-train -m hydra/launcher=slurm data=X teacher=Y
<student sweep>` finds the teacher cached in every job.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from distill.cli.train import CONF_DIR, job_overrides
from distill.errors import ConfigError, TrainingDiverged

log = logging.getLogger("distill")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _teacher(cfg: DictConfig) -> None:
    """The Hydra task: provision the run's teacher(s) and print what the cache holds."""
    # Imported here so that `--help` and `--cfg job` answer without loading torch.
    from distill.teachers import prepare_teachers
    from distill.trust import trusted_targets, trusting

    try:
        with trusting(trusted_targets(cfg, job_overrides())):
            teachers = prepare_teachers(cfg)
    except ConfigError as error:
        log.error("Configuration error: %s", error)
        sys.exit(2)
    except TrainingDiverged as error:
        # As distill-train: a failed run, one line; the cache keeps no entry for this teacher.
        log.error("Training diverged: %s", error)
        sys.exit(1)
    for name, facts in teachers.items():
        checkpoint = (facts.get("checkpoint") or {}).get("path")
        accuracy = facts.get("test_acc")
        shown = "-" if accuracy is None else f"{accuracy:.4f}"
        print(
            f"{name}: origin={facts['origin']} cache_key={facts.get('cache_key')} "
            f"path={checkpoint} test_acc={shown}"
        )


def main() -> None:
    if not CONF_DIR.is_dir():
        sys.exit(
            f"distill-teacher: no configs at {CONF_DIR}; install from a clone with pip install -e ."
        )
    _teacher()


if __name__ == "__main__":
    main()
