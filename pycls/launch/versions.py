"""The oldest torch and torchvision the code runs on, checked without importing torch: the
floor of torch.amp.GradScaler(device) (torch 2.3) and the torchvision of that torch (0.18)."""

import contextlib
import importlib.metadata
import re
import sys

MIN_VERSIONS = {"torch": (2, 3), "torchvision": (0, 18)}

FIX = "pip install -r requirements.txt (or a CANN release's torch and torch_npu >= 2.3 on Ascend)"


def installed_version(name):
    """Returns a package's version: the imported module's, else its metadata's, or None."""
    version = getattr(sys.modules.get(name), "__version__", None)
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return version if isinstance(version, str) else importlib.metadata.version(name)


def version_tuple(version):
    """Turns '2.3.1+cpu' or '2.4.0a0+git1' into (2, 3, 1) / (2, 4, 0)."""
    match = re.match(r"\s*(\d+(?:\.\d+)*)", version)
    return tuple(int(p) for p in match.group(1).split(".")) if match else ()


def check_versions():
    """Returns None when torch and torchvision are new enough (or absent), else the error text."""
    found = {name: installed_version(name) for name in MIN_VERSIONS}
    if all(v is None or version_tuple(v) >= MIN_VERSIONS[n] for n, v in found.items()):
        return None
    have = ", ".join("{} {}".format(n, v or "(not installed)") for n, v in found.items())
    need = ", ".join("{} >= {}".format(n, ".".join(map(str, v))) for n, v in MIN_VERSIONS.items())
    return "this code needs {}; found {}: {}".format(need, have, FIX)
