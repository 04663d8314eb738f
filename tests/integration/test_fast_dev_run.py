"""One fast_dev_run per data and model family: every pairing trains, tests and summarises."""

from __future__ import annotations

import pytest

from distill.pipeline import train

from ..unit.test_configs import write_tiny_cifar

# Deployment exports are tested on their own (test_export.py); elsewhere they only cost time.
QUIET = ["logger=none", "callbacks=none", "trainer.enable_progress_bar=false", "export=false"]

FAMILIES = {
    "mnist1d-cnn1d": ["data=mnist1d", "data.num_samples=600"],
    "mnist1d-mlp": ["data=mnist1d", "data.num_samples=600", "student=mlp"],
    "digits-cnn2d": ["data=digits", "teacher=cnn2d_digits", "student=cnn2d_small"],
    "cifar10-resnet": ["data=cifar10", "teacher=resnet56", "student=resnet20"],
    "cifar100-wrn": ["data=cifar100", "teacher=wrn_40_2", "student=wrn_16_2"],
    "cifar100-resnet8x4": ["data=cifar100", "teacher=resnet32x4", "student=resnet8x4"],
}


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_dev_run(family, compose_cfg, tmp_path):
    overrides = FAMILIES[family]
    if overrides[0].startswith("data=cifar"):
        write_tiny_cifar(tmp_path, overrides[0].removeprefix("data="))
        overrides = [*overrides, "data.num_workers=0", "data.batch_size=8"]
    summary = train(compose_cfg(*overrides, *QUIET, "+trainer.fast_dev_run=true"))
    assert 0.0 <= summary["student"]["test_acc"] <= 1.0
    assert summary["teacher"]["origin"] == "trained"
    assert summary["student"]["params_total"] < summary["teacher"]["params_total"]
