"""DistillationModule: the teacher stays frozen, only the student learns."""

import copy
import functools

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from distill.errors import ConfigError
from distill.losses import CrossEntropy, SoftTargetKD, WeightedSum
from distill.module import DistillationModule
from distill.teachers import (
    FrozenTeacher,
    Teacher,
    TeacherEnsemble,
    TeacherStep,
    cached_teacher_outputs,
)


def tiny_net(width: int) -> nn.Module:
    # BatchNorm and Dropout are what a teacher left in train mode would silently change.
    return nn.Sequential(
        nn.Linear(6, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(0.5), nn.Linear(width, 3)
    )


def loader(n: int = 64) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(n, 6, generator=generator)
    targets = torch.randint(0, 3, (n,), generator=generator)
    return DataLoader(TensorDataset(inputs, targets), batch_size=16)


def make_module(teacher: nn.Module | None) -> DistillationModule:
    terms = {"ce": CrossEntropy(weight=0.5)}
    if teacher is not None:
        terms["kd"] = SoftTargetKD(temperature=2.0, weight=0.5)
    return DistillationModule(
        tiny_net(8),
        WeightedSum(terms),
        optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9),
        num_classes=3,
        teacher=teacher,
    )


class ModeProbe(pl.Callback):
    """Records the teacher's mode and grad flags at every training batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, bool]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        model = module.teacher.model
        any_training = any(m.training for m in model.modules())
        any_grad = any(p.requires_grad for p in model.parameters())
        self.seen.append((any_training, any_grad))


def fit(module: DistillationModule, callbacks=(), **trainer_kwargs) -> pl.Trainer:
    trainer = pl.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
        **trainer_kwargs,
    )
    trainer.fit(module, train_dataloaders=loader(), val_dataloaders=loader(32))
    return trainer


def test_teacher_stays_frozen_and_in_eval_mode_across_fit():
    torch.manual_seed(0)
    teacher = tiny_net(16)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    module = make_module(teacher)
    probe = ModeProbe()
    fit(module, callbacks=[probe])
    assert len(probe.seen) == 8  # 4 batches x 2 epochs
    assert all(mode == (False, False) for mode in probe.seen)
    after = teacher.state_dict()
    # Weights and BatchNorm running statistics alike are untouched.
    for key, value in before.items():
        assert torch.equal(value, after[key]), key


def test_frozen_teacher_refuses_train_mode_and_gradients():
    teacher = FrozenTeacher(tiny_net(4))
    teacher.train()
    teacher.requires_grad_(True)
    assert not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    output = teacher(torch.randn(2, 6))
    assert not output.requires_grad


def test_optimizer_holds_student_parameters_only():
    module = make_module(tiny_net(16))
    trainer = fit(module)
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.student.parameters()}
    assert not optimized & {id(p) for p in module.teacher.parameters()}


def test_student_learns_and_kd_terms_are_logged():
    torch.manual_seed(0)
    module = make_module(tiny_net(16))
    student_before = [p.clone() for p in module.student.parameters()]
    trainer = fit(module)
    student_after = list(module.student.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(student_before, student_after, strict=True))
    for key in ("train/loss", "train/loss_ce", "train/loss_kd"):
        assert torch.isfinite(trainer.callback_metrics[key]), key


def test_checkpoints_leave_out_the_teacher_and_load_back(tmp_path):
    torch.manual_seed(0)
    module = make_module(tiny_net(16))
    trainer = fit(module)
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint["state_dict"]
    assert not any(key.startswith("teacher.") for key in checkpoint["state_dict"])
    # A fresh module with the same teacher loads it strictly.
    fresh = make_module(module.teacher.model)
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"], strict=True)
    for a, b in zip(module.student.parameters(), fresh.student.parameters(), strict=True):
        assert torch.equal(a, b)


def test_terms_that_need_a_teacher_without_one_are_refused():
    with pytest.raises(ConfigError) as error:
        DistillationModule(
            tiny_net(4),
            WeightedSum({"kd": SoftTargetKD()}),
            optimizer=functools.partial(torch.optim.SGD, lr=0.1),
            num_classes=3,
        )
    assert error.value.field == "loss"
    assert "kd" in str(error.value)


def kd_module(teacher: nn.Module, seed: int = 0) -> DistillationModule:
    torch.manual_seed(seed)
    module = DistillationModule(
        tiny_net(8),
        WeightedSum({"ce": CrossEntropy(weight=0.5), "kd": SoftTargetKD(temperature=2.0)}),
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        num_classes=3,
        teacher=teacher,
    )
    module.log = lambda *args, **kwargs: None  # no Trainer to log to
    return module


def test_a_single_teacher_and_an_ensemble_are_driven_through_one_interface():
    torch.manual_seed(1)
    net = tiny_net(16)
    # An ensemble of two copies of one teacher, equally weighted, teaches what that teacher
    # teaches alone: the same module code drives both, with no branch on the kind.
    single = kd_module(FrozenTeacher(copy.deepcopy(net)))
    ensemble = kd_module(
        TeacherEnsemble({"a": copy.deepcopy(net), "b": copy.deepcopy(net)}, {"a": 1, "b": 1})
    )
    inputs, targets = next(iter(loader()))
    for module in (single, ensemble):
        assert isinstance(module.teacher, Teacher)
    step = single.teacher.outputs(inputs, targets)
    assert step.member_logits is None and step.member_weights is None
    combined = ensemble.teacher.outputs(inputs, targets)
    assert len(combined.member_logits) == 2
    assert combined.member_weights[0].tolist() == pytest.approx([0.5, 0.5])
    assert torch.allclose(combined.logits, step.logits.log_softmax(dim=-1), atol=1e-5)
    torch.manual_seed(2)  # the same dropout in both students
    single_loss = single.training_step((inputs, targets), 0)
    torch.manual_seed(2)
    ensemble_loss = ensemble.training_step((inputs, targets), 0)
    assert single_loss.item() == pytest.approx(ensemble_loss.item(), rel=1e-5)
    assert single.teacher_taps.model is single.teacher.model
    assert ensemble.teacher_taps.model is ensemble.teacher


class Recording(Teacher):
    """A teacher that records how the module calls it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_net(4)
        self.calls: list[str] = []

    def forward(self, inputs):
        self.calls.append("forward")
        with torch.no_grad():
            return self.net(inputs)

    def outputs(self, inputs, targets=None):
        self.calls.append(f"outputs(targets={targets is not None})")
        with torch.no_grad():
            return TeacherStep(self.net(inputs))

    @property
    def tap_model(self):
        return self.net

    def member_models(self):
        return {"teacher": self.net}

    def describe(self, test_acc, member_facts):
        return {"test_acc": test_acc}


def test_the_module_uses_only_the_teacher_interface():
    teacher = Recording()
    module = kd_module(teacher)
    assert module.teacher is teacher  # a Teacher is used as it is, not wrapped again
    teacher.train()
    teacher.requires_grad_(True)
    assert not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    inputs, targets = next(iter(loader()))
    module.training_step((inputs, targets), 0)
    module.test_step((inputs, targets), 0)
    assert teacher.calls == ["outputs(targets=True)", "forward"]


def test_teacher_outputs_given_after_construction_replace_the_teacher(tmp_path):
    torch.manual_seed(0)
    module = kd_module(tiny_net(16))
    data = loader().dataset
    outputs, facts = cached_teacher_outputs(
        module.teacher, module.teacher_taps, data, tmp_path, {"data": "toy"}
    )
    assert facts["origin"] == "computed"
    inputs, targets = data.tensors[0][:16], data.tensors[1][:16]
    module.student.eval()  # no dropout: the two steps see the same student
    live = module.training_step((inputs, targets), 0)
    module.use_teacher_outputs(outputs)
    module.teacher.outputs = None  # the teacher is not run any more
    cached = module.training_step((inputs, targets, torch.arange(16)), 0)
    assert cached.item() == pytest.approx(live.item(), rel=1e-5)
    with pytest.raises(RuntimeError, match="sample indices"):
        module.training_step((inputs, targets), 0)
