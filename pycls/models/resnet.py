"""ResNe(X)t models."""

from torch.nn import Module

from pycls.core.config import cfg
from pycls.core.errors import PyclsError
from pycls.models.blocks import (
    LAYER_KEYS,
    ResStemCifar,
    ResStemIN,
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

# Stage depths for ImageNet models
_IN_STAGE_DS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}

# Keys of a ResNet params dict: the architecture, then the layers and init
_ARCH_KEYS = (
    "cifar",
    "depth",
    "trans_fun",
    "num_groups",
    "width_per_group",
    "stride_1x1",
    "num_classes",
)
_KEYS = _ARCH_KEYS + LAYER_KEYS + ("zero_init_final_gamma",)


def get_trans_fun(name):
    """Retrieves the transformation class by name."""
    trans_funs = {
        "basic_transform": BasicTransform,
        "bottleneck_transform": BottleneckTransform,
    }
    if name not in trans_funs:
        msg = "RESNET.TRANS_FUN {!r} is not supported; choose one of {}"
        raise PyclsError(msg.format(name, ", ".join(trans_funs)))
    return trans_funs[name]


class ResHead(Module):
    """ResNet head: AvgPool, FC."""

    def __init__(self, w_in, num_classes):
        super().__init__()
        self.avg_pool = gap2d(w_in)
        self.fc = linear(w_in, num_classes, bias=True)

    def forward(self, x):
        return self.fc(self.avg_pool(x).flatten(1))

    @staticmethod
    def complexity(cx, w_in, num_classes):
        cx = gap2d_cx(cx, w_in)
        cx = linear_cx(cx, w_in, num_classes, bias=True)
        return cx


class BasicTransform(Module):
    """Basic transformation: 3x3, BN, AF, 3x3, BN."""

    def __init__(self, w_in, w_out, stride, p, w_b=None, groups=1):
        if w_b is not None or groups != 1:
            raise PyclsError("basic_transform takes no groups; set RESNET.NUM_GROUPS to 1")
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
    def complexity(cx, w_in, w_out, stride, _p=None, w_b=None, groups=1):
        cx = conv2d_cx(cx, w_in, w_out, 3, stride=stride)
        cx = norm2d_cx(cx, w_out)
        cx = conv2d_cx(cx, w_out, w_out, 3)
        cx = norm2d_cx(cx, w_out)
        return cx


class BottleneckTransform(Module):
    """Bottleneck transformation: 1x1, BN, AF, 3x3, BN, AF, 1x1, BN."""

    def __init__(self, w_in, w_out, stride, p, w_b, groups):
        super().__init__()
        # MSRA -> stride=2 is on 1x1; TH/C2 -> stride=2 is on 3x3
        (s1, s3) = (stride, 1) if p["stride_1x1"] else (1, stride)
        self.a = conv2d(w_in, w_b, 1, stride=s1)
        self.a_bn = norm2d(w_b, p)
        self.a_af = activation(p)
        self.b = conv2d(w_b, w_b, 3, stride=s3, groups=groups)
        self.b_bn = norm2d(w_b, p)
        self.b_af = activation(p)
        self.c = conv2d(w_b, w_out, 1)
        self.c_bn = norm2d(w_out, p)
        self.c_bn.final_bn = True

    def forward(self, x):
        for layer in self.children():
            x = layer(x)
        return x

    @staticmethod
    def complexity(cx, w_in, w_out, stride, p, w_b, groups):
        (s1, s3) = (stride, 1) if p["stride_1x1"] else (1, stride)
        cx = conv2d_cx(cx, w_in, w_b, 1, stride=s1)
        cx = norm2d_cx(cx, w_b)
        cx = conv2d_cx(cx, w_b, w_b, 3, stride=s3, groups=groups)
        cx = norm2d_cx(cx, w_b)
        cx = conv2d_cx(cx, w_b, w_out, 1)
        cx = norm2d_cx(cx, w_out)
        return cx


class ResBlock(Module):
    """Residual block: x + f(x), with a 1x1 projection when the shape changes."""

    def __init__(self, w_in, w_out, stride, trans_fun, p, w_b=None, groups=1):
        super().__init__()
        self.proj, self.bn = None, None
        if (w_in != w_out) or (stride != 1):
            self.proj = conv2d(w_in, w_out, 1, stride=stride)
            self.bn = norm2d(w_out, p)
        self.f = trans_fun(w_in, w_out, stride, p, w_b, groups)
        self.af = activation(p)

    def forward(self, x):
        x_p = self.bn(self.proj(x)) if self.proj is not None else x
        return self.af(x_p + self.f(x))

    @staticmethod
    def complexity(cx, w_in, w_out, stride, trans_fun, p, w_b=None, groups=1):
        if (w_in != w_out) or (stride != 1):
            h, w = cx["h"], cx["w"]
            cx = conv2d_cx(cx, w_in, w_out, 1, stride=stride)
            cx = norm2d_cx(cx, w_out)
            cx = dict(cx, h=h, w=w)
        cx = trans_fun.complexity(cx, w_in, w_out, stride, p, w_b, groups)
        return cx


class ResStage(Module):
    """Stage of ResNet: d residual blocks (stride and w_in apply to the first)."""

    def __init__(self, w_in, w_out, stride, d, p, w_b=None, groups=1):
        super().__init__()
        trans_fun = get_trans_fun(p["trans_fun"])
        for i in range(d):
            block = ResBlock(w_in, w_out, stride, trans_fun, p, w_b, groups)
            self.add_module("b{}".format(i + 1), block)
            stride, w_in = 1, w_out

    def forward(self, x):
        for block in self.children():
            x = block(x)
        return x

    @staticmethod
    def complexity(cx, w_in, w_out, stride, d, p, w_b=None, groups=1):
        trans_fun = get_trans_fun(p["trans_fun"])
        for _ in range(d):
            cx = ResBlock.complexity(cx, w_in, w_out, stride, trans_fun, p, w_b, groups)
            stride, w_in = 1, w_out
        return cx


def _cifar_depth(p):
    """Returns the blocks per stage of a CIFAR ResNet (depth 6n + 2)."""
    if (p["depth"] - 2) % 6 != 0 or p["depth"] < 8:
        msg = "MODEL.DEPTH {} is not valid for a CIFAR ResNet; use 6n + 2 (20, 32, 56, 110)"
        raise PyclsError(msg.format(p["depth"]))
    return (p["depth"] - 2) // 6


def _imagenet_depths(p):
    """Returns the blocks per stage of an ImageNet ResNet."""
    if p["depth"] not in _IN_STAGE_DS:
        msg = "MODEL.DEPTH {} is not valid for an ImageNet ResNet; choose one of {}"
        raise PyclsError(msg.format(p["depth"], ", ".join(str(d) for d in _IN_STAGE_DS)))
    return _IN_STAGE_DS[p["depth"]]


class ResNet(Module):
    """ResNet model."""

    @staticmethod
    def get_params():
        """Returns the params dict that defines the model, read from cfg."""
        return {
            "cifar": "cifar" in cfg.TRAIN.DATASET,
            "depth": cfg.MODEL.DEPTH,
            "trans_fun": cfg.RESNET.TRANS_FUN,
            "num_groups": cfg.RESNET.NUM_GROUPS,
            "width_per_group": cfg.RESNET.WIDTH_PER_GROUP,
            "stride_1x1": cfg.RESNET.STRIDE_1X1,
            "num_classes": cfg.MODEL.NUM_CLASSES,
            "zero_init_final_gamma": cfg.BN.ZERO_INIT_FINAL_GAMMA,
            **layer_params(),
        }

    def __init__(self, params=None):
        super().__init__()
        p = ResNet.get_params() if not params else check_params(params, _KEYS, "ResNet")
        self.params = dict(p)
        if p["cifar"]:
            self._construct_cifar(p)
        else:
            self._construct_imagenet(p)
        init_model_weights(self, p["zero_init_final_gamma"])

    def _construct_cifar(self, p):
        d = _cifar_depth(p)
        self.stem = ResStemCifar(3, 16, p)
        self.s1 = ResStage(16, 16, 1, d, p)
        self.s2 = ResStage(16, 32, 2, d, p)
        self.s3 = ResStage(32, 64, 2, d, p)
        self.head = ResHead(64, p["num_classes"])

    def _construct_imagenet(self, p):
        g, gw = p["num_groups"], p["width_per_group"]
        (d1, d2, d3, d4) = _imagenet_depths(p)
        w_b = gw * g
        self.stem = ResStemIN(3, 64, p)
        self.s1 = ResStage(64, 256, 1, d1, p, w_b, g)
        self.s2 = ResStage(256, 512, 2, d2, p, w_b * 2, g)
        self.s3 = ResStage(512, 1024, 2, d3, p, w_b * 4, g)
        self.s4 = ResStage(1024, 2048, 2, d4, p, w_b * 8, g)
        self.head = ResHead(2048, p["num_classes"])

    def forward(self, x):
        for module in self.children():
            x = module(x)
        return x

    @staticmethod
    def complexity(cx, params=None):
        """Computes model complexity (if you alter the model, make sure to update)."""
        p = ResNet.get_params() if not params else check_params(params, _ARCH_KEYS, "ResNet")
        if p["cifar"]:
            d = _cifar_depth(p)
            cx = ResStemCifar.complexity(cx, 3, 16)
            cx = ResStage.complexity(cx, 16, 16, 1, d, p)
            cx = ResStage.complexity(cx, 16, 32, 2, d, p)
            cx = ResStage.complexity(cx, 32, 64, 2, d, p)
            cx = ResHead.complexity(cx, 64, p["num_classes"])
        else:
            g, gw = p["num_groups"], p["width_per_group"]
            (d1, d2, d3, d4) = _imagenet_depths(p)
            w_b = gw * g
            cx = ResStemIN.complexity(cx, 3, 64)
            cx = ResStage.complexity(cx, 64, 256, 1, d1, p, w_b, g)
            cx = ResStage.complexity(cx, 256, 512, 2, d2, p, w_b * 2, g)
            cx = ResStage.complexity(cx, 512, 1024, 2, d3, p, w_b * 4, g)
            cx = ResStage.complexity(cx, 1024, 2048, 2, d4, p, w_b * 8, g)
            cx = ResHead.complexity(cx, 2048, p["num_classes"])
        return cx
