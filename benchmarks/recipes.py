"""Composing and running the project's recipes inside a benchmark, outputs under a temp root."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from distill.cli.train import CONF_DIR
from distill.pipeline import train


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=["paths.output_dir=unused", *overrides])


def run_recipe(root: Path, name: str, *overrides: str) -> dict:
    """`distill.pipeline.train` on the composed recipe; its summary. The teacher cache is under
    `root` unless $DISTILL_CACHE_DIR says otherwise."""
    paths = [
        f"paths.output_dir={root / name}",
        f"paths.data_dir={root / 'data'}",
        f"paths.log_dir={root / 'logs'}",
    ]
    if "DISTILL_CACHE_DIR" not in os.environ:
        paths.append(f"paths.cache_dir={root / 'cache'}")
    quiet = ["logger=none", "callbacks=none", "trainer.enable_progress_bar=false"]
    cfg = compose_cfg(*paths, *quiet, *overrides)
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the tables
        return train(cfg)
