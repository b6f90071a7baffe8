"""ResNe(X)t models (AnyNets with ResNet stems, widths and depths, as RegNets are)."""

from pycls.core.config import cfg
from pycls.core.errors import PyclsError
from pycls.models.anynet import AnyNet
from pycls.models.blocks import layer_params

# Stage depths for ImageNet models
_IN_STAGE_DS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}

# RESNET.TRANS_FUN -> AnyNet block type (the blocks hold the same layers under the same keys)
_BLOCKS = {"basic_transform": "res_basic_block", "bottleneck_transform": "res_bottleneck_block"}


def _stages(cifar, depth, trans_fun):
    """Returns (stem type, stem width, depths, widths, strides) of a ResNet, checked."""
    if cifar:
        if (depth - 2) % 6 != 0 or depth < 8:
            msg = "MODEL.DEPTH {} is not valid for a CIFAR ResNet; use 6n + 2 (20, 32, 56, 110)"
            raise PyclsError(msg.format(depth))
        d = (depth - 2) // 6
        stages = ("res_stem_cifar", 16, [d] * 3, [16, 32, 64], [1, 2, 2])
    elif depth not in _IN_STAGE_DS:
        msg = "MODEL.DEPTH {} is not valid for an ImageNet ResNet; choose one of {}"
        raise PyclsError(msg.format(depth, ", ".join(str(d) for d in _IN_STAGE_DS)))
    else:
        stages = (
            "res_stem_in",
            64,
            list(_IN_STAGE_DS[depth]),
            [256, 512, 1024, 2048],
            [1, 2, 2, 2],
        )
    if trans_fun not in _BLOCKS:
        msg = "RESNET.TRANS_FUN {!r} is not supported; choose one of {}"
        raise PyclsError(msg.format(trans_fun, ", ".join(_BLOCKS)))
    # As in pycls: CIFAR ResNets are basic, ImageNet ones bottleneck (with groups)
    if not cifar and trans_fun == "basic_transform":
        raise PyclsError("basic_transform takes no groups; set RESNET.NUM_GROUPS to 1")
    if cifar and trans_fun == "bottleneck_transform":
        raise PyclsError("a CIFAR ResNet takes RESNET.TRANS_FUN basic_transform")
    return stages


class ResNet(AnyNet):
    """ResNet model."""

    @staticmethod
    def get_params():
        """Converts the ResNet config into an AnyNet params dict."""
        cifar = "cifar" in cfg.TRAIN.DATASET
        stem, stem_w, ds, ws, ss = _stages(cifar, cfg.MODEL.DEPTH, cfg.RESNET.TRANS_FUN)
        # Bottleneck width w_b = groups * width per group, doubled in each stage
        w_b = cfg.RESNET.NUM_GROUPS * cfg.RESNET.WIDTH_PER_GROUP
        w_bs = [w_b * 2**i for i in range(len(ws))]
        return {
            "stem_type": stem,
            "stem_w": stem_w,
            "block_type": _BLOCKS[cfg.RESNET.TRANS_FUN],
            "depths": ds,
            "widths": ws,
            "strides": ss,
            "bot_muls": None if cifar else [b / w for b, w in zip(w_bs, ws)],
            "group_ws": None if cifar else [b // cfg.RESNET.NUM_GROUPS for b in w_bs],
            "stride_1x1": cfg.RESNET.STRIDE_1X1,
            "head_w": 0,
            "se_r": 0,
            "num_classes": cfg.MODEL.NUM_CLASSES,
            "zero_init_final_gamma": cfg.BN.ZERO_INIT_FINAL_GAMMA,
            **layer_params(),
        }

    def __init__(self, params=None):
        super().__init__(ResNet.get_params() if not params else params)

    @staticmethod
    def complexity(cx, params=None):
        """Computes model complexity (if you alter the model, make sure to update)."""
        return AnyNet.complexity(cx, ResNet.get_params() if not params else params)
