"""Tests of net.fold_bn: BN folded into the convs gives the same logits, on a copy."""

import copy
import os

import pytest
import torch
from conftest import REPO

import pycls.core.builders as builders
import pycls.core.config as config
import pycls.core.net as net

_CONFIGS = {
    "effnet": "configs/dds_baselines/effnet/EN-B0_dds_8gpu.yaml",
    "regnet": "configs/dds_baselines/regnetx/RegNetX-200MF_dds_8gpu.yaml",
    "resnet": "configs/dds_baselines/resnet/R-50-1x64d_dds_8gpu.yaml",
}


def trained_like(name):
    """Builds a model whose BN stats are real batch stats (as after precise BN), in train mode."""
    config.load_cfg(os.path.join(REPO, _CONFIGS[name]), ["MODEL.NUM_CLASSES", "10"])
    torch.manual_seed(0)
    model = builders.build_model()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = 1.0
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 64))
    return model, len(bns)


@pytest.mark.parametrize("name", list(_CONFIGS))
def test_folded_logits_equal_the_unfolded_ones(name):
    model, num_bns = trained_like(name)
    before = copy.deepcopy(model.state_dict())
    folded = net.fold_bn(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert not folded.training
    # The model itself keeps its BN, its weights and its train mode
    assert model.training and num_bns == sum(
        isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()
    )
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = model.eval()(x), folded(x)
        exact_model = copy.deepcopy(model).double()
        exact, folded_exact = exact_model(x.double()), net.fold_bn(exact_model)(x.double())
    assert (got - expected).abs().max() <= 1e-4
    # In float64 the folding itself is exact (no fp32 rounding, which varies with the CPU's kernels)
    assert (folded_exact - exact).abs().max() <= 1e-9 * exact.abs().max()


def test_fold_bn_unwraps_and_keeps_unpaired_bn():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(4)
            self.other = torch.nn.BatchNorm2d(4)  # reads a ReLU, not a conv: stays

        def forward(self, x):
            return self.other(torch.relu(self.bn(self.conv(x))))

    model = Net()
    model.bn.running_mean.uniform_(-1, 1)
    model.bn.running_var.uniform_(0.5, 2)
    wrapped = torch.nn.DataParallel(model)
    folded = net.fold_bn(wrapped)
    assert isinstance(folded, Net)
    assert isinstance(folded.bn, torch.nn.Identity) and isinstance(
        folded.other, torch.nn.BatchNorm2d
    )
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(folded(x), model.eval()(x), atol=1e-6)
