"""Tests of pycls.core.device: device choice, errors, and the per-device helpers."""

import sys

import npu_stub
import pytest
import torch

from pycls.core import device
from pycls.core.config import cfg
from pycls.core.errors import PyclsError


@pytest.fixture
def no_cuda(monkeypatch):
    """Hides any CUDA device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretends there are 4 CUDA devices; returns the list of set_device calls."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(torch.device(d)))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    return calls


def test_auto_picks_npu_first(monkeypatch, fake_cuda):
    npu_stub.install(monkeypatch)
    assert device.resolve("auto") == "npu"


def test_auto_picks_cuda_without_npu(monkeypatch, fake_cuda):
    npu_stub.uninstall(monkeypatch)
    assert device.resolve("auto") == "cuda"


def test_auto_skips_npu_without_device(monkeypatch, fake_cuda):
    npu_stub.install(monkeypatch, available=False)
    assert device.resolve("auto") == "cuda"


def test_auto_falls_back_to_cpu(monkeypatch, no_cuda):
    npu_stub.uninstall(monkeypatch)
    assert device.resolve("auto") == "cpu"
    assert device.resolve() == "cpu"


def test_names(monkeypatch, fake_cuda):
    npu_stub.install(monkeypatch)
    assert device.resolve("cpu") == "cpu"
    assert device.resolve("gpu") == "cuda"
    assert device.resolve("NPU") == "npu"


def test_unknown_name():
    with pytest.raises(PyclsError, match="auto\\|cpu\\|gpu\\|npu"):
        device.resolve("tpu")


def test_npu_missing(monkeypatch):
    npu_stub.uninstall(monkeypatch)
    with pytest.raises(PyclsError, match="torch_npu is not installed: install the torch_npu wheel"):
        device.resolve("npu")


def test_npu_without_device(monkeypatch):
    npu_stub.install(monkeypatch, available=False)
    with pytest.raises(PyclsError, match="no NPU device: source /usr/local/Ascend/ascend-toolkit"):
        device.resolve("npu")


def test_npu_without_cann(monkeypatch):
    npu_stub.install_broken(monkeypatch)
    with pytest.raises(PyclsError, match="libhccl.so.*set_env.sh"):
        device.resolve("npu")
    assert device.resolve("cpu") == "cpu"


def test_gpu_without_cuda(no_cuda):
    with pytest.raises(PyclsError, match="CUDA is not available"):
        device.resolve("gpu")


def test_setup_npu(monkeypatch):
    npu = npu_stub.install(monkeypatch)
    dev = device.setup("npu", local_rank=3)
    assert dev == torch.device("npu", 3)
    assert str(dev) == "npu:3"
    assert ("set_device", torch.device("npu:3")) in npu.calls


def test_setup_npu_rank_beyond_devices(monkeypatch):
    npu_stub.install(monkeypatch, count=2)
    with pytest.raises(PyclsError, match="local rank 2 has no npu device: 2 visible"):
        device.setup("npu", local_rank=2)


def test_setup_cuda_sets_device_and_benchmark(fake_cuda):
    cfg.CUDNN.BENCHMARK = True
    assert device.setup("gpu", local_rank=1) == torch.device("cuda:1")
    assert fake_cuda == [torch.device("cuda:1")]
    assert torch.backends.cudnn.benchmark is True


def test_setup_deterministic(monkeypatch, fake_cuda):
    calls = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cfg.DETERMINISTIC = True
    device.setup("gpu", 0)
    assert calls == [(True,)]
    assert torch.backends.cudnn.benchmark is False
    assert torch.backends.cudnn.deterministic is True


def test_setup_cpu(no_cuda):
    assert device.setup("auto", local_rank=5) == torch.device("cpu")


def test_npu_helpers(monkeypatch):
    npu = npu_stub.install(monkeypatch)
    dev = torch.device("npu:3")
    assert device.dist_backend(dev) == "hccl"
    assert device.autocast_device_type(dev) == "npu"
    assert device.has_accelerator(dev)
    assert device.max_memory_mb(dev) == 3.0
    device.synchronize(dev)
    device.reset_peak_memory(dev)
    assert ("synchronize", dev) in npu.calls
    assert ("reset_peak_memory_stats", dev) in npu.calls


def test_cpu_helpers():
    cpu = torch.device("cpu")
    assert device.dist_backend(cpu) == "gloo"
    assert device.dist_backend("cuda:1") == "nccl"
    assert device.autocast_device_type(cpu) == "cpu"
    assert not device.has_accelerator(cpu)
    device.synchronize(cpu)
    device.reset_peak_memory(cpu)
    # Peak RSS in MB: torch alone takes tens of MB; KB or bytes would read far larger
    assert 10 < device.max_memory_mb(cpu) < 1024**2


def test_device_type_reads_devices_and_names():
    names = ["gpu", "cuda:1", "npu", "npu:3", "cpu", torch.device("cuda", 2)]
    assert [device.device_type(d) for d in names] == ["cuda", "cuda", "npu", "npu", "cpu", "cuda"]
    assert [device.has_accelerator(d) for d in ("gpu", "npu:0", "cpu")] == [True, True, False]


def test_pinning_needs_the_config_key_and_an_accelerator(monkeypatch, no_cuda):
    assert device.pin_memory("npu") and device.pin_memory(torch.device("cuda"))
    assert not device.pin_memory("cpu") and not device.pin_memory(torch.device("cpu"))
    npu_stub.uninstall(monkeypatch)
    assert not device.pin_memory()
    npu_stub.install(monkeypatch)  # torch_npu loaded, an npu seen: batches may go there
    assert device.pin_memory()
    cfg.DATA_LOADER.PIN_MEMORY = False
    assert not device.pin_memory() and not device.pin_memory("cuda:0")


def test_stub_is_gone_after_tests():
    # monkeypatch undid the stubs of the tests above: later test files see no npu device
    npu = getattr(torch, "npu", None)
    assert npu is None or not npu.is_available()
    assert not isinstance(getattr(sys.modules.get("torch_npu"), "npu", None), npu_stub.NpuModule)
