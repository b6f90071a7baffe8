"""Model zoo: pycls's named models, built from the configs in this repository.

Nothing is ever downloaded: pretrained weights load from a local .pyth file (for
example a pycls model-zoo checkpoint fetched by hand)."""

import difflib
import os

import pycls.core.builders as builders
from pycls.core.config import load_cfg
from pycls.core.errors import PyclsError

# The configs/ folder of this repository (next to the pycls package)
_REPO_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_CONFIGS_DIR = os.path.join(_REPO_DIR, "configs")

# RegNet sizes in the model zoo (for both RegNetX and RegNetY)
_REGNET_SIZES = "200MF 400MF 600MF 800MF 1.6GF 3.2GF 4.0GF 6.4GF 8.0GF 12GF 16GF 32GF".split()


def _zoo():
    """Returns {model name: config path relative to configs/dds_baselines}."""
    zoo = {}
    for x in ("X", "Y"):
        for size in _REGNET_SIZES:
            zoo["RegNet{}-{}".format(x, size)] = "regnet{}/RegNet{}-{}".format(x.lower(), x, size)
    for depth in (50, 101, 152):
        zoo["ResNet-{}".format(depth)] = "resnet/R-{}-1x64d".format(depth)
    for depth in (50, 101, 152):
        zoo["ResNeXt-{}".format(depth)] = "resnext/X-{}-32x4d".format(depth)
    for b in range(6):
        zoo["EfficientNet-B{}".format(b)] = "effnet/EN-B{}".format(b)
    return {name: stem + "_dds_8gpu.yaml" for name, stem in zoo.items()}


# Model name -> config file under configs/dds_baselines (the names of pycls's model zoo)
_MODEL_ZOO = _zoo()


def list_models():
    """Returns the names of all models in the model zoo."""
    return list(_MODEL_ZOO)


def _check_name(name):
    """Raises a PyclsError naming close matches if name is not in the model zoo."""
    if name in _MODEL_ZOO:
        return name
    close = difflib.get_close_matches(str(name), list(_MODEL_ZOO), n=3, cutoff=0.5)
    hint = "did you mean {}?".format(", ".join(close)) if close else "see list_models()"
    raise PyclsError("model {!r} is not in the model zoo; {}".format(name, hint))


def get_config_file(name):
    """Returns the path of the config file of a model-zoo model."""
    path = os.path.join(_CONFIGS_DIR, "dds_baselines", _MODEL_ZOO[_check_name(name)])
    if not os.path.isfile(path):
        raise PyclsError("config {} of model {} is missing; restore configs/".format(path, name))
    return path


def _load_weights(path, model):
    """Loads weights through pycls.core.checkpoint (imported only when needed)."""
    if not os.path.isfile(path):
        raise PyclsError("weights file {} does not exist; check the path".format(path))
    import pycls.core.checkpoint as checkpoint

    checkpoint.load_weights(path, model)


def build_model(name, pretrained_path=None, cfg_list=()):
    """Builds a model-zoo model (note: resets and loads the global cfg as well);
    loads weights from the local file pretrained_path when given."""
    config_file = get_config_file(name)
    load_cfg(config_file, cfg_list)
    model = builders.build_model()
    if pretrained_path:
        _load_weights(pretrained_path, model)
    return model


def _family(prefix):
    """Returns a builder of the models named prefix + name (pycls's regnetx, resnet, ...)."""

    def build(name, pretrained_path=None, cfg_list=()):
        name = name if prefix in name else prefix + name
        return build_model(name, pretrained_path, cfg_list)

    build.__doc__ = "Builds the model-zoo model {}NAME (see build_model).".format(prefix)
    return build


regnetx, regnety = _family("RegNetX-"), _family("RegNetY-")
resnet, resnext, effnet = _family("ResNet-"), _family("ResNeXt-"), _family("EfficientNet-")
