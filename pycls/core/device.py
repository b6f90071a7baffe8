"""Devices: the one place that knows cpu, cuda (--device gpu) and npu (Ascend, via torch_npu).
Everything else takes a ``torch.device``; the helpers here reach its torch module (torch.cuda,
torch.npu) through ``device.type``. torch_npu is imported only when an npu is asked for."""

import importlib
import os
import resource
import sys

import torch

from pycls.core.config import cfg
from pycls.core.errors import PyclsError

# Device names the CLI and cfg.DEVICE accept, mapped to torch device types
_NAMES = {"auto": "auto", "cpu": "cpu", "gpu": "cuda", "cuda": "cuda", "npu": "npu"}

# Process group backend of each device type
_DIST_BACKENDS = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}

_CANN_HINT = (
    "source /usr/local/Ascend/ascend-toolkit/set_env.sh (or run test/env_npu.sh) "
    "and check npu-smi info, or use --device cpu|gpu"
)


def _npu_error():
    """Imports torch_npu (which registers torch.npu); returns None when an npu is usable, else
    the reason it is not."""
    try:
        torch_npu = importlib.import_module("torch_npu")
    except ModuleNotFoundError as e:
        if e.name == "torch_npu":
            msg = "torch_npu is not installed: install the torch_npu wheel matching your torch "
            return msg + "and CANN (see README), or use --device cpu|gpu"
        return "torch_npu failed to import ({}): reinstall it or {}".format(e, _CANN_HINT)
    except (ImportError, OSError, RuntimeError) as e:
        return "torch_npu failed to import ({}): {}".format(e, _CANN_HINT)
    npu = getattr(torch, "npu", None) or getattr(torch_npu, "npu", None)
    try:
        found = npu is not None and npu.is_available() and npu.device_count() > 0
    except RuntimeError:
        found = False
    return None if found else "torch_npu found no NPU device: " + _CANN_HINT


def resolve(name="auto"):
    """Returns the device type for a device name: auto picks npu, then cuda, then cpu."""
    key = _NAMES.get(str(name).lower())
    if key is None:
        raise PyclsError("device {!r} is unknown: use --device auto|cpu|gpu|npu".format(name))
    if key == "auto":
        if _npu_error() is None:
            return "npu"
        return "cuda" if torch.cuda.is_available() else "cpu"
    error = _npu_error() if key == "npu" else None
    if key == "cuda" and not torch.cuda.is_available():
        built = "built for CUDA {}".format(torch.version.cuda) if torch.version.cuda else "CPU-only"
        msg = "--device gpu but CUDA is not available (torch {} is {}): install a CUDA build of "
        msg += "torch and check nvidia-smi, or use --device cpu|npu"
        error = msg.format(torch.__version__, built)
    if error:
        raise PyclsError(error)
    return key


def _module(device):
    """Returns the torch module of an accelerator device (torch.cuda, torch.npu)."""
    # Not torch.get_device_module: it caches the module, and tests swap torch.npu per test
    return getattr(torch, device_type(device))


def device_type(device):
    """Returns the type ("cpu", "cuda", "npu") of a torch.device, or of a device string such as
    "cuda:1", "npu" or the CLI's "gpu" (torch parses "npu" only once torch_npu is loaded)."""
    if isinstance(device, str):
        kind = device.split(":")[0].lower()
        return _NAMES.get(kind, kind)
    return device.type if hasattr(device, "type") else torch.device(device).type


def has_accelerator(device):
    """Tells whether a device is an accelerator (anything but the cpu)."""
    return device_type(device) != "cpu"


def pin_memory(device=None):
    """Tells whether a loader pins its batches: DATA_LOADER.PIN_MEMORY, and the batches go to
    an accelerator (device None: any this process sees), where pinning pays."""
    if not cfg.DATA_LOADER.PIN_MEMORY:
        return False
    if device is not None:
        return has_accelerator(device)
    # An npu counts only where torch_npu is loaded already: unlike resolve, this never imports it
    npu = getattr(torch, "npu", None)
    return torch.cuda.is_available() or bool(npu is not None and npu.is_available())


def setup(name="auto", local_rank=0):
    """Resolves a device name, makes the local_rank-th device current and returns it."""
    kind, device = resolve(name), torch.device("cpu")
    if kind != "cpu":
        count = _module(kind).device_count()
        if not 0 <= local_rank < count:
            msg = "local rank {} has no {} device: {} visible; start at most {} processes per node"
            raise PyclsError(msg.format(local_rank, kind, count, count))
        device = torch.device(kind, local_rank)
        _module(device).set_device(device)
    if kind == "cuda":
        torch.backends.cudnn.benchmark = cfg.CUDNN.BENCHMARK and not cfg.DETERMINISTIC
    if cfg.DETERMINISTIC:
        # warn_only: some accelerator kernels (e.g. cuda's adaptive pooling backward) have no
        # deterministic version; they warn instead of stopping the run. CPU runs repeat exactly
        torch.use_deterministic_algorithms(True, warn_only=True)
        if kind == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.deterministic = True
    return device


def synchronize(device):
    """Waits for the work queued on an accelerator (a no-op on the cpu)."""
    if has_accelerator(device):
        _module(device).synchronize(device)


def max_memory_mb(device):
    """Returns peak memory in MB: device max allocated, or the process peak RSS on the cpu."""
    if has_accelerator(device):
        return _module(device).max_memory_allocated(device) / 1024**2
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KB on Linux and in bytes on macOS
    return peak / 1024**2 if sys.platform == "darwin" else peak / 1024


def reset_peak_memory(device):
    """Resets the device peak memory counter (the cpu's peak RSS cannot be reset)."""
    if has_accelerator(device):
        _module(device).reset_peak_memory_stats(device)


def dist_backend(device):
    """Returns the process group backend of a device: gloo (cpu), nccl (cuda), hccl (npu)."""
    return _DIST_BACKENDS[device_type(device)]


# The device_type argument of torch.autocast and torch.amp.GradScaler
autocast_device_type = device_type


def memory_format(device):
    """Returns the activation memory format for cfg.MODEL.MEMORY_FORMAT on this device: auto is
    channels_last on cpu and cuda (faster convs, see benchmarks/README.md), contiguous on npu,
    whose kernels pick their own formats."""
    choice = cfg.MODEL.MEMORY_FORMAT
    if choice == "auto":
        choice = "contiguous" if device_type(device) == "npu" else "channels_last"
    return torch.channels_last if choice == "channels_last" else torch.contiguous_format


def cpu_has_native_bf16():
    """Tells whether the CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere bf16 is
    emulated and slower than float32 (mkldnn's own bf16 check answers True even then)."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
