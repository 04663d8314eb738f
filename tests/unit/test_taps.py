"""Feature taps: capture by module name, clear every step, removed when fit ends."""

from __future__ import annotations

import functools

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from distill.errors import ConfigError
from distill.losses import CrossEntropy, WeightedSum
from distill.losses.base import StepOutputs
from distill.losses.features import FeatureLossTerm
from distill.module import DistillationModule
from distill.taps import FeatureTaps


def net(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(1, width, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(width * 8, 3)
    )


def test_output_and_input_taps_capture_the_right_tensors():
    model = net(4)
    inputs = torch.randn(2, 1, 8)
    with FeatureTaps(model, ["1", "3:in"], field="loss") as taps:
        logits = model(inputs)
        relu_out = torch.relu(model[0](inputs))
        assert torch.equal(taps.features["1"], relu_out)
        assert torch.equal(taps.features["3:in"], relu_out.flatten(1))
        assert logits.shape == (2, 3)
    assert not taps.installed and not taps.features
    assert not model[1]._forward_hooks  # every hook handle removed


def test_a_missing_module_name_lists_the_closest_ones():
    model = nn.Sequential()
    model.add_module("layer1", nn.Linear(2, 2))
    model.add_module("layer2", nn.Linear(2, 2))
    with pytest.raises(ConfigError) as error:
        FeatureTaps(model, ["layr2"], field="loss.fitnets.student")
    assert error.value.field == "loss.fitnets.student"
    assert "closest: layer2, layer1" in str(error.value)


class Recorder(FeatureLossTerm):
    """A feature term that records what it saw and needs the same shapes (adapter)."""

    needs_same_shape = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seen: list[tuple[torch.Size, torch.Size]] = []

    def pair_loss(self, student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
        self.seen.append((student_feature.shape, teacher_feature.shape))
        return (student_feature - teacher_feature).pow(2).mean()


def test_module_feeds_tapped_features_through_an_adapter_and_removes_hooks():
    student, teacher = net(4), net(6)
    term = Recorder(student="1", teacher="1", weight=1.0)
    loss = WeightedSum({"ce": CrossEntropy(), "rec": term})
    module = DistillationModule(
        student,
        loss,
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        num_classes=3,
        teacher=teacher,
        example_inputs=torch.randn(2, 1, 8),
    )
    assert isinstance(term.adapters[0], nn.Sequential)  # 1x1 conv 4 -> 6 channels + BN
    adapter_params = {id(p) for p in term.adapters.parameters()}
    assert adapter_params <= {id(p) for p in module.trainable_parameters()}
    data = TensorDataset(torch.randn(16, 1, 8), torch.randint(0, 3, (16,)))
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=8))
    assert term.seen == [(torch.Size([8, 6, 8]), torch.Size([8, 6, 8]))] * 2
    assert not student[1]._forward_hooks and not teacher[1]._forward_hooks
    assert not module.student_taps.features


def test_adapter_none_with_different_shapes_is_refused():
    term = Recorder(student="1", teacher="1", adapter="none")
    with pytest.raises(ConfigError) as error:
        DistillationModule(
            net(4),
            WeightedSum({"rec": term}),
            optimizer=functools.partial(torch.optim.SGD, lr=0.1),
            num_classes=3,
            teacher=net(6),
            example_inputs=torch.randn(2, 1, 8),
        )
    assert error.value.field == "adapter"


def test_features_reach_the_loss_as_step_outputs():
    outputs = StepOutputs(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long))
    assert outputs.student_features == {} and outputs.indices is None
