"""The teacher-output cache in a run: used when inputs are fixed, refused under augmentation."""

from __future__ import annotations

import pytest

from distill.errors import ConfigError
from distill.pipeline import train

from ..unit.test_configs import write_tiny_cifar
from .test_train import DIGITS

QUICK = [o for o in DIGITS if not o.startswith("trainer.max_epochs")] + ["trainer.max_epochs=8"]


def test_a_cached_teacher_teaches_the_same_student(compose_cfg, tmp_path):
    cached = train(compose_cfg(*QUICK, "teacher_output_cache=on"))
    assert cached["timing"]["teacher_cache"]["used"]
    assert cached["timing"]["teacher_cache"]["origin"] == "computed"
    live = compose_cfg(*QUICK, "teacher_output_cache=off", root=tmp_path / "live")
    live.paths.cache_dir = str(tmp_path / "cache")  # the same trained teacher
    uncached = train(live)
    assert uncached["timing"]["teacher_cache"] == {
        "used": False,
        "reason": "teacher_output_cache=off",
    }
    # Cached logits come from larger batches than training's, so they may differ from a live
    # forward pass in the last bits; the students must still end up where they would anyway.
    assert cached["student"]["test_acc"] == pytest.approx(uncached["student"]["test_acc"], abs=0.02)


def test_augmented_data_refuses_the_cache(compose_cfg, tmp_path):
    write_tiny_cifar(tmp_path, "cifar10")
    cifar = [
        "data=cifar10",
        "teacher=resnet56",
        "student=resnet20",
        "data.num_workers=0",
        "data.batch_size=8",
        "logger=none",
        "callbacks=none",
        "trainer.enable_progress_bar=false",
        "+trainer.fast_dev_run=true",
    ]
    with pytest.raises(ConfigError) as error:
        train(compose_cfg(*cifar, "teacher_output_cache=on"))
    assert error.value.field == "teacher_output_cache"
    assert "randomly augmented" in str(error.value)
    summary = train(compose_cfg(*cifar, "teacher_output_cache=auto"))
    assert summary["timing"]["teacher_cache"]["used"] is False
    assert "augmented" in summary["timing"]["teacher_cache"]["reason"]
