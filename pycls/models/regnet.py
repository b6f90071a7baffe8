"""RegNet models (AnyNets whose widths and depths follow a quantized linear rule)."""

import numpy as np

from pycls.core.config import cfg
from pycls.core.errors import PyclsError
from pycls.models.anynet import AnyNet
from pycls.models.blocks import adjust_block_compatibility, layer_params


def generate_regnet(w_a, w_0, w_m, d, q=8):
    """Generates per-stage widths and depths from RegNet parameters."""
    if not (w_a >= 0 and w_0 > 0 and w_m > 1 and w_0 % q == 0):
        msg = "RegNet needs WA >= 0, W0 > 0 and a multiple of {}, WM > 1; got WA={} W0={} WM={}"
        raise PyclsError(msg.format(q, w_a, w_0, w_m))
    # Continuous per-block widths, then quantized to powers of w_m and multiples of q
    ws_cont = np.arange(d) * w_a + w_0
    ks = np.round(np.log(ws_cont / w_0) / np.log(w_m))
    ws_all = w_0 * np.power(w_m, ks)
    ws_all = np.round(np.divide(ws_all, q)).astype(int) * q
    # Per-stage widths and depths (ws_all is sorted)
    ws, ds = np.unique(ws_all, return_counts=True)
    num_stages, total_stages = len(ws), ks.max() + 1
    ws, ds, ws_all, ws_cont = (x.tolist() for x in (ws, ds, ws_all, ws_cont))
    return ws, ds, num_stages, total_stages, ws_all, ws_cont


class RegNet(AnyNet):
    """RegNet model."""

    @staticmethod
    def get_params():
        """Converts the RegNet config into an AnyNet params dict."""
        w_a, w_0, w_m, d = cfg.REGNET.WA, cfg.REGNET.W0, cfg.REGNET.WM, cfg.REGNET.DEPTH
        ws, ds = generate_regnet(w_a, w_0, w_m, d)[0:2]
        ss = [cfg.REGNET.STRIDE for _ in ws]
        bs = [cfg.REGNET.BOT_MUL for _ in ws]
        gs = [cfg.REGNET.GROUP_W for _ in ws]
        ws, bs, gs = adjust_block_compatibility(ws, bs, gs)
        return {
            "stem_type": cfg.REGNET.STEM_TYPE,
            "stem_w": cfg.REGNET.STEM_W,
            "block_type": cfg.REGNET.BLOCK_TYPE,
            "depths": ds,
            "widths": ws,
            "strides": ss,
            "bot_muls": bs,
            "group_ws": gs,
            "head_w": cfg.REGNET.HEAD_W,
            "se_r": cfg.REGNET.SE_R if cfg.REGNET.SE_ON else 0,
            "num_classes": cfg.MODEL.NUM_CLASSES,
            "zero_init_final_gamma": cfg.BN.ZERO_INIT_FINAL_GAMMA,
            **layer_params(),
        }

    def __init__(self, params=None):
        super().__init__(RegNet.get_params() if not params else params)

    @staticmethod
    def complexity(cx, params=None):
        """Computes model complexity (if you alter the model, make sure to update)."""
        return AnyNet.complexity(cx, RegNet.get_params() if not params else params)
