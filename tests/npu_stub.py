"""A stand-in npu device for tests on machines without Ascend hardware or torch_npu.

PyTorch's PrivateUse1 backend is renamed "npu" (once per process: the rename cannot be
undone or repeated with another name), so torch.device("npu:3") parses. A stub torch_npu
module goes into sys.modules and a stub torch.npu module onto torch, both through pytest's
monkeypatch so they are gone after each test. No op ever runs on the fake device.
"""

import sys
import types

import torch


class NpuModule(types.ModuleType):
    """A torch.npu stand-in that records the calls made to it."""

    def __init__(self, available=True, count=8):
        super().__init__("torch.npu")
        self.available, self.count, self.calls = available, count, []

    def _record(self, name, *args):
        """Appends (name, args) to the call log."""
        self.calls.append((name,) + args)

    def is_available(self):
        """Says whether the fake device is present."""
        self._record("is_available")
        return self.available

    def device_count(self):
        """Returns the number of fake devices."""
        self._record("device_count")
        return self.count if self.available else 0

    def set_device(self, device):
        """Records the device made current."""
        self._record("set_device", torch.device(device))

    def synchronize(self, device=None):
        """Records a synchronize call."""
        self._record("synchronize", device)

    def max_memory_allocated(self, device=None):
        """Returns 3 MiB as the peak allocation."""
        self._record("max_memory_allocated", device)
        return 3 * 1024**2

    def reset_peak_memory_stats(self, device=None):
        """Records a peak memory reset."""
        self._record("reset_peak_memory_stats", device)

    def manual_seed_all(self, seed):
        """Records the seed torch.manual_seed passes on to the device."""
        self._record("manual_seed_all", seed)

    def _is_in_bad_fork(self):
        """Says the process is no bad fork (torch.manual_seed asks)."""
        return False


def rename_privateuse1():
    """Names PyTorch's PrivateUse1 backend "npu" (idempotent within a process).

    The rename outlives the test, and torch then expects a torch.npu module (torch.load,
    RNG forks and pin_memory look it up), so an absent device's module stays registered.
    """
    if torch._C._get_privateuse1_backend_name() != "npu":
        torch.utils.rename_privateuse1_backend("npu")
    if getattr(torch, "npu", None) is None:
        torch._register_device_module("npu", NpuModule(available=False, count=0))


def install(monkeypatch, available=True, count=8):
    """Installs stub torch_npu and torch.npu for one test; returns the torch.npu stub."""
    rename_privateuse1()
    npu = NpuModule(available, count)
    torch_npu = types.ModuleType("torch_npu")
    torch_npu.npu = npu
    monkeypatch.setitem(sys.modules, "torch_npu", torch_npu)
    monkeypatch.setattr(torch, "npu", npu, raising=False)
    return npu


def uninstall(monkeypatch):
    """Makes `import torch_npu` fail as if it were not installed, for one test."""
    monkeypatch.setitem(sys.modules, "torch_npu", None)
    monkeypatch.setattr(torch, "npu", NpuModule(available=False, count=0), raising=False)


class _BrokenFinder:
    """A meta path finder whose torch_npu import fails as without the CANN environment."""

    def find_spec(self, name, path=None, target=None):
        """Claims torch_npu and fails to load it."""
        if name == "torch_npu":
            raise ImportError("libhccl.so: cannot open shared object file: No such file")
        return None


def install_broken(monkeypatch):
    """Makes `import torch_npu` fail with a missing CANN library, for one test."""
    monkeypatch.delitem(sys.modules, "torch_npu", raising=False)
    monkeypatch.setattr(torch, "npu", NpuModule(available=False, count=0), raising=False)
    monkeypatch.setattr(sys, "meta_path", [_BrokenFinder()] + sys.meta_path)
