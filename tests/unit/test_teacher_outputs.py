"""Teacher outputs computed once: equal to the teacher's forward pass, keyed, memory-mapped."""

from __future__ import annotations

import os
import stat

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from distill.taps import FeatureTaps
from distill.teachers import FrozenTeacher, cached_teacher_outputs


def teacher_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    data = TensorDataset(torch.randn(23, 5), torch.randint(0, 3, (23,)))
    return model, data


def test_outputs_match_the_teacher_and_are_reused(tmp_path):
    model, data = teacher_and_data()
    taps = FeatureTaps(model, ["1"], field="loss")
    outputs, facts = cached_teacher_outputs(
        FrozenTeacher(model), taps, data, tmp_path, {"data": "toy"}, batch_size=4
    )
    assert facts["origin"] == "computed" and facts["used"]
    assert isinstance(outputs.arrays["logits"], np.memmap)
    indices = torch.tensor([22, 0, 7])
    logits, features = outputs.lookup(indices, torch.device("cpu"))
    inputs = data.tensors[0][indices]
    with torch.no_grad():
        assert torch.allclose(logits, model(inputs), atol=1e-6)
        assert torch.allclose(features["1"], torch.relu(model[0](inputs)), atol=1e-6)

    again, facts = cached_teacher_outputs(
        FrozenTeacher(model), taps, data, tmp_path, {"data": "toy"}, batch_size=4
    )
    assert facts["origin"] == "cache"
    assert again.directory == outputs.directory


def test_other_weights_data_or_taps_get_their_own_entry(tmp_path):
    model, data = teacher_and_data()
    taps = FeatureTaps(model, [], field="loss")
    first, _ = cached_teacher_outputs(FrozenTeacher(model), taps, data, tmp_path, {"d": 1})
    other_data, _ = cached_teacher_outputs(FrozenTeacher(model), taps, data, tmp_path, {"d": 2})
    with torch.no_grad():
        model[0].weight.add_(1.0)
    other_weights, _ = cached_teacher_outputs(FrozenTeacher(model), taps, data, tmp_path, {"d": 1})
    tapped = FeatureTaps(model, ["1"], field="loss")
    other_taps, _ = cached_teacher_outputs(FrozenTeacher(model), tapped, data, tmp_path, {"d": 1})
    directories = {o.directory for o in (first, other_data, other_weights, other_taps)}
    assert len(directories) == 4
    # No half-written entries or staging directories are left behind.
    assert all((d / "done").is_file() for d in directories)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and p.is_dir()]


def test_the_staging_folder_of_a_killed_job_is_removed(tmp_path):
    model, data = teacher_and_data()
    taps = FeatureTaps(model, [], field="loss")
    outputs, _ = cached_teacher_outputs(FrozenTeacher(model), taps, data, tmp_path, {"d": 1})
    # What _compute leaves when its process is killed before the rename.
    staging = tmp_path / f".{outputs.directory.name}.k1ll3d00"
    staging.mkdir()
    (staging / "logits.npy").write_bytes(b"half")
    other = tmp_path / ".0123456789abcdef0123.k1ll3d00"  # another entry's: left alone
    other.mkdir()
    _, facts = cached_teacher_outputs(FrozenTeacher(model), taps, data, tmp_path, {"d": 1})
    assert facts["origin"] == "cache"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [outputs.directory.name, f".{outputs.directory.name}.lock", other.name]
    )


def test_the_entry_folder_gets_the_umask_mode(tmp_path):
    model, data = teacher_and_data()
    before = os.umask(0o022)
    try:
        outputs, _ = cached_teacher_outputs(
            FrozenTeacher(model), FeatureTaps(model, [], field="loss"), data, tmp_path, {"d": 1}
        )
    finally:
        os.umask(before)
    assert stat.S_IMODE(outputs.directory.stat().st_mode) == 0o755
    assert stat.S_IMODE((outputs.directory / "logits.npy").stat().st_mode) == 0o644
