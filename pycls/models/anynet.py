"""AnyNet models."""

from torch.nn import Module

from pycls.core.config import cfg
from pycls.core.errors import PyclsError
from pycls.models.blocks import (
    LAYER_KEYS,
    SE,
    ResStemCifar,
    ResStemIN,
    SimpleStemIN,
    activation,
    check_params,
    conv2d,
    conv2d_cx,
    gap2d,
    gap2d_cx,
    init_model_weights,
    layer_params,
    linear,
    linear_cx,
    norm2d,
    norm2d_cx,
)

# Keys of an AnyNet params dict: the architecture, then the layers and init
_ARCH_KEYS = tuple("stem_type stem_w block_type depths widths strides bot_muls group_ws".split())
_ARCH_KEYS += ("head_w", "se_r", "num_classes")
_KEYS = _ARCH_KEYS + LAYER_KEYS + ("zero_init_final_gamma",)


def get_stem_fun(stem_type):
    """Retrieves the stem class by name."""
    stem_funs = {
        "res_stem_cifar": ResStemCifar,
        "res_stem_in": ResStemIN,
        "simple_stem_in": SimpleStemIN,
    }
    if stem_type not in stem_funs:
        msg = "stem type {!r} is not supported; choose one of {}"
        raise PyclsError(msg.format(stem_type, ", ".join(stem_funs)))
    return stem_funs[stem_type]


def get_block_fun(block_type):
    """Retrieves the block class by name."""
    block_funs = {
        "vanilla_block": VanillaBlock,
        "res_basic_block": ResBasicBlock,
        "res_bottleneck_block": ResBottleneckBlock,
        "res_bottleneck_linear_block": ResBottleneckLinearBlock,
    }
    if block_type not in block_funs:
        msg = "block type {!r} is not supported; choose one of {}"
        raise PyclsError(msg.format(block_type, ", ".join(block_funs)))
    return block_funs[block_type]


class AnyHead(Module):
    """AnyNet head: optional 1x1 conv, BN, AF, then AvgPool, FC."""

    def __init__(self, w_in, head_width, num_classes, p):
        super().__init__()
        self.head_width = head_width
        if head_width > 0:
            self.conv = conv2d(w_in, head_width, 1)
            self.bn = norm2d(head_width, p)
            self.af = activation(p)
            w_in = head_width
        self.avg_pool = gap2d(w_in)
        self.fc = linear(w_in, num_classes, bias=True)

    def forward(self, x):
        x = self.af(self.bn(self.conv(x))) if self.head_width > 0 else x
        x = self.avg_pool(x).flatten(1)
        return self.fc(x)

    @staticmethod
    def complexity(cx, w_in, head_width, num_classes, _p=None):
        if head_width > 0:
            cx = conv2d_cx(cx, w_in, head_width, 1)
            cx = norm2d_cx(cx, head_width)
            w_in = head_width
        cx = gap2d_cx(cx, w_in)
        cx = linear_cx(cx, w_in, num_classes, bias=True)
        return cx


class VanillaBlock(Module):
    """Vanilla block: [3x3 conv, BN, AF] x2."""

    def __init__(self, w_in, w_out, stride, p):
        super().__init__()
        self.a = conv2d(w_in, w_out, 3, stride=stride)
        self.a_bn = norm2d(w_out, p)
        self.a_af = activation(p)
        self.b = conv2d(w_out, w_out, 3)
        self.b_bn = norm2d(w_out, p)
        self.b_af = activation(p)

    def forward(self, x):
        for layer in self.children():
            x = layer(x)
        return x

    @staticmethod
    def complexity(cx, w_in, w_out, stride, _p=None):
        cx = conv2d_cx(cx, w_in, w_out, 3, stride=stride)
        cx = norm2d_cx(cx, w_out)
        cx = conv2d_cx(cx, w_out, w_out, 3)
        cx = norm2d_cx(cx, w_out)
        return cx


class BasicTransform(Module):
    """Basic transformation: 3x3 conv, BN, AF, 3x3 conv, BN."""

    def __init__(self, w_in, w_out, stride, p):
        super().__init__()
        self.a = conv2d(w_in, w_out, 3, stride=stride)
        self.a_bn = norm2d(w_out, p)
        self.a_af = activation(p)
        self.b = conv2d(w_out, w_out, 3)
        self.b_bn = norm2d(w_out, p)
        self.b_bn.final_bn = True

    def forward(self, x):
        for layer in self.children():
            x = layer(x)
        return x

    @staticmethod
    def complexity(cx, w_in, w_out, stride, _p=None):
        cx = conv2d_cx(cx, w_in, w_out, 3, stride=stride)
        cx = norm2d_cx(cx, w_out)
        cx = conv2d_cx(cx, w_out, w_out, 3)
        cx = norm2d_cx(cx, w_out)
        return cx


class _ResidualBlock(Module):
    """Residual block: AF(x + f(x)), x projected (1x1 conv, BN) when the shape changes."""

    # The transform f, set by each subclass
    transform = None

    def __init__(self, w_in, w_out, stride, p):
        super().__init__()
        self.proj, self.bn = None, None
        if (w_in != w_out) or (stride != 1):
            self.proj = conv2d(w_in, w_out, 1, stride=stride)
            self.bn = norm2d(w_out, p)
        self.f = self.transform(w_in, w_out, stride, p)
        self.af = activation(p)

    def forward(self, x):
        x_p = self.bn(self.proj(x)) if self.proj is not None else x
        return self.af(x_p + self.f(x))

    @classmethod
    def complexity(cls, cx, w_in, w_out, stride, p=None):
        if (w_in != w_out) or (stride != 1):
            h, w = cx["h"], cx["w"]
            cx = conv2d_cx(cx, w_in, w_out, 1, stride=stride)
            cx = norm2d_cx(cx, w_out)
            cx = dict(cx, h=h, w=w)
        return cls.transform.complexity(cx, w_in, w_out, stride, p)


class ResBasicBlock(_ResidualBlock):
    """Residual basic block: x + f(x), f = basic transform."""

    transform = BasicTransform


def _bottleneck_widths(w_in, w_out, p):
    """Returns (bottleneck width, SE width, groups) of a bottleneck transform."""
    if p["bot_mul"] is None or p["group_w"] is None:
        msg = "bottleneck blocks need ANYNET.BOT_MULS and ANYNET.GROUP_WS for every stage"
        raise PyclsError(msg)
    w_b = int(round(w_out * p["bot_mul"]))
    w_se = int(round(w_in * p["se_r"]))
    groups = w_b // p["group_w"]
    return w_b, w_se, groups


class BottleneckTransform(Module):
    """Bottleneck transformation: 1x1, 3x3 [+SE], 1x1."""

    def __init__(self, w_in, w_out, stride, p):
        super().__init__()
        w_b, w_se, groups = _bottleneck_widths(w_in, w_out, p)
        # MSRA ResNets (RESNET.STRIDE_1X1) stride in the 1x1 conv, the others in the 3x3
        s1, s3 = (stride, 1) if p["stride_1x1"] else (1, stride)
        self.a = conv2d(w_in, w_b, 1, stride=s1)
        self.a_bn = norm2d(w_b, p)
        self.a_af = activation(p)
        self.b = conv2d(w_b, w_b, 3, stride=s3, groups=groups)
        self.b_bn = norm2d(w_b, p)
        self.b_af = activation(p)
        self.se = SE(w_b, w_se, p) if w_se else None
        self.c = conv2d(w_b, w_out, 1)
        self.c_bn = norm2d(w_out, p)
        self.c_bn.final_bn = True

    def forward(self, x):
        x = self.a_af(self.a_bn(self.a(x)))
        x = self.b_af(self.b_bn(self.b(x)))
        x = self.se(x) if self.se is not None else x
        return self.c_bn(self.c(x))

    @staticmethod
    def complexity(cx, w_in, w_out, stride, p):
        w_b, w_se, groups = _bottleneck_widths(w_in, w_out, p)
        s1, s3 = (stride, 1) if p["stride_1x1"] else (1, stride)
        cx = conv2d_cx(cx, w_in, w_b, 1, stride=s1)
        cx = norm2d_cx(cx, w_b)
        cx = conv2d_cx(cx, w_b, w_b, 3, stride=s3, groups=groups)
        cx = norm2d_cx(cx, w_b)
        cx = SE.complexity(cx, w_b, w_se) if w_se else cx
        cx = conv2d_cx(cx, w_b, w_out, 1)
        cx = norm2d_cx(cx, w_out)
        return cx


class ResBottleneckBlock(_ResidualBlock):
    """Residual bottleneck block: x + f(x), f = bottleneck transform."""

    transform = BottleneckTransform


class ResBottleneckLinearBlock(Module):
    """Residual linear bottleneck block: x + f(x) (no skip when shapes change)."""

    def __init__(self, w_in, w_out, stride, p):
        super().__init__()
        self.has_skip = (w_in == w_out) and (stride == 1)
        self.f = BottleneckTransform(w_in, w_out, stride, p)

    def forward(self, x):
        return x + self.f(x) if self.has_skip else self.f(x)

    @staticmethod
    def complexity(cx, w_in, w_out, stride, p):
        return BottleneckTransform.complexity(cx, w_in, w_out, stride, p)


class AnyStage(Module):
    """AnyNet stage (sequence of blocks w/ the same output shape)."""

    def __init__(self, w_in, w_out, stride, d, block_fun, p):
        super().__init__()
        for i in range(d):
            block = block_fun(w_in, w_out, stride, p)
            self.add_module("b{}".format(i + 1), block)
            stride, w_in = 1, w_out

    def forward(self, x):
        for block in self.children():
            x = block(x)
        return x

    @staticmethod
    def complexity(cx, w_in, w_out, stride, d, block_fun, p):
        for _ in range(d):
            cx = block_fun.complexity(cx, w_in, w_out, stride, p)
            stride, w_in = 1, w_out
        return cx


def _stage_params(p):
    """Returns per-stage (depth, width, stride, block params) of an AnyNet params dict."""
    keys = ["depths", "widths", "strides", "bot_muls", "group_ws"]
    lists = [p[k] if p[k] else [None] * len(p["depths"]) for k in keys]
    if len({len(v) for v in lists}) != 1:
        msg = "depths, widths, strides, bot_muls and group_ws need one value per stage; "
        raise PyclsError(msg + "got lengths {}".format([len(v) for v in lists]))
    layer = {k: p[k] for k in LAYER_KEYS if k in p}
    # Only a ResNet's params set stride_1x1 (see resnet.py)
    layer.update(se_r=p["se_r"], stride_1x1=p.get("stride_1x1", False))
    return [(d, w, s, dict(layer, bot_mul=b, group_w=g)) for d, w, s, b, g in zip(*lists)]


class AnyNet(Module):
    """AnyNet model."""

    @staticmethod
    def get_params():
        """Returns the params dict that defines the model, read from cfg."""
        nones = [None for _ in cfg.ANYNET.DEPTHS]
        return {
            "stem_type": cfg.ANYNET.STEM_TYPE,
            "stem_w": cfg.ANYNET.STEM_W,
            "block_type": cfg.ANYNET.BLOCK_TYPE,
            "depths": list(cfg.ANYNET.DEPTHS),
            "widths": list(cfg.ANYNET.WIDTHS),
            "strides": list(cfg.ANYNET.STRIDES),
            "bot_muls": list(cfg.ANYNET.BOT_MULS) if cfg.ANYNET.BOT_MULS else nones,
            "group_ws": list(cfg.ANYNET.GROUP_WS) if cfg.ANYNET.GROUP_WS else nones,
            "head_w": cfg.ANYNET.HEAD_W,
            "se_r": cfg.ANYNET.SE_R if cfg.ANYNET.SE_ON else 0,
            "num_classes": cfg.MODEL.NUM_CLASSES,
            "zero_init_final_gamma": cfg.BN.ZERO_INIT_FINAL_GAMMA,
            **layer_params(),
        }

    def __init__(self, params=None):
        super().__init__()
        p = AnyNet.get_params() if not params else check_params(params, _KEYS, "AnyNet")
        self.params = dict(p)
        stem_fun = get_stem_fun(p["stem_type"])
        block_fun = get_block_fun(p["block_type"])
        self.stem = stem_fun(3, p["stem_w"], p)
        prev_w = p["stem_w"]
        for i, (d, w, s, bp) in enumerate(_stage_params(p)):
            stage = AnyStage(prev_w, w, s, d, block_fun, bp)
            self.add_module("s{}".format(i + 1), stage)
            prev_w = w
        self.head = AnyHead(prev_w, p["head_w"], p["num_classes"], p)
        init_model_weights(self, p["zero_init_final_gamma"])

    def forward(self, x):
        for module in self.children():
            x = module(x)
        return x

    @staticmethod
    def complexity(cx, params=None):
        """Computes model complexity (if you alter the model, make sure to update)."""
        p = AnyNet.get_params() if not params else check_params(params, _ARCH_KEYS, "AnyNet")
        stem_fun = get_stem_fun(p["stem_type"])
        block_fun = get_block_fun(p["block_type"])
        cx = stem_fun.complexity(cx, 3, p["stem_w"])
        prev_w = p["stem_w"]
        for d, w, s, bp in _stage_params(p):
            cx = AnyStage.complexity(cx, prev_w, w, s, d, block_fun, bp)
            prev_w = w
        cx = AnyHead.complexity(cx, prev_w, p["head_w"], p["num_classes"])
        return cx
