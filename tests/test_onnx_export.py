"""ONNX export of static modules, checked against torch with onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from ofa_core import OFAMobileNetV3, SearchSpace
from ofa_core import blocks as B
from ofa_core.onnx_export import OnnxExportError, export_onnx, run_onnx


@pytest.mark.parametrize("fold_bn", [False, True])
def test_export_extracted_subnet(tmp_path, fold_bn):
    space = SearchSpace.get("ofa-mbv3-fmnist")
    net = OFAMobileNetV3(space)
    cfg = space.sample(np.random.default_rng(2), resolutions=[28])
    static = net.extract(cfg, fold_bn=fold_bn).eval()
    path = export_onnx(static, tmp_path / "sub.onnx", (1, 1, 28, 28))
    model = onnx.load(str(path))
    assert model.opset_import[0].version == 17
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 1, 28, 28]
    assert list(tmp_path.iterdir()) == [path]
    x = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        want = static(torch.from_numpy(x)).numpy()
    assert np.abs(run_onnx(path, x) - want).max() <= 1e-4


def test_export_table_block(tmp_path):
    space = SearchSpace.get("ofa-mbv3-w1.0")
    spec = space.blocks()[4]  # first block of the second elastic stage: stride 2, squeeze-excite
    assert spec.se and spec.stride == 2
    block = B.mbconv(space, spec, kernel=5, expand=4)
    path = export_onnx(block, tmp_path / "blk.onnx", (1, spec.in_channels, 28, 28))
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Conv", "HardSigmoid", "Mul"} <= ops
    block.train()
    export_onnx(B.global_pool(), tmp_path / "pool.onnx", (1, 960, 7, 7))  # no parameters at all
    export_onnx(block, tmp_path / "again.onnx", (1, spec.in_channels, 28, 28))
    assert block.training  # the caller's mode is restored


class _CountsCalls(nn.Module):
    """Adds the number of times it was called: the traced graph freezes one value, torch moves on."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x * self.scale + float(self.calls)


def test_mismatch_raises_named_error(tmp_path):
    with pytest.raises(OnnxExportError) as err:
        export_onnx(_CountsCalls(), tmp_path / "bad.onnx", (1, 3))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "bad.onnx").exists()
    export_onnx(_CountsCalls(), tmp_path / "unchecked.onnx", (1, 3), check=False)
    assert (tmp_path / "unchecked.onnx").exists()
