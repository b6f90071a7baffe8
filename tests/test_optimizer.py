"""Tests of pycls.core.optimizer: parameter groups, optimizer choice and LR policies."""

import math
import sys
import types

import pytest
import torch

import pycls.core.optimizer as optim
from pycls.core.config import cfg
from pycls.core.errors import PyclsError

pytestmark = pytest.mark.usefixtures("fresh_cfg")


class TinyNet(torch.nn.Module):
    """conv (no bias) -> bn -> fc (with bias)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, bias=False)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


def _npu_device():
    """Stands in for torch.device('npu') (naming PrivateUse1 npu would outlive the test)."""
    return types.SimpleNamespace(type="npu", index=0)


def _group_names(model, optimizer):
    names = {id(p): n for n, p in model.named_parameters()}
    return [
        ([names[id(p)] for p in g["params"]], g["weight_decay"]) for g in optimizer.param_groups
    ]


def test_sgd_with_custom_weight_decays():
    cfg.OPTIM.WEIGHT_DECAY = 5e-4
    cfg.BN.USE_CUSTOM_WEIGHT_DECAY, cfg.BN.CUSTOM_WEIGHT_DECAY = True, 0.0
    cfg.OPTIM.BIAS_USE_CUSTOM_WEIGHT_DECAY, cfg.OPTIM.BIAS_CUSTOM_WEIGHT_DECAY = True, 1e-6
    cfg.OPTIM.MOMENTUM, cfg.OPTIM.DAMPENING, cfg.OPTIM.NESTEROV = 0.8, 0.0, True
    model = TinyNet()
    optimizer = optim.construct_optimizer(model)
    assert type(optimizer) is torch.optim.SGD
    assert _group_names(model, optimizer) == [
        (["bn.weight", "bn.bias"], 0.0),
        (["fc.bias"], 1e-6),
        (["conv.weight", "fc.weight"], 5e-4),
    ]
    defaults = optimizer.defaults
    assert (defaults["lr"], defaults["momentum"], defaults["nesterov"]) == (0.1, 0.8, True)
    assert defaults["foreach"] is False and defaults["fused"] is True  # fastest on CPU


def test_fused_sgd_survives_a_skipped_first_step():
    # GradScaler skips a step with inf grads; fused SGD must not then read unset buffers
    model = TinyNet()
    optimizer = optim.construct_optimizer(model)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.full_like(p, float("inf"))
    optimizer.grad_scale, optimizer.found_inf = None, torch.ones(())
    optimizer.step()
    for p, old in zip(model.parameters(), before):
        assert torch.equal(p, old)
        assert torch.equal(optimizer.state[p]["momentum_buffer"], torch.zeros_like(p))


def test_default_weight_decay_everywhere_and_frozen_params_left_out():
    cfg.OPTIM.WEIGHT_DECAY = 1e-5
    model = TinyNet()
    model.conv.weight.requires_grad_(False)
    optimizer = optim.construct_optimizer(model)
    groups = _group_names(model, optimizer)
    assert [wd for _, wd in groups] == [1e-5, 1e-5, 1e-5]
    assert "conv.weight" not in sum((names for names, _ in groups), [])


@pytest.mark.parametrize("name,cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_adam_and_adamw(name, cls):
    cfg.OPTIM.OPTIMIZER = name
    cfg.OPTIM.BETA1, cfg.OPTIM.BETA2 = 0.8, 0.99
    optimizer = optim.construct_optimizer(TinyNet())
    assert type(optimizer) is cls
    assert optimizer.defaults["betas"] == (0.8, 0.99)


def test_unknown_optimizer():
    cfg.OPTIM.OPTIMIZER = "lamb"
    with pytest.raises(PyclsError, match="OPTIM.OPTIMIZER"):
        optim.construct_optimizer(TinyNet())


def test_cuda_sgd_is_fused():
    optimizer = optim.construct_optimizer(TinyNet(), device="cuda")
    assert optimizer.defaults["fused"] is True


def test_npu_uses_torch_npu_fused_sgd(monkeypatch):
    class NpuFusedSGD(torch.optim.SGD):
        """Stands in for torch_npu.optim.NpuFusedSGD."""

    fake_optim = types.ModuleType("torch_npu.optim")
    fake_optim.NpuFusedSGD = NpuFusedSGD
    fake_npu = types.ModuleType("torch_npu")
    fake_npu.optim = fake_optim
    monkeypatch.setitem(sys.modules, "torch_npu", fake_npu)
    monkeypatch.setitem(sys.modules, "torch_npu.optim", fake_optim)
    cfg.OPTIM.WEIGHT_DECAY = 3e-5
    optimizer = optim.construct_optimizer(TinyNet(), device=_npu_device())
    assert type(optimizer) is NpuFusedSGD
    assert optimizer.defaults["weight_decay"] == 3e-5 and optimizer.defaults["nesterov"]


def test_npu_without_torch_npu_falls_back_to_foreach_sgd(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # import torch_npu fails
    optimizer = optim.construct_optimizer(TinyNet(), device=_npu_device())
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["foreach"] is True


def test_set_lr_sets_every_group():
    optimizer = optim.construct_optimizer(TinyNet())
    optim.set_lr(optimizer, 0.025)
    assert [g["lr"] for g in optimizer.param_groups] == [0.025] * len(optimizer.param_groups)


def _lrs(policy, epochs, **optim_cfg):
    cfg.OPTIM.LR_POLICY = policy
    cfg.OPTIM.BASE_LR, cfg.OPTIM.MAX_EPOCH = 0.4, 100
    for key, value in optim_cfg.items():
        cfg.OPTIM[key] = value
    return [optim.get_epoch_lr(e) for e in epochs]


def test_cos_policy():
    lrs = _lrs("cos", [0, 50, 100, 25], MIN_LR=0.01)
    assert lrs[0] == pytest.approx(0.4)
    assert lrs[1] == pytest.approx(0.4 * (0.99 * 0.5 + 0.01))
    assert lrs[2] == pytest.approx(0.4 * 0.01)
    assert lrs[3] == pytest.approx(0.4 * (0.99 * 0.5 * (1 + math.cos(math.pi / 4)) + 0.01))


def test_exp_policy():
    lrs = _lrs("exp", [0, 50, 100], MIN_LR=0.01)
    assert lrs == pytest.approx([0.4, 0.4 * 0.1, 0.4 * 0.01])


def test_lin_policy():
    lrs = _lrs("lin", [0, 50, 100], MIN_LR=0.0)
    assert lrs == pytest.approx([0.4, 0.2, 0.0])


def test_steps_policy():
    lrs = _lrs("steps", [0, 29.9, 30, 65, 99], STEPS=[0, 30, 60, 90], LR_MULT=0.1)
    assert lrs == pytest.approx([0.4, 0.4, 0.04, 0.004, 0.0004])


def test_warmup_from_warmup_factor():
    lrs = _lrs("cos", [0, 2.5, 5, 0.5], WARMUP_EPOCHS=5, WARMUP_FACTOR=0.1)
    cos = [0.4 * 0.5 * (1 + math.cos(math.pi * e / 100)) for e in (0, 2.5, 5, 0.5)]
    assert lrs[0] == pytest.approx(cos[0] * 0.1)
    assert lrs[1] == pytest.approx(cos[1] * (0.1 * 0.5 + 0.5))
    assert lrs[2] == pytest.approx(cos[2])
    assert lrs[3] == pytest.approx(cos[3] * (0.1 * 0.9 + 0.1))


def test_get_lr_fun_and_bad_policies():
    cfg.OPTIM.LR_POLICY = "cos"
    assert optim.get_lr_fun() is optim.lr_fun_cos
    cfg.OPTIM.LR_POLICY, cfg.OPTIM.MIN_LR = "exp", 0.0
    with pytest.raises(PyclsError, match="MIN_LR"):
        optim.get_epoch_lr(0)
    cfg.OPTIM.LR_POLICY, cfg.OPTIM.STEPS = "steps", [30, 60]
    with pytest.raises(PyclsError, match="STEPS"):
        optim.get_epoch_lr(0)
    cfg.OPTIM.LR_POLICY = "poly"
    with pytest.raises(PyclsError, match="LR_POLICY"):
        optim.get_lr_fun()
