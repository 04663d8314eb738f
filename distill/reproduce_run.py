"""`distill-reproduce`: run a recipe exactly as `distill-train recipe=NAME` does, then check it.

The recipe is composed and assembled here first (nothing trained), so a recipe without
expected numbers, or with a key its summary will not hold, is refused in seconds. The run
itself is a `distill-train` process with the same overrides and a known run directory: what
is checked is what a user's own `distill-train recipe=NAME` gives.
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from distill.assembly import assemble
from distill.checks import torch_threads
from distill.config import compose_train
from distill.errors import ConfigError
from distill.interruption import Interruption, RunInterrupted, stop_process
from distill.recipe import RECIPES_DIR, Recipe, find_recipe, read_recipe
from distill.reproduce import check_expected_keys, compare, write_reproduction
from distill.run_summary import SUMMARY_FILE
from distill.trust import trusted_targets, trusting

log = logging.getLogger(__name__)

# How long an interrupted reproduction waits for its run to stop (and save) before killing it.
RUN_STOP_S = 120.0


def prepare(
    name_or_path: str, quick: bool, overrides: Sequence[str]
) -> tuple[Recipe, list[str], Path]:
    """The checked recipe, the distill-train overrides that run it, and its run directory."""
    folder, name = find_recipe(name_or_path)
    if "recipe" not in (OmegaConf.load(folder / f"{name}.yaml") or {}):
        # Numbers composed in from a file the recipe includes belong to that file's recipe.
        raise ConfigError(
            "recipe", name, "a recipe file with its own `recipe:` block of expected numbers"
        )
    run_overrides = [f"recipe={name}"]
    if folder != RECIPES_DIR:
        run_overrides.append(f"hydra.searchpath=[distill-recipes://{folder}]")
    recipe = read_recipe(_compose([*run_overrides, *overrides]), name)
    if quick and not recipe.has_quick:
        raise ConfigError(
            "recipe.quick", None, f"a `quick:` block with its own expected numbers in {name}"
        )
    run_overrides += [*(recipe.quick_overrides if quick else ()), *overrides]
    cfg = _compose(run_overrides)
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f") + ("-quick" if quick else "")
    run_dir = Path(cfg.paths.log_dir) / "reproduce" / name / stamp
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    with trusting(trusted_targets(cfg, overrides)), torch_threads(cfg.get("threads")):
        check_expected_keys(recipe, quick, assemble(cfg))
    return recipe, run_overrides, run_dir


def reproduce(name_or_path: str, quick: bool, overrides: Sequence[str]) -> dict[str, Any]:
    """Run the recipe and check it; the result that reproduce.json holds."""
    recipe, run_overrides, run_dir = prepare(name_or_path, quick, overrides)
    command = shlex.join(["distill-train", *run_overrides])
    process = subprocess.Popen(
        [sys.executable, "-m", "distill.cli.train", *run_overrides, f"hydra.run.dir={run_dir}"]
    )
    try:
        with Interruption().installed(slurm_requeue=False):
            process.wait()
    except RunInterrupted:
        # No verdict for a run cut short: it is left resumable, and nothing claims FAIL.
        stop_process(process, RUN_STOP_S)
        log.error(
            "Interrupted: no verdict. The run stopped in %s; `distill-train resume=%s` "
            "continues it, distill-reproduce %s starts over",
            run_dir,
            run_dir,
            name_or_path,
        )
        raise
    summary_path = run_dir / SUMMARY_FILE
    error = None
    summary: dict[str, Any] = {}
    if process.returncode != 0:
        error = f"distill-train exited with status {process.returncode}"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
    elif error is None:
        error = f"the run wrote no {SUMMARY_FILE}"
    checks = compare(recipe.expectations(quick), summary)
    return write_reproduction(run_dir, recipe, quick, checks, command, error)


def _compose(overrides: Sequence[str]) -> DictConfig:
    return compose_train(overrides)
