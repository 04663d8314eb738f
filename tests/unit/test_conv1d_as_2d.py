"""1-D convs written as 2-D ones of height 1 for the fp32 ONNX file: the same numbers."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from distill.deploy.conv1d_as_2d import Conv1dAs2d, convs_as_2d
from distill.deploy.onnx_runtime import OrtModel, export_onnx

CONVS = {
    "plain": dict(in_channels=4, out_channels=6, kernel_size=3),
    "padded, strided, no bias": dict(
        in_channels=4, out_channels=6, kernel_size=5, stride=2, padding=2, bias=False
    ),
    "dilated": dict(in_channels=4, out_channels=4, kernel_size=3, dilation=2, padding=2),
    "depthwise": dict(in_channels=4, out_channels=8, kernel_size=3, padding=1, groups=4),
    "same padding": dict(in_channels=4, out_channels=4, kernel_size=4, padding="same"),
}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("settings", CONVS.values(), ids=list(CONVS))
def test_a_conv1d_as_2d_computes_the_same_outputs_with_a_height_1_kernel(settings):
    torch.manual_seed(0)
    conv = nn.Conv1d(**settings)
    as_2d = Conv1dAs2d(conv)
    x = torch.randn(3, 4, 17)
    torch.testing.assert_close(as_2d(x), conv(x), rtol=1e-5, atol=1e-6)
    assert as_2d.conv.weight.shape == (*conv.weight.shape[:2], 1, conv.kernel_size[0])


def _student() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(1, 8, 3, padding=1),
        nn.ReLU6(),
        nn.Conv1d(8, 8, 3, padding=1, groups=8),
        nn.Conv1d(8, 8, 3, padding=1, padding_mode="circular"),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def test_convs_as_2d_rewrites_a_copy_and_leaves_other_padding_modes(tmp_path):
    torch.manual_seed(0)
    model = _student().eval()
    converted = convs_as_2d(model)
    assert isinstance(model[0], nn.Conv1d)  # the original is untouched
    assert [type(converted[i]) for i in (0, 2, 3)] == [Conv1dAs2d, Conv1dAs2d, nn.Conv1d]
    x = torch.randn(5, 1, 12)
    with torch.inference_mode():
        torch.testing.assert_close(converted(x), model(x), rtol=1e-5, atol=1e-6)
    path = export_onnx(converted, x[:2], tmp_path / "student.onnx")
    ranks = {init.name: len(init.dims) for init in onnx.load(str(path)).graph.initializer}
    conv_weights = [
        ranks[node.input[1]]
        for node in onnx.load(str(path)).graph.node
        if node.op_type == "Conv" and node.input[1] in ranks
    ]
    assert sorted(conv_weights) == [3, 4, 4]  # the circular one stays 1-D
    with torch.inference_mode():
        torch.testing.assert_close(
            torch.from_numpy(OrtModel(path)(x)), model(x), rtol=1e-4, atol=1e-5
        )


def test_a_model_without_conv1d_is_returned_as_it_is():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    assert convs_as_2d(model) is model
