"""Composing the project's configs in tests, with every output under a temporary directory."""

from __future__ import annotations

import copy
import functools
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from distill.cli.train import CONF_DIR

# Tests never reach the network: W&B stays offline even if a key is configured here.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

# A suite started with Ctrl+C ignored (nohup, `cmd &` in a script, some CI runners) would pass
# that on to every run it starts, and distill-train, as Python does, leaves an ignored SIGINT
# alone: the tests that send SIGINT need it handled, here and in the processes they start.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ComposeFn = Callable[..., DictConfig]


def compose_train(overrides: Sequence[str], root: Path) -> DictConfig:
    """conf/train.yaml with `overrides`, writing to `root` instead of outputs/ and ~/.cache.

    Each distinct set of overrides is composed once per session (the lightning-hydra-template's
    pattern) and every caller gets its own deep copy, pointed at its own `root`: the paths are
    interpolated (`${paths.cache_dir}/teachers`), so setting them on the copy moves everything.
    """
    # Lowering to ExecuTorch adds ~18 s to an export on 2 cores: only the tests about the .pte
    # files (tests/integration/test_executorch_export.py) ask for them.
    if not any(override.startswith("export_executorch=") for override in overrides):
        overrides = [*overrides, "export_executorch=false"]
    cfg = copy.deepcopy(_composed(tuple(overrides)))
    # ${hydra:runtime.output_dir} only exists inside a Hydra app.
    paths = {"data_dir": "data", "cache_dir": "cache", "log_dir": "logs", "output_dir": "run"}
    with open_dict(cfg):
        for key, folder in paths.items():
            if not any(override.startswith(f"paths.{key}=") for override in overrides):
                cfg.paths[key] = str(root / folder)
    return cfg


@functools.cache
def _composed(overrides: tuple[str, ...]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.fixture
def compose_cfg(tmp_path: Path) -> ComposeFn:
    def _compose(*overrides: str, root: Path | None = None) -> DictConfig:
        return compose_train(overrides, root or tmp_path)

    return _compose


def config_options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Run a test module on one torch thread.

    On 2 shared cores a busy neighbour stalls OpenMP's second thread: a resnet20 forward took
    ~0.8 s with 2 threads against ~5 ms with 1.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _logging_handlers_of_this_test_only() -> Iterator[None]:
    """Remove the logging handlers a test added. A Hydra app run in-process (distill-train's
    `main`) installs handlers on the pytest-captured stdout/stderr of that test; later tests
    would log into those closed streams ("--- Logging error ---" tracebacks on stderr)."""
    import logging

    loggers = [logging.getLogger(), *map(logging.getLogger, list(logging.root.manager.loggerDict))]
    before = {id(logger): list(logger.handlers) for logger in loggers}
    yield
    for logger in [
        logging.getLogger(),
        *map(logging.getLogger, list(logging.root.manager.loggerDict)),
    ]:
        kept = before.get(id(logger), [])
        for handler in list(logger.handlers):
            if handler not in kept:
                logger.removeHandler(handler)
