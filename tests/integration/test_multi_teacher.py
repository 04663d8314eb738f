"""A multi-teacher recipe end to end: every teacher provisioned, cached and frozen."""

from __future__ import annotations

import pytest

from distill.errors import ConfigError
from distill.pipeline import train

from .test_fast_dev_run import QUIET

SMALL = [
    "recipe=mnist1d_multi_teacher",
    "data.num_samples=600",
    "teachers.k5.train.max_epochs=2",
    "teachers.k7.train.max_epochs=2",
    "trainer.max_epochs=2",
    *QUIET,
]


@pytest.mark.parametrize("rule", ["mean", "confidence"])
def test_two_teachers_train_once_each_and_teach_one_student(rule, compose_cfg, tmp_path):
    summary = train(compose_cfg(*SMALL, f"teacher_ensemble.rule={rule}"))
    members = summary["teacher"]["members"]
    assert set(members) == {"k5", "k7"}
    assert {m["origin"] for m in members.values()} == {"trained"}
    assert members["k5"]["cache_key"] != members["k7"]["cache_key"]
    assert summary["teacher"]["rule"] == rule
    assert summary["teacher"]["params_total"] > summary["student"]["params_total"]
    assert 0.0 <= summary["student"]["test_acc"] <= 1.0

    cfg = compose_cfg(*SMALL, f"teacher_ensemble.rule={rule}", root=tmp_path / "again")
    cfg.paths.cache_dir = str(tmp_path / "cache")
    again = train(cfg)
    assert {m["origin"] for m in again["teacher"]["members"].values()} == {"cache"}


def test_a_teacher_whose_class_count_differs_is_named(compose_cfg, tmp_path):
    with pytest.raises(ConfigError) as error:
        train(compose_cfg(*SMALL, "teachers.k7.model.num_classes=5"))
    assert error.value.field == "teachers.k7.model"
    assert not (tmp_path / "cache" / "teachers").exists()


def test_feature_taps_name_a_teacher(compose_cfg):
    summary = train(
        compose_cfg(
            *SMALL,
            "loss=[ce,at]",
            "loss.at.student=[features.8]",
            "loss.at.teacher=[k7/features.8]",
        )
    )
    assert summary["loss"] == {"ce": "CrossEntropy", "at": "AttentionTransfer"}
