"""Common model blocks: layer helpers, their complexity (cx) functions, SE and init."""

import math

import numpy as np
import torch
import torch.nn as nn

from pycls.core.config import cfg
from pycls.core.errors import PyclsError


class SiLU(nn.SiLU):
    """SiLU that works in place only where autograd does not record it.

    SiLU's backward needs its input, so under autograd in place makes autograd keep a copy of
    it and saves nothing; without autograd (eval, inference) it saves an allocation.
    """

    def forward(self, x):
        inplace = self.inplace and not (torch.is_grad_enabled() and x.requires_grad)
        return nn.functional.silu(x, inplace=inplace)


# Activation functions by name (MODEL.ACTIVATION_FUN)
_ACTIVATIONS = {"relu": nn.ReLU, "silu": SiLU, "swish": SiLU}

# Keys every model's params dict holds for its layers (see layer_params)
LAYER_KEYS = ("bn_eps", "bn_mom", "activation", "activation_inplace")


# ------------------------------- Layer parameters ---------------------------------- #


def layer_params():
    """Returns the layer settings (BN eps/momentum, activation) read from cfg."""
    return {
        "bn_eps": cfg.BN.EPS,
        "bn_mom": cfg.BN.MOM,
        "activation": cfg.MODEL.ACTIVATION_FUN,
        "activation_inplace": cfg.MODEL.ACTIVATION_INPLACE,
    }


def check_params(params, keys, model_name):
    """Raises a PyclsError if an explicit params dict lacks any of the given keys."""
    missing = [k for k in keys if k not in params]
    if missing:
        msg = "{} params dict lacks {}; start from {}.get_params() and edit it"
        raise PyclsError(msg.format(model_name, ", ".join(missing), model_name))
    return params


# ----------------------- Shortcuts for common torch.nn layers ----------------------- #


def _cpu_autocast():
    """Whether CPU autocast is on (torch < 2.4 has no device argument)."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:
        return torch.is_autocast_cpu_enabled()


class Conv2d(nn.Conv2d):
    """Conv2d with 'same' padding that never strides wider than its input.

    With 'same' padding and an odd kernel, a stride equal to the input width gives the same
    one-column output as a wider one. The narrower stride dodges a torch CPU bug: on AVX-512,
    the oneDNN bf16 backward-weights kernel (channels_last, as under CPU AMP) returns garbage
    weight gradients when the stride exceeds the input width, as EfficientNet's stage 6 meets
    at 16px images (see the float64 reference tests in tests/test_models.py).
    """

    def forward(self, x):
        dwise = self.groups > 1 and self.groups == self.in_channels
        if dwise and x.device.type == "cpu" and torch.is_grad_enabled() and _cpu_autocast():
            # oneDNN's bf16 depthwise backward is slower than its fp32 one: an EN-B3 train step
            # under CPU bf16 autocast ran at 0.94x fp32's, at 1.16x with these convs in fp32
            with torch.autocast("cpu", enabled=False):
                return self._forward(x.to(self.weight.dtype))
        return self._forward(x)

    def _forward(self, x):
        # Most convs have stride 1; a trace (ONNX export) keeps the stride: the bug is in
        # training's gradients only
        stride_w = self.stride[1]
        if stride_w == 1 or torch.jit.is_tracing() or stride_w <= x.shape[-1]:
            return self._conv_forward(x, self.weight, self.bias)
        stride = (self.stride[0], max(x.shape[-1], 1))
        f = nn.functional.conv2d
        return f(x, self.weight, self.bias, stride, self.padding, self.dilation, self.groups)


def conv2d(w_in, w_out, k, *, stride=1, groups=1, bias=False):
    """Builds a conv2d layer with 'same' padding for an odd kernel."""
    assert k % 2 == 1, "Only odd size kernels supported to avoid padding issues."
    return Conv2d(w_in, w_out, k, stride=stride, padding=(k - 1) // 2, groups=groups, bias=bias)


def norm2d(w_in, p):
    """Builds a BatchNorm2d layer with the eps and momentum of the params p."""
    return nn.BatchNorm2d(num_features=w_in, eps=p["bn_eps"], momentum=p["bn_mom"])


def pool2d(_w_in, k, *, stride=1):
    """Builds a max pool layer with 'same' padding for an odd kernel."""
    assert k % 2 == 1, "Only odd size kernels supported to avoid padding issues."
    return nn.MaxPool2d(k, stride=stride, padding=(k - 1) // 2)


def gap2d(_w_in):
    """Builds a global average pool layer."""
    return nn.AdaptiveAvgPool2d((1, 1))


def linear(w_in, w_out, *, bias=False):
    """Builds a linear layer."""
    return nn.Linear(w_in, w_out, bias=bias)


def get_activation(name):
    """Returns the activation class of a name (relu, silu or swish; MODEL.ACTIVATION_FUN)."""
    if str(name).lower() not in _ACTIVATIONS:
        msg = "activation {!r} is not supported; set MODEL.ACTIVATION_FUN to one of {}"
        raise PyclsError(msg.format(name, ", ".join(_ACTIVATIONS)))
    return _ACTIVATIONS[str(name).lower()]


def activation(p):
    """Builds the activation layer named by the params p (relu, silu or swish)."""
    return get_activation(p["activation"])(inplace=bool(p["activation_inplace"]))


# --------------------------- Complexity (cx) calculations --------------------------- #


def conv2d_cx(cx, w_in, w_out, k, *, stride=1, groups=1, bias=False):
    """Accumulates the complexity of conv2d into cx = (h, w, flops, params, acts)."""
    assert k % 2 == 1, "Only odd size kernels supported to avoid padding issues."
    h, w = (cx["h"] - 1) // stride + 1, (cx["w"] - 1) // stride + 1
    weights = k * k * w_in * w_out // groups
    flops = cx["flops"] + weights * h * w + (w_out if bias else 0)
    params = cx["params"] + weights + (w_out if bias else 0)
    acts = cx["acts"] + w_out * h * w
    return {"h": h, "w": w, "flops": flops, "params": params, "acts": acts}


def norm2d_cx(cx, w_in):
    """Accumulates the complexity of norm2d into cx = (h, w, flops, params, acts)."""
    return dict(cx, params=cx["params"] + 2 * w_in)


def pool2d_cx(cx, w_in, k, *, stride=1):
    """Accumulates the complexity of pool2d into cx = (h, w, flops, params, acts)."""
    assert k % 2 == 1, "Only odd size kernels supported to avoid padding issues."
    h, w = (cx["h"] - 1) // stride + 1, (cx["w"] - 1) // stride + 1
    return dict(cx, h=h, w=w, acts=cx["acts"] + w_in * h * w)


def gap2d_cx(cx, _w_in):
    """Accumulates the complexity of gap2d into cx = (h, w, flops, params, acts)."""
    return dict(cx, h=1, w=1)


def linear_cx(cx, w_in, w_out, *, bias=False):
    """Accumulates the complexity of linear into cx = (h, w, flops, params, acts)."""
    extra = w_out if bias else 0
    flops = cx["flops"] + w_in * w_out + extra
    params = cx["params"] + w_in * w_out + extra
    return dict(cx, flops=flops, params=params, acts=cx["acts"] + w_out)


# ---------------------------------- Shared blocks ----------------------------------- #


class SE(nn.Module):
    """Squeeze-and-Excitation (SE) block: AvgPool, FC, Act, FC, Sigmoid."""

    def __init__(self, w_in, w_se, p):
        super().__init__()
        self.avg_pool = gap2d(w_in)
        self.f_ex = nn.Sequential(
            conv2d(w_in, w_se, 1, bias=True),
            activation(p),
            conv2d(w_se, w_in, 1, bias=True),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return x * self.f_ex(self.avg_pool(x))

    @staticmethod
    def complexity(cx, w_in, w_se, _p=None):
        h, w = cx["h"], cx["w"]
        cx = gap2d_cx(cx, w_in)
        cx = conv2d_cx(cx, w_in, w_se, 1, bias=True)
        cx = conv2d_cx(cx, w_se, w_in, 1, bias=True)
        return dict(cx, h=h, w=w)


# ------------------------ Stems of AnyNet, ResNet and EffNet ------------------------ #


class SimpleStemIN(nn.Module):
    """Simple stem for ImageNet: 3x3 conv (stride 2), BN, AF."""

    stride = 2

    def __init__(self, w_in, w_out, p):
        super().__init__()
        self.conv = conv2d(w_in, w_out, 3, stride=self.stride)
        self.bn = norm2d(w_out, p)
        self.af = activation(p)

    def forward(self, x):
        return self.af(self.bn(self.conv(x)))

    @classmethod
    def complexity(cls, cx, w_in, w_out, _p=None):
        cx = conv2d_cx(cx, w_in, w_out, 3, stride=cls.stride)
        cx = norm2d_cx(cx, w_out)
        return cx


class ResStemCifar(SimpleStemIN):
    """ResNet stem for CIFAR: 3x3 conv (stride 1), BN, AF."""

    stride = 1


class ResStemIN(nn.Module):
    """ResNet stem for ImageNet: 7x7 conv (stride 2), BN, AF, 3x3 max pool (stride 2)."""

    def __init__(self, w_in, w_out, p):
        super().__init__()
        self.conv = conv2d(w_in, w_out, 7, stride=2)
        self.bn = norm2d(w_out, p)
        self.af = activation(p)
        self.pool = pool2d(w_out, 3, stride=2)

    def forward(self, x):
        return self.pool(self.af(self.bn(self.conv(x))))

    @staticmethod
    def complexity(cx, w_in, w_out, _p=None):
        cx = conv2d_cx(cx, w_in, w_out, 7, stride=2)
        cx = norm2d_cx(cx, w_out)
        cx = pool2d_cx(cx, w_out, 3, stride=2)
        return cx


# ---------------------------------- Miscellaneous ----------------------------------- #


def adjust_block_compatibility(ws, bs, gs):
    """Adjusts widths, bottleneck multipliers and group widths to be compatible."""
    assert len(ws) == len(bs) == len(gs)
    assert all(w > 0 and b > 0 and g > 0 for w, b, g in zip(ws, bs, gs))
    vs = [int(max(1, w * b)) for w, b in zip(ws, bs)]
    gs = [int(min(g, v)) for g, v in zip(gs, vs)]
    ms = [math.lcm(g, int(b)) if b > 1 else g for g, b in zip(gs, bs)]
    vs = [max(m, int(round(v / m) * m)) for v, m in zip(vs, ms)]
    ws = [int(v / b) for v, b in zip(vs, bs)]
    assert all(w * b % g == 0 for w, b, g in zip(ws, bs, gs))
    return ws, bs, gs


def init_model_weights(model, zero_init_final_gamma=False):
    """Performs ResNet-style weight initialization of every module of a model."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            # Conv biases (SE only) keep torch's default init, as in pycls
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.data.normal_(mean=0.0, std=float(np.sqrt(2.0 / fan_out)))
        elif isinstance(m, nn.BatchNorm2d):
            zero_gamma = zero_init_final_gamma and getattr(m, "final_bn", False)
            m.weight.data.fill_(0.0 if zero_gamma else 1.0)
            m.bias.data.zero_()
        elif isinstance(m, nn.Linear):
            m.weight.data.normal_(mean=0.0, std=0.01)
            m.bias.data.zero_()


def drop_connect(x, drop_ratio):
    """Drops whole samples of a residual branch with probability drop_ratio."""
    keep_ratio = 1.0 - drop_ratio
    mask = torch.empty([x.shape[0], 1, 1, 1], dtype=x.dtype, device=x.device)
    mask.bernoulli_(keep_ratio)
    return x * mask.div_(keep_ratio)
