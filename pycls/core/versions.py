"""The oldest torch and torchvision the code runs on, and the check every CLI runs first.

The floor comes from the APIs used: torch.amp.GradScaler(device) (torch 2.3) and
torchvision.transforms.v2 with v2.ToImage (torchvision 0.16; 0.18 is the release of torch
2.3). The check reads the installed versions from the package metadata (or from the module
where it is already imported) without importing torch, so an old stack ends in one line
instead of an ImportError traceback from deep inside an import.
"""

import importlib.metadata
import re
import sys

# Oldest supported versions (as tuples of the leading numbers)
MIN_VERSIONS = {"torch": (2, 3), "torchvision": (0, 18)}

# What to run to get a supported stack
FIX = "pip install -r requirements.txt (or a CANN release's torch and torch_npu >= 2.3 on Ascend)"


def installed_version(name):
    """Returns a package's version string: the imported module's, else the metadata's, or None."""
    module = sys.modules.get(name)
    version = getattr(module, "__version__", None) if module is not None else None
    if isinstance(version, str):
        return version
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def version_tuple(version):
    """Turns '2.3.1+cpu' or '2.4.0a0+git1' into (2, 3, 1) / (2, 4, 0)."""
    match = re.match(r"^\s*(\d+(?:\.\d+)*)", version)
    return tuple(int(p) for p in match.group(1).split(".")) if match else ()


def _text(numbers):
    """Formats a version tuple as 2.3."""
    return ".".join(str(n) for n in numbers)


def check_versions():
    """Returns None when torch and torchvision are new enough (or absent), else the error text."""
    found = {name: installed_version(name) for name in MIN_VERSIONS}
    old = [
        name
        for name, version in found.items()
        if version is not None and version_tuple(version) < MIN_VERSIONS[name]
    ]
    if not old:
        return None
    have = ", ".join("{} {}".format(n, found[n] or "(not installed)") for n in MIN_VERSIONS)
    need = ", ".join("{} >= {}".format(n, _text(v)) for n, v in MIN_VERSIONS.items())
    return "this code needs {}; found {}: {}".format(need, have, FIX)
