"""Model and loss construction: registries keyed by MODEL.TYPE and MODEL.LOSS_FUN."""

import pycls.core.optimizer as optimizer
import pycls.models.blocks as blocks
from pycls.core.config import cfg
from pycls.core.errors import PyclsError
from pycls.core.net import SoftCrossEntropyLoss
from pycls.models.anynet import AnyNet
from pycls.models.effnet import EffNet
from pycls.models.regnet import RegNet
from pycls.models.resnet import ResNet

_models = {"anynet": AnyNet, "effnet": EffNet, "resnet": ResNet, "regnet": RegNet}

_loss_funs = {"cross_entropy": SoftCrossEntropyLoss}


def get_model():
    """Returns the model class named by MODEL.TYPE."""
    if cfg.MODEL.TYPE not in _models:
        msg = "MODEL.TYPE {!r} is not a known model; choose one of {}"
        raise PyclsError(msg.format(cfg.MODEL.TYPE, ", ".join(sorted(_models))))
    return _models[cfg.MODEL.TYPE]


def get_loss_fun():
    """Returns the loss class named by MODEL.LOSS_FUN."""
    if cfg.MODEL.LOSS_FUN not in _loss_funs:
        msg = "MODEL.LOSS_FUN {!r} is not a known loss; choose one of {}"
        raise PyclsError(msg.format(cfg.MODEL.LOSS_FUN, ", ".join(sorted(_loss_funs))))
    return _loss_funs[cfg.MODEL.LOSS_FUN]


def check_cfg_names():
    """Checks the registry names in cfg (model, loss, activation, optimizer, LR policy)."""
    get_model()
    get_loss_fun()
    blocks.get_activation(cfg.MODEL.ACTIVATION_FUN)
    optimizer.check_optimizer()
    optimizer.get_lr_fun()


def build_model():
    """Builds the model named by MODEL.TYPE from cfg (on the CPU, in fp32)."""
    return get_model()()


def build_loss_fun():
    """Builds the loss function (takes predictions and one-hot or soft labels)."""
    return get_loss_fun()()


def register_model(name, ctor):
    """Registers a model class under a MODEL.TYPE name."""
    _models[name] = ctor


def register_loss_fun(name, ctor):
    """Registers a loss class under a MODEL.LOSS_FUN name."""
    _loss_funs[name] = ctor
