"""Optimizer (SGD / Adam / AdamW with per-type weight decay) and LR policies (as pycls)."""

import math

import torch

import pycls.core.device as devices
from pycls.core.config import cfg
from pycls.core.errors import PyclsError

# Layers whose weights and biases take BN.CUSTOM_WEIGHT_DECAY
_NORM_LAYERS = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)


def _split_params(model):
    """Splits the trainable parameters into norm-layer, bias and other lists (module order)."""
    groups, seen = ([], [], []), set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if param.requires_grad and id(param) not in seen:
                seen.add(id(param))
                kind = 0 if isinstance(module, _NORM_LAYERS) else 1 if name == "bias" else 2
                groups[kind].append(param)
    return groups


def get_param_groups(model):
    """Returns the parameter groups with their weight decays (empty groups left out)."""
    wd = cfg.OPTIM.WEIGHT_DECAY
    bn_wd = cfg.BN.CUSTOM_WEIGHT_DECAY if cfg.BN.USE_CUSTOM_WEIGHT_DECAY else wd
    bias_wd = cfg.OPTIM.BIAS_CUSTOM_WEIGHT_DECAY if cfg.OPTIM.BIAS_USE_CUSTOM_WEIGHT_DECAY else wd
    groups = zip(_split_params(model), [bn_wd, bias_wd, wd])
    return [{"params": p, "weight_decay": w} for p, w in groups if p]


def _device_type(model, device):
    """Returns the type of the device the optimizer steps on (the model's unless given)."""
    if device is None:
        device = next((p.device for p in model.parameters()), "cpu")
    return devices.device_type(device)


def _npu_fused_sgd():
    """Returns torch_npu's fused SGD class, or None when torch_npu does not provide it."""
    try:
        from torch_npu.optim import NpuFusedSGD
    except ImportError:
        return None
    return NpuFusedSGD


def _init_momentum_buffers(optimizer):
    """Gives a fused SGD zeroed momentum buffers: it makes them with empty_like in its first
    step, and when GradScaler skips that step (an fp16 overflow) the next one reads garbage.
    Zeros give the first step's buffer exactly (buffer = grad: dampening is 0 where fused)."""
    for group in optimizer.param_groups:
        if group.get("fused") and group["momentum"] != 0:
            for param in group["params"]:
                optimizer.state[param].setdefault("momentum_buffer", torch.zeros_like(param))
    return optimizer


def _build(optimizer_cls, groups, args, device_type):
    """Builds the optimizer with the fastest step: fused SGD on cpu and cuda (without
    dampening), else foreach on accelerators and the for-loop on the cpu."""
    # EN-B3 (340 tensors), one thread: fused SGD 11.6 ms/step, for-loop 31.0, foreach 35.0
    # (benchmarks/README.md); foreach is no faster than the for-loop on the cpu
    fused = optimizer_cls is torch.optim.SGD and device_type in ("cpu", "cuda")
    fused = fused and not args.get("dampening")
    impl = {"fused": True, "foreach": False} if fused else {"foreach": device_type != "cpu"}
    try:
        return _init_momentum_buffers(optimizer_cls(groups, **args, **impl))
    except RuntimeError:
        if not fused or device_type != "cpu":  # torch before 2.4 has fused SGD on cuda only
            raise
        return optimizer_cls(groups, **args, foreach=False)


# Optimizers by name (OPTIM.OPTIMIZER)
_OPTIMIZERS = ("sgd", "adam", "adamw")


def check_optimizer():
    """Checks that OPTIM.OPTIMIZER names a known optimizer."""
    if cfg.OPTIM.OPTIMIZER not in _OPTIMIZERS:
        msg = "config key OPTIM.OPTIMIZER is {!r}; choose one of {}"
        raise PyclsError(msg.format(cfg.OPTIM.OPTIMIZER, ", ".join(_OPTIMIZERS)))


def construct_optimizer(model, device=None):
    """Constructs the optimizer of cfg.OPTIM for the model's parameters (on device)."""
    check_optimizer()
    optim, device_type = cfg.OPTIM, _device_type(model, device)
    groups = get_param_groups(model)
    args = {"lr": optim.BASE_LR, "weight_decay": optim.WEIGHT_DECAY}
    if optim.OPTIMIZER != "sgd":
        adam_cls = torch.optim.Adam if optim.OPTIMIZER == "adam" else torch.optim.AdamW
        return _build(adam_cls, groups, dict(args, betas=(optim.BETA1, optim.BETA2)), device_type)
    args.update(momentum=optim.MOMENTUM, dampening=optim.DAMPENING, nesterov=optim.NESTEROV)
    fused_sgd = _npu_fused_sgd() if device_type == "npu" else None
    if fused_sgd is not None:
        return fused_sgd(groups, **args)
    return _build(torch.optim.SGD, groups, args, device_type)


def lr_fun_steps(cur_epoch):
    """Steps schedule (cfg.OPTIM.LR_POLICY = 'steps')."""
    ind = [i for i, s in enumerate(cfg.OPTIM.STEPS) if cur_epoch >= s][-1]
    return cfg.OPTIM.LR_MULT**ind


def lr_fun_exp(cur_epoch):
    """Exponential schedule (cfg.OPTIM.LR_POLICY = 'exp')."""
    return cfg.OPTIM.MIN_LR ** (cur_epoch / cfg.OPTIM.MAX_EPOCH)


def lr_fun_cos(cur_epoch):
    """Cosine schedule (cfg.OPTIM.LR_POLICY = 'cos')."""
    lr = 0.5 * (1.0 + math.cos(math.pi * cur_epoch / cfg.OPTIM.MAX_EPOCH))
    return (1.0 - cfg.OPTIM.MIN_LR) * lr + cfg.OPTIM.MIN_LR


def lr_fun_lin(cur_epoch):
    """Linear schedule (cfg.OPTIM.LR_POLICY = 'lin')."""
    lr = 1.0 - cur_epoch / cfg.OPTIM.MAX_EPOCH
    return (1.0 - cfg.OPTIM.MIN_LR) * lr + cfg.OPTIM.MIN_LR


_LR_FUNS = {"steps": lr_fun_steps, "exp": lr_fun_exp, "cos": lr_fun_cos, "lin": lr_fun_lin}


def get_lr_fun():
    """Returns the LR multiplier function of cfg.OPTIM.LR_POLICY."""
    policy = cfg.OPTIM.LR_POLICY
    if policy not in _LR_FUNS:
        msg = "config key OPTIM.LR_POLICY is {!r}; choose one of {}"
        raise PyclsError(msg.format(policy, ", ".join(sorted(_LR_FUNS))))
    if policy == "exp" and cfg.OPTIM.MIN_LR <= 0:
        raise PyclsError("the exp LR policy needs OPTIM.MIN_LR above 0; set OPTIM.MIN_LR")
    if policy == "steps" and (not cfg.OPTIM.STEPS or cfg.OPTIM.STEPS[0] != 0):
        raise PyclsError("the steps LR policy needs OPTIM.STEPS starting at 0, like [0, 30, 60]")
    return _LR_FUNS[policy]


def get_epoch_lr(cur_epoch):
    """Returns the LR at cur_epoch (may be fractional), warm-up included."""
    lr = get_lr_fun()(cur_epoch) * cfg.OPTIM.BASE_LR
    if cur_epoch < cfg.OPTIM.WARMUP_EPOCHS:
        alpha = cur_epoch / cfg.OPTIM.WARMUP_EPOCHS
        lr *= cfg.OPTIM.WARMUP_FACTOR * (1.0 - alpha) + alpha
    return lr


def set_lr(optimizer, new_lr):
    """Sets the LR of every parameter group of the optimizer."""
    for param_group in optimizer.param_groups:
        param_group["lr"] = new_lr
