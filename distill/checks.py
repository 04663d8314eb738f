"""Checks that run before any work: a resume checkpoint that loads, models that fit the data,
an optimizer torch accepts."""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from distill.checkpoint_io import describe_load_failure, state_mismatch
from distill.config import public_name
from distill.data import ClassificationDataModule
from distill.errors import ConfigError
from distill.validate import require_int, require_positive

log = logging.getLogger(__name__)


RESUMABLE = "the path of a Lightning checkpoint of an earlier run of this recipe, or null"
# What Lightning's fit takes in place of a path: it finds the file itself (under SLURM, "hpc"
# is how a requeued job resumes), so there is no file to read here.
LIGHTNING_CKPT_KEYWORDS = ("last", "best", "hpc", "registry")


def check_resume_checkpoint(path: Any, field: str = "ckpt_path") -> None:
    """A checkpoint the fit can resume from: an existing file that torch reads with
    `weights_only=True` (as Lightning will) and that holds Lightning's training state. Read here
    so a missing, empty or corrupt file is refused before the teacher is trained, not when the
    fit starts."""
    if not isinstance(path, str) or not path:
        raise ConfigError(field, path, RESUMABLE)
    if path in LIGHTNING_CKPT_KEYWORDS or path.startswith("registry:") or "://" in path:
        return  # Lightning resolves it (a keyword, or a remote file fsspec reads) at fit
    if not Path(path).is_file():
        raise ConfigError(field, path, f"{RESUMABLE} (there is no file there)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt file can fail in any layer of the unpickler
        raise ConfigError(
            field, path, f"{RESUMABLE} ({describe_load_failure(path, error)})"
        ) from error
    if not isinstance(checkpoint, Mapping) or not {"state_dict", "optimizer_states"} <= set(
        checkpoint
    ):
        raise ConfigError(
            field, path, f"{RESUMABLE} (it holds no model and optimizer state to resume)"
        )


def check_resume_fits(path: Any, module: nn.Module, field: str = "ckpt_path") -> None:
    """The checkpoint at `path` (checked readable already) loads into this run's module: the
    same student, with the same pruning masks and fake-quant parameters, all of which are
    state_dict keys. A checkpoint of another architecture or of a recipe that compresses
    differently is refused here, before the teacher, not by Lightning when the fit starts."""
    if not isinstance(path, str) or not Path(path).is_file():
        return  # a keyword or a remote file: Lightning resolves it at fit
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    saved = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("student.")}
    expected = {k: v for k, v in module.state_dict().items() if k.startswith("student.")}
    problems = state_mismatch(expected, saved)
    if problems:
        student = _target_name(cast(nn.Module, module.student))
        raise ConfigError(
            field,
            path,
            f"{RESUMABLE}: this run's student ({student}, with its pruning masks and "
            f"fake-quant state) does not load it: {problems}",
        )


def check_fits_data(model: nn.Module, datamodule: ClassificationDataModule, field: str) -> None:
    """One example batch through `model`: it must take the inputs and give one logit per class."""
    inputs = datamodule.example_input_batch(2)
    was_training = model.training
    model.eval()  # so BatchNorm statistics are not touched by this probe
    try:
        with torch.no_grad():
            logits = model(inputs)
    except Exception as error:
        raise ConfigError(
            field,
            _target_name(model),
            f"a model that takes inputs of shape {tuple(inputs.shape)} ({error})",
        ) from error
    finally:
        model.train(was_training)
    if not isinstance(logits, torch.Tensor) or logits.shape != (2, datamodule.num_classes):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ConfigError(
            field,
            _target_name(model),
            f"a model whose output is (batch, {datamodule.num_classes}) logits for the "
            f"{datamodule.num_classes} classes of the data; it gives {shape}",
        )


def check_optimizer(
    optimizer: Callable[..., Any],
    field: str,
    lr_scheduler: Callable[..., Any] | None = None,
    scheduler_field: str = "lr_scheduler",
) -> None:
    """Make the optimizer (a partial taking the parameters) and its LR scheduler (a partial
    taking the optimizer) once on a stand-in parameter, and step them once.

    Torch checks their arguments only when they are made and stepped, at the start of the fit:
    after the teacher was trained. `lr` is checked by name, since every optimizer takes it;
    whatever else torch refuses is reported against the whole node, with torch's reason.
    """
    lr = _arguments(optimizer).get("lr")
    if lr is not None:
        require_positive(f"{field}.lr", lr)
    made = _probe(optimizer, field, lambda factory: factory([nn.Parameter(torch.zeros(1))]))
    if lr_scheduler is not None:
        _probe(lr_scheduler, scheduler_field, lambda factory: _step_once(made, factory(made)))


def _probe(factory: Callable[..., Any], field: str, use: Callable[[Any], Any]) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a probe's warnings (step order) are not the run's
            return use(factory)
    except Exception as error:  # a user's target may refuse its arguments in any way
        target = getattr(factory, "func", factory)
        name = public_name(target) if isinstance(target, type) else repr(target)
        raise ConfigError(
            field, _arguments(factory), f"arguments {name} accepts ({error})"
        ) from error


def _step_once(optimizer: Any, scheduler: Any) -> None:
    optimizer.step()  # no gradients: changes nothing, but a scheduler expects it first
    scheduler.step()


def _arguments(factory: Callable[..., Any]) -> dict[str, Any]:
    if isinstance(factory, functools.partial):
        return dict(factory.keywords)
    return {}


def _target_name(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


@contextlib.contextmanager
def torch_threads(threads: Any) -> Iterator[None]:
    """Run with the torch CPU thread count of the run's `threads` (null keeps the process's,
    by default one per core), restored afterwards. CPU kernels split their sums by thread, so
    the same recipe on 1 and on 2 threads gives different numbers: recipes record the count
    they were measured with, and the teacher cache key includes it."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(require_int("threads", threads, minimum=1))
    try:
        yield
    finally:
        torch.set_num_threads(before)
