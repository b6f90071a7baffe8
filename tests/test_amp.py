"""Tests of pycls.core.amp: opt levels, dtypes, loss scaling, skipped steps and apex choice."""

import contextlib
import os
import sys
import types

import npu_stub
import pytest
import torch

from pycls.core import amp as amp_lib
from pycls.core.config import cfg
from pycls.core.errors import PyclsError

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def no_apex(monkeypatch):
    """Gives each test no apex."""
    monkeypatch.setitem(sys.modules, "apex", None)


def set_amp(opt_level="O1", dtype="auto", loss_scale="dynamic", backend="auto"):
    """Sets the cfg.AMP keys."""
    cfg.AMP.OPT_LEVEL, cfg.AMP.DTYPE = opt_level, dtype
    cfg.AMP.LOSS_SCALE, cfg.AMP.BACKEND = loss_scale, backend


def tiny_problem(seed=0):
    """Returns a tiny model, its SGD optimizer and a batch it can fit."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    inputs = torch.randn(32, 8)
    labels = (inputs @ torch.randn(8, 3)).argmax(dim=1)
    return model, optimizer, inputs, labels


def train_step(amp, model, optimizer, inputs, labels, grad_clip=0.0):
    """Runs one training step through amp; returns the loss tensor."""
    optimizer.zero_grad(set_to_none=True)
    with amp.autocast():
        loss = torch.nn.functional.cross_entropy(model(inputs), labels)
    amp.backward_step(loss, optimizer, model, grad_clip)
    return loss


def weights(model):
    """Returns a copy of the model's parameters."""
    return [p.detach().clone() for p in model.parameters()]


def test_o0_is_float32():
    set_amp("O0")
    amp = amp_lib.Amp(CPU)
    with amp.autocast():
        out = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert out.dtype == torch.float32
    assert (amp.backend, amp.dtype) == ("off", torch.float32)
    assert "off" in amp.describe()


def native_bf16(monkeypatch, has_it):
    """Stubs the CPU's native bfloat16 check."""
    monkeypatch.setattr(amp_lib.dev, "cpu_has_native_bf16", lambda: has_it)


@pytest.mark.parametrize("level", ["O1", "O2"])
def test_cpu_autocasts_to_bfloat16(level, monkeypatch):
    native_bf16(monkeypatch, True)
    set_amp(level)
    amp = amp_lib.Amp(CPU)
    with amp.autocast():
        out = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16
    assert amp.backend == "native" and amp._scaler is None
    assert "bfloat16" in amp.describe() and "no loss scaling" in amp.describe()


@pytest.mark.parametrize("level", ["O1", "O2"])
def test_cpu_without_native_bf16_stays_float32(level, monkeypatch):
    # Emulated bf16 runs EN-B3's step at about half the float32 speed
    native_bf16(monkeypatch, False)
    set_amp(level, "auto", "128")
    amp = amp_lib.Amp(CPU)
    with amp.autocast():
        out = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert out.dtype == torch.float32
    assert (amp.backend, amp.dtype, amp._scaler) == ("off", torch.float32, None)
    text = amp.describe()
    assert "\n" not in text and "no native bf16" in text and "AMP.DTYPE bfloat16" in text
    assert level in text


def test_cpu_bfloat16_can_be_forced_without_native_bf16(monkeypatch):
    native_bf16(monkeypatch, False)
    set_amp("O2", "bfloat16")
    amp = amp_lib.Amp(CPU)
    with amp.autocast():
        out = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16 and amp.backend == "native"


def test_accelerator_auto_is_float16_whatever_the_cpu(monkeypatch):
    native_bf16(monkeypatch, False)
    monkeypatch.setattr(amp_lib.dev, "has_accelerator", lambda device: True)
    set_amp("O1")
    assert amp_lib._dtype(CPU) == torch.float16


def test_native_bf16_check_asks_the_cpu_not_mkldnn(monkeypatch):
    # mkldnn says yes on CPUs that only emulate bf16, so it must not decide
    from pycls.core import device as dev

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    for avx512, amx in [(False, False), (True, False), (False, True)]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert dev.cpu_has_native_bf16() == (avx512 or amx)


def test_o2_describes_difference_from_apex(monkeypatch):
    native_bf16(monkeypatch, True)
    set_amp("O2")
    assert "fp32 weights" in amp_lib.Amp(CPU).describe()


@pytest.mark.parametrize(
    "level,dtype,loss_scale",
    [
        ("O0", "auto", "dynamic"),
        ("O1", "auto", "dynamic"),
        ("O2", "auto", "128"),
        ("O1", "float16", "dynamic"),
        ("O2", "float16", "128"),
    ],
)
def test_training_reduces_loss(level, dtype, loss_scale):
    set_amp(level, dtype, loss_scale)
    amp = amp_lib.Amp(CPU)
    model, optimizer, inputs, labels = tiny_problem()
    model, optimizer = amp.prepare(model, optimizer)
    losses = [train_step(amp, model, optimizer, inputs, labels).item() for _ in range(30)]
    assert losses[-1] < 0.7 * losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())


def inf_step(amp, model, optimizer, inputs, labels):
    """Runs one step whose loss, and so every gradient, is infinite."""
    optimizer.zero_grad(set_to_none=True)
    with amp.autocast():
        loss = torch.nn.functional.cross_entropy(model(inputs), labels) * float("inf")
    amp.backward_step(loss, optimizer, model, 0.0)


def test_static_scale_skips_non_finite_step():
    set_amp("O1", "float16", "128")
    amp = amp_lib.Amp(CPU)
    model, optimizer, inputs, labels = tiny_problem()
    before = weights(model)
    inf_step(amp, model, optimizer, inputs, labels)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(model)))
    assert amp.skipped_steps == 1
    assert amp._scaler.get_scale() == 128.0
    train_step(amp, model, optimizer, inputs, labels)
    assert not all(torch.equal(a, b) for a, b in zip(before, weights(model)))
    assert amp.skipped_steps == 1
    assert amp._scaler.get_scale() == 128.0
    assert "static 128 loss scale" in amp.describe()


def test_static_scale_multiplies_loss(monkeypatch):
    set_amp("O1", "float16", "128")
    amp = amp_lib.Amp(CPU)
    model, optimizer, inputs, labels = tiny_problem()
    with amp.autocast():
        loss = torch.nn.functional.cross_entropy(model(inputs), labels)
    expected = torch.autograd.grad(loss, model[0].bias)[0]
    seen, scale = [], amp._scaler.scale

    def record_scale(loss):
        seen.append((loss.detach(), scale(loss).detach()))
        return scale(loss)

    monkeypatch.setattr(amp._scaler, "scale", record_scale)
    monkeypatch.setattr(optimizer, "step", lambda: seen.append(model[0].bias.grad.clone()))
    train_step(amp, model, optimizer, inputs, labels)
    # backward runs on loss * 128; the step sees the gradients unscaled by 1 / 128
    loss, scaled = seen[0]
    assert scaled == loss * 128
    torch.testing.assert_close(seen[1], expected, rtol=1e-2, atol=1e-4)


def test_dynamic_scale_backs_off():
    set_amp("O1", "float16", "dynamic")
    amp = amp_lib.Amp(CPU)
    model, optimizer, inputs, labels = tiny_problem()
    inf_step(amp, model, optimizer, inputs, labels)
    assert amp._scaler.get_scale() == 2.0**15
    assert amp.skipped_steps == 1


def test_grad_clip():
    set_amp("O0")
    amp = amp_lib.Amp(CPU)
    model, optimizer, inputs, labels = tiny_problem()
    train_step(amp, model, optimizer, inputs, labels, grad_clip=0.01)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert norm <= 0.01 * 1.001


def test_state_dict_round_trip(tmp_path):
    set_amp("O1", "float16", "dynamic")
    amp = amp_lib.Amp(CPU)
    model, optimizer, inputs, labels = tiny_problem()
    inf_step(amp, model, optimizer, inputs, labels)
    inf_step(amp, model, optimizer, inputs, labels)
    train_step(amp, model, optimizer, inputs, labels)
    torch.save(amp.state_dict(), tmp_path / "amp.pyth")
    state = torch.load(tmp_path / "amp.pyth", weights_only=True)
    resumed = amp_lib.Amp(CPU)
    resumed.load_state_dict(state)
    assert resumed._scaler.get_scale() == amp._scaler.get_scale() == 2.0**14
    assert resumed.skipped_steps == 2
    inf_step(resumed, model, optimizer, inputs, labels)
    assert resumed.skipped_steps == 3


def test_state_of_another_mode_is_ignored():
    set_amp("O1", "float16", "dynamic")
    amp = amp_lib.Amp(CPU)
    inf_step(amp, *tiny_problem())
    set_amp("O1", "float16", "128")
    static = amp_lib.Amp(CPU)
    static.load_state_dict(amp.state_dict())
    static.load_state_dict(None)
    assert static.skipped_steps == 0
    train_step(static, *tiny_problem())
    assert static._scaler.get_scale() == 128.0


def test_apex_backend_without_apex():
    set_amp("O1", backend="apex")
    with pytest.raises(PyclsError, match="AMP.BACKEND is apex.*install NVIDIA apex"):
        amp_lib.Amp(CPU)


def fake_apex(monkeypatch, with_initialize=True):
    """Puts a fake apex package (recording amp.initialize calls) into sys.modules."""
    amp = types.ModuleType("apex.amp")
    amp.calls = []
    if with_initialize:

        def initialize(model, optimizer=None, opt_level="O1", loss_scale=None, combine_grad=False):
            amp.calls.append((opt_level, loss_scale, combine_grad))
            return model if optimizer is None else (model, optimizer)

        amp.initialize = initialize
        amp.scale_loss = contextlib.contextmanager(lambda loss, opt: (yield loss * 8))
        amp.master_params = lambda opt: [p for g in opt.param_groups for p in g["params"]]
        amp.state_dict = lambda: {"loss_scaler0": {"loss_scale": 8.0}}
        amp.load_state_dict = lambda d: amp.calls.append(("load", d))
    apex = types.ModuleType("apex")
    apex.amp = amp
    monkeypatch.setitem(sys.modules, "apex", apex)
    return amp


def test_apex_without_initialize_is_absent(monkeypatch):
    # The PyPI package named apex is a web toolkit: it must not be taken for NVIDIA's
    npu_stub.install(monkeypatch)
    fake_apex(monkeypatch, with_initialize=False)
    set_amp("O2")
    assert amp_lib.choose_backend(torch.device("npu:0")) == "native"
    set_amp("O2", backend="apex")
    with pytest.raises(PyclsError, match="no amp.initialize"):
        amp_lib.choose_backend(torch.device("npu:0"))


def test_apex_package_without_amp_is_absent(monkeypatch):
    npu_stub.install(monkeypatch)
    monkeypatch.setitem(sys.modules, "apex", types.ModuleType("apex"))
    set_amp("O1")
    assert amp_lib.choose_backend(torch.device("npu:0")) == "native"


def test_auto_uses_apex_on_npu(monkeypatch):
    npu_stub.install(monkeypatch)
    apex_amp = fake_apex(monkeypatch)
    set_amp("O2", loss_scale="128")
    amp = amp_lib.Amp(torch.device("npu:0"))
    assert amp.backend == "apex"
    model, optimizer, inputs, labels = tiny_problem()
    assert amp.prepare(model, optimizer) == (model, optimizer)
    assert apex_amp.calls == [("O2", 128.0, True)]
    assert amp.prepare(model, None) == (model, None)
    assert isinstance(amp.autocast(), contextlib.nullcontext)
    before = weights(model)
    train_step(amp, model, optimizer, inputs, labels, grad_clip=1.0)
    assert not all(torch.equal(a, b) for a, b in zip(before, weights(model)))
    assert amp.state_dict()["apex"] == {"loss_scaler0": {"loss_scale": 8.0}}
    assert "apex O2" in amp.describe()


def test_apex_not_used_on_cpu(monkeypatch):
    fake_apex(monkeypatch)
    set_amp("O1")
    assert amp_lib.Amp(CPU).backend == "native"
    set_amp("O1", backend="apex")
    with pytest.raises(PyclsError, match="needs a cuda or npu device"):
        amp_lib.Amp(CPU)


def test_native_choice_on_npu(monkeypatch):
    npu_stub.install(monkeypatch)
    set_amp("O1", loss_scale="128")
    amp = amp_lib.Amp(torch.device("npu:0"))
    assert (amp.backend, amp.device_type, amp.dtype) == ("native", "npu", torch.float16)
    assert amp._scaler is not None
    assert "autocast npu float16" in amp.describe()
    set_amp("O1", dtype="bfloat16")
    assert amp_lib.Amp(torch.device("npu:0"))._scaler is None


@pytest.mark.parametrize("has_it,expected", [(True, "bf16"), (False, "off")])
def test_benchmark_amp_auto_makes_the_trainers_choice(has_it, expected, monkeypatch):
    import importlib.util

    from conftest import REPO

    path = os.path.join(REPO, "benchmarks", "train_throughput.py")
    spec = importlib.util.spec_from_file_location("train_throughput", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    native_bf16(monkeypatch, has_it)
    args = bench.parse_args(["--amp", "auto"])
    choice, why = bench.resolve_amp(args, CPU)
    assert choice == expected and ("no native bf16" in why) == (not has_it)
