"""EfficientNet models."""

from torch.nn import Dropout, Module

from pycls.core.config import cfg
from pycls.core.errors import PyclsError
from pycls.models.blocks import (
    LAYER_KEYS,
    SE,
    SimpleStemIN,
    activation,
    check_params,
    conv2d,
    conv2d_cx,
    drop_connect,
    gap2d,
    gap2d_cx,
    init_model_weights,
    layer_params,
    linear,
    linear_cx,
    norm2d,
    norm2d_cx,
)

# Keys of an EffNet params dict: the architecture, then the regularization
_ARCH_KEYS = ("sw", "ds", "ws", "exp_rs", "se_r", "ss", "ks", "hw", "nc")
_KEYS = _ARCH_KEYS + ("dc_ratio", "dropout_ratio") + LAYER_KEYS


class EffHead(Module):
    """EfficientNet head: 1x1, BN, AF, AvgPool, Dropout, FC."""

    def __init__(self, w_in, w_out, num_classes, p):
        super().__init__()
        dropout_ratio = p["dropout_ratio"]
        self.conv = conv2d(w_in, w_out, 1)
        self.conv_bn = norm2d(w_out, p)
        self.conv_af = activation(p)
        self.avg_pool = gap2d(w_out)
        self.dropout = Dropout(p=dropout_ratio) if dropout_ratio > 0 else None
        self.fc = linear(w_out, num_classes, bias=True)

    def forward(self, x):
        x = self.conv_af(self.conv_bn(self.conv(x)))
        x = self.avg_pool(x).flatten(1)
        x = self.dropout(x) if self.dropout is not None else x
        return self.fc(x)

    @staticmethod
    def complexity(cx, w_in, w_out, num_classes, _p=None):
        cx = conv2d_cx(cx, w_in, w_out, 1)
        cx = norm2d_cx(cx, w_out)
        cx = gap2d_cx(cx, w_out)
        cx = linear_cx(cx, w_out, num_classes, bias=True)
        return cx


class MBConv(Module):
    """Mobile inverted bottleneck block with SE: 1x1, kxk dwise, SE, 1x1 [+ skip]."""

    def __init__(self, w_in, exp_r, k, stride, se_r, w_out, p):
        super().__init__()
        self.exp = None
        w_exp = int(w_in * exp_r)
        if w_exp != w_in:
            self.exp = conv2d(w_in, w_exp, 1)
            self.exp_bn = norm2d(w_exp, p)
            self.exp_af = activation(p)
        self.dwise = conv2d(w_exp, w_exp, k, stride=stride, groups=w_exp)
        self.dwise_bn = norm2d(w_exp, p)
        self.dwise_af = activation(p)
        self.se = SE(w_exp, int(w_in * se_r), p)
        self.lin_proj = conv2d(w_exp, w_out, 1)
        self.lin_proj_bn = norm2d(w_out, p)
        self.has_skip = stride == 1 and w_in == w_out
        self.dc_ratio = p["dc_ratio"]

    def forward(self, x):
        f_x = self.exp_af(self.exp_bn(self.exp(x))) if self.exp is not None else x
        f_x = self.dwise_af(self.dwise_bn(self.dwise(f_x)))
        f_x = self.se(f_x)
        f_x = self.lin_proj_bn(self.lin_proj(f_x))
        if self.has_skip:
            if self.training and self.dc_ratio > 0.0:
                f_x = drop_connect(f_x, self.dc_ratio)
            f_x = x + f_x
        return f_x

    @staticmethod
    def complexity(cx, w_in, exp_r, k, stride, se_r, w_out, _p=None):
        w_exp = int(w_in * exp_r)
        if w_exp != w_in:
            cx = conv2d_cx(cx, w_in, w_exp, 1)
            cx = norm2d_cx(cx, w_exp)
        cx = conv2d_cx(cx, w_exp, w_exp, k, stride=stride, groups=w_exp)
        cx = norm2d_cx(cx, w_exp)
        cx = SE.complexity(cx, w_exp, int(w_in * se_r))
        cx = conv2d_cx(cx, w_exp, w_out, 1)
        cx = norm2d_cx(cx, w_out)
        return cx


class EffStage(Module):
    """EfficientNet stage: d MBConv blocks (stride and w_in apply to the first)."""

    def __init__(self, w_in, exp_r, k, stride, se_r, w_out, d, p):
        super().__init__()
        for i in range(d):
            block = MBConv(w_in, exp_r, k, stride, se_r, w_out, p)
            self.add_module("b{}".format(i + 1), block)
            stride, w_in = 1, w_out

    def forward(self, x):
        for block in self.children():
            x = block(x)
        return x

    @staticmethod
    def complexity(cx, w_in, exp_r, k, stride, se_r, w_out, d, p=None):
        for _ in range(d):
            cx = MBConv.complexity(cx, w_in, exp_r, k, stride, se_r, w_out, p)
            stride, w_in = 1, w_out
        return cx


def _stage_params(p):
    """Groups the per-stage lists of an EffNet params dict, checking their lengths."""
    lists = [p[k] for k in ("ds", "ws", "exp_rs", "ss", "ks")]
    if len({len(v) for v in lists}) != 1:
        msg = "EN.DEPTHS, EN.WIDTHS, EN.EXP_RATIOS, EN.STRIDES and EN.KERNELS need one value "
        raise PyclsError(msg + "per stage; got lengths {}".format([len(v) for v in lists]))
    return list(zip(*lists))


class EffNet(Module):
    """EfficientNet model."""

    @staticmethod
    def get_params():
        """Returns the params dict that defines the model, read from cfg."""
        return {
            "sw": cfg.EN.STEM_W,
            "ds": list(cfg.EN.DEPTHS),
            "ws": list(cfg.EN.WIDTHS),
            "exp_rs": list(cfg.EN.EXP_RATIOS),
            "se_r": cfg.EN.SE_R,
            "ss": list(cfg.EN.STRIDES),
            "ks": list(cfg.EN.KERNELS),
            "hw": cfg.EN.HEAD_W,
            "nc": cfg.MODEL.NUM_CLASSES,
            "dc_ratio": cfg.EN.DC_RATIO,
            "dropout_ratio": cfg.EN.DROPOUT_RATIO,
            **layer_params(),
        }

    def __init__(self, params=None):
        super().__init__()
        p = EffNet.get_params() if not params else check_params(params, _KEYS, "EffNet")
        self.params = dict(p)
        self.stem = SimpleStemIN(3, p["sw"], p)
        prev_w = p["sw"]
        for i, (d, w, exp_r, stride, k) in enumerate(_stage_params(p)):
            stage = EffStage(prev_w, exp_r, k, stride, p["se_r"], w, d, p)
            self.add_module("s{}".format(i + 1), stage)
            prev_w = w
        self.head = EffHead(prev_w, p["hw"], p["nc"], p)
        init_model_weights(self)

    def forward(self, x):
        for module in self.children():
            x = module(x)
        return x

    @staticmethod
    def complexity(cx, params=None):
        """Computes model complexity (if you alter the model, make sure to update)."""
        p = EffNet.get_params() if not params else check_params(params, _ARCH_KEYS, "EffNet")
        cx = SimpleStemIN.complexity(cx, 3, p["sw"])
        prev_w = p["sw"]
        for d, w, exp_r, stride, k in _stage_params(p):
            cx = EffStage.complexity(cx, prev_w, exp_r, k, stride, p["se_r"], w, d)
            prev_w = w
        cx = EffHead.complexity(cx, prev_w, p["hw"], p["nc"])
        return cx
