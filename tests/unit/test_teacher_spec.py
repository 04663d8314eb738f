"""Teacher specs: read from config once, checked, and the only input of the cache key."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from distill.errors import ConfigError
from distill.teachers import (
    CACHE_FORMAT,
    FrozenTeacher,
    TeacherEnsemble,
    TeacherSpec,
    build_teachers,
    cache_key,
    data_fingerprint,
    teacher_cache_key,
    teacher_key_material,
    teacher_specs,
)

MODEL = {"_target_": "torch.nn.Linear", "in_features": 4, "out_features": 3}
TRAIN = {
    "max_epochs": 2,
    "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
    "lr_scheduler": None,
}
DATA = {"_target_": "toy", "num_samples": 600, "batch_size": 32}
CPU = {"accelerator": "cpu", "precision": "32-true", "threads": 2}


def spec(**changes) -> TeacherSpec:
    settings = {
        "field": "teachers.wide",
        "model": MODEL,
        "train": TRAIN,
        "cache_dir": "/tmp/teachers",
        **changes,
    }
    return TeacherSpec(**settings)


def test_the_cache_key_material_is_the_one_teachers_were_cached_under():
    # Without `compute`, the material is what the code before teachers/ hashed ({"model",
    # "data", "train", "seed"}): under CACHE_FORMAT 2 it gave this key. Format 4 (initial
    # weights from the seed alone, compute in the key) retrains every teacher once.
    material = teacher_key_material(spec(), DATA, seed=0, compute=CPU)
    assert material.pop("compute") == CPU
    canonical = json.dumps({"format": 2, **material}, sort_keys=True, default=str)
    assert hashlib.sha256(canonical.encode()).hexdigest()[:20] == "1d9b859796e56ff272c9"
    assert material == {"model": MODEL, "data": DATA, "train": TRAIN, "seed": 0}
    assert CACHE_FORMAT == 4
    key = teacher_cache_key(spec(), DATA, seed=0, compute=CPU)
    assert key == cache_key({**material, "compute": CPU})
    assert key == "72190ea55e9de8a6607a"


def test_the_cache_key_depends_on_spec_data_seed_and_compute_and_nothing_else():
    key = teacher_cache_key(spec(), DATA, seed=0, compute=CPU)
    # What does not change the weights a teacher is trained to leaves the key alone.
    for same in (
        spec(weight=3.0),
        spec(field="teacher"),
        spec(cache_dir="/elsewhere", cache_dir_field="teachers.wide.cache_dir"),
    ):
        assert teacher_cache_key(same, DATA, seed=0, compute=CPU) == key
    others = [
        teacher_cache_key(spec(model={**MODEL, "out_features": 5}), DATA, seed=0, compute=CPU),
        teacher_cache_key(spec(train={**TRAIN, "max_epochs": 3}), DATA, seed=0, compute=CPU),
        teacher_cache_key(spec(), {**DATA, "num_samples": 601}, seed=0, compute=CPU),
        teacher_cache_key(spec(), DATA, seed=1, compute=CPU),
        teacher_cache_key(spec(), DATA, seed=0, compute={**CPU, "threads": 1}),
        teacher_cache_key(spec(), DATA, seed=0, compute={**CPU, "precision": "bf16-mixed"}),
    ]
    assert len({key, *others}) == 7
    # The spec keeps its own copies: changing the config it came from changes nothing.
    model = dict(MODEL)
    copied = spec(model=model)
    model["out_features"] = 9
    assert teacher_cache_key(copied, DATA, seed=0, compute=CPU) == key
    with pytest.raises(dataclasses.FrozenInstanceError):
        copied.weight = 2.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "field", "value"),
    [
        ({"weight": 0}, "teachers.wide.weight", 0),
        ({"weight": -1.5}, "teachers.wide.weight", -1.5),
        ({"weight": math.inf}, "teachers.wide.weight", math.inf),
        ({"weight": True}, "teachers.wide.weight", True),
        ({"train": {**TRAIN, "max_epochs": 0}}, "teachers.wide.train.max_epochs", 0),
        ({"train": {**TRAIN, "max_epochs": 2.5}}, "teachers.wide.train.max_epochs", 2.5),
        ({"train": {**TRAIN, "optimizer": None}}, "teachers.wide.train.optimizer", None),
        (
            {"train": {**TRAIN, "lr_scheduler": "cosine"}},
            "teachers.wide.train.lr_scheduler",
            "cosine",
        ),
        ({"train": None}, "teachers.wide.train", None),
        ({"model": {"channels": [8]}}, "teachers.wide.model", {"channels": [8]}),
        ({"cache_dir": None}, "teacher.cache_dir", None),
        ({"checkpoint": 3}, "teachers.wide.checkpoint", 3),
    ],
)
def test_bad_settings_name_the_full_field(changes, field, value):
    with pytest.raises(ConfigError) as error:
        spec(**changes)
    assert error.value.field == field
    assert error.value.value == value or (value is None and error.value.value is None)


def test_a_teacher_with_a_checkpoint_needs_no_training_settings():
    loaded = spec(checkpoint="teacher.pt", train=None, cache_dir=None)
    assert not loaded.must_train and loaded.checkpoint == "teacher.pt"
    assert spec().must_train and spec().max_epochs == 2


def test_specs_come_from_teacher_or_teachers_as_the_run_config_says(compose_cfg):
    cfg = compose_cfg()
    ((name, single),) = teacher_specs(cfg).items()
    assert (name, single.field, single.target) == ("teacher", "teacher", "distill.models.ConvNet1D")
    assert single.max_epochs == 30 and single.weight == 1.0 and single.checkpoint is None
    assert single.cache_dir == OmegaConf.to_container(cfg, resolve=True)["teacher"]["cache_dir"]
    # The key material is what the run config held, resolved: the same bytes as before specs.
    old_data = {
        k: v
        for k, v in OmegaConf.to_container(cfg.data, resolve=True).items()
        if k not in ("num_workers", "eval_batch_size")
    }
    assert data_fingerprint(cfg.data) == old_data
    assert teacher_key_material(single, data_fingerprint(cfg.data), cfg.seed, CPU) == {
        "model": OmegaConf.to_container(cfg.teacher.model, resolve=True),
        "data": old_data,
        "train": OmegaConf.to_container(cfg.teacher.train, resolve=True),
        "seed": cfg.seed,
        "compute": CPU,
    }
    assert single.train["lr_scheduler"]["T_max"] == 30  # ${..max_epochs}, resolved

    several = teacher_specs(compose_cfg("recipe=mnist1d_multi_teacher"))
    assert {name: s.field for name, s in several.items()} == {
        "k5": "teachers.k5",
        "k7": "teachers.k7",
    }
    assert several["k7"].model["kernel_size"] == 7
    assert {s.cache_dir_field for s in several.values()} == {"teacher.cache_dir"}
    assert several["k5"].cache_dir == single.cache_dir


def test_bad_settings_in_the_run_config_are_named(compose_cfg):
    with pytest.raises(ConfigError) as error:
        teacher_specs(compose_cfg("recipe=mnist1d_multi_teacher", "teachers.k7.train.max_epochs=0"))
    assert error.value.field == "teachers.k7.train.max_epochs"
    with pytest.raises(ConfigError) as error:
        teacher_specs(compose_cfg("recipe=mnist1d_multi_teacher", "teachers.k5.weight=0"))
    assert error.value.field == "teachers.k5.weight"


def fake_data(features: int = 4, classes: int = 3) -> SimpleNamespace:
    return SimpleNamespace(
        example_input_batch=lambda n=2: torch.zeros(n, features), num_classes=classes
    )


def test_one_spec_builds_a_frozen_teacher_and_several_an_ensemble():
    single = build_teachers({"teacher": spec(field="teacher")}, fake_data())
    assert isinstance(single, FrozenTeacher) and single.target == "torch.nn.Linear"
    assert list(single.member_models()) == ["teacher"]
    ensemble = build_teachers({"a": spec(), "b": spec(weight=3.0)}, fake_data(), "confidence")
    assert isinstance(ensemble, TeacherEnsemble) and ensemble.rule == "confidence"
    assert ensemble.static_weights.tolist() == [1.0, 3.0]
    assert list(ensemble.member_models()) == ["a", "b"]
    with pytest.raises(ConfigError) as error:
        build_teachers({"a": spec()}, fake_data())
    assert error.value.field == "teachers"
    with pytest.raises(ConfigError) as error:
        build_teachers({"teacher": spec(field="teacher")}, fake_data(classes=5))
    assert error.value.field == "teacher.model"


def test_teachers_describe_themselves_for_the_summary():
    model = nn.Linear(4, 3)
    facts = {"origin": "cache", "checkpoint": {"path": "/c/teacher.pt"}, "test_acc": 0.8}
    described = FrozenTeacher(model, target="my.Model").describe(0.9, {"teacher": facts})
    # The cached teacher's own accuracy is the one reported, as before.
    assert described == {
        "target": "my.Model",
        "test_acc": 0.8,
        "params_total": 15,
        "origin": "cache",
        "checkpoint": {"path": "/c/teacher.pt"},
    }
    assert list(described)[:3] == ["target", "test_acc", "params_total"]
    ensemble = TeacherEnsemble({"a": nn.Linear(4, 3), "b": nn.Linear(4, 3)}, {"a": 1, "b": 1})
    members = {"a": {"origin": "trained"}, "b": {"origin": "checkpoint"}}
    assert ensemble.describe(0.7, members) == {
        "target": "distill.teachers.ensemble.TeacherEnsemble",
        "test_acc": 0.7,
        "params_total": 30,
        "rule": "mean",
        "members": members,
    }


class RecordingTrainer:
    """Stands in for the Lightning Trainer a factory makes: records what fit was given."""

    def __init__(self, seen: list, **settings) -> None:
        self.seen, self.settings = seen, settings

    def fit(self, module, datamodule, weights_only) -> None:
        assert weights_only is True  # a checkpoint Lightning finds is read as weights only
        model = module.student
        training = all(m.training for m in model.modules())
        grads = all(p.requires_grad for p in model.parameters())
        self.seen.append((self.settings, training, grads))

    def test(self, module, datamodule, verbose, weights_only) -> list[dict]:
        assert weights_only is True
        return [{"test/acc": 0.5}]


def test_a_member_frozen_by_its_teacher_trains_in_train_mode_with_gradients(tmp_path):
    from distill.teachers import train_teacher

    frozen = FrozenTeacher(nn.BatchNorm1d(3))
    seen: list = []
    facts = train_teacher(
        spec(model={"_target_": "torch.nn.BatchNorm1d", "num_features": 3}),
        frozen.model,
        SimpleNamespace(num_classes=3),
        seed=0,
        trainer_factory=lambda **settings: RecordingTrainer(seen, **settings),
        root_dir=tmp_path,
    )
    assert seen == [({"max_epochs": 2, "default_root_dir": tmp_path}, True, True)]
    assert facts["test_acc"] == 0.5
    # Back to frozen once trained.
    assert not any(m.training for m in frozen.model.modules())
    assert not any(p.requires_grad for p in frozen.parameters())
