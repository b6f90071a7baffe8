#!/usr/bin/env python3
"""Convert a torchvision EfficientNet state dict into a pycls checkpoint (.pyth).

torchvision's efficientnet_b3 (download its weights yourself, e.g. the IMAGENET1K_V1 file
efficientnet_b3_rwightman-*.pth, 82.0% top-1) has the same layers as pycls's EN-B3: stem 40,
widths [24, 32, 48, 96, 136, 232, 384], depths [2, 3, 3, 5, 5, 6, 2], head 1536, SE width
int(block input width / 4), BN eps 1e-5, 12,233,232 params. Only the names differ:

    features.0.{0,1}                  -> stem.{conv,bn}
    features.S.B.block.L (MBConv)     -> sS.b(B+1).{exp,dwise,se,lin_proj} (+ _bn for the BN)
    features.S.B.block.L.fc{1,2}      -> sS.b(B+1).se.f_ex.{0,2}
    features.8.{0,1}                  -> head.{conv,conv_bn}
    classifier.1                      -> head.fc

The mapping reads the stage and block layout from the source keys, so other variants
(efficientnet_b0..b7 with the matching EN-Bx config) convert too; torchvision's b5..b7 use BN
eps 1e-3 and momentum 0.01, so pass BN.EPS 0.001 BN.MOM 0.01 for those. torchvision's dropout
and stochastic depth act in training only. The output is a pycls checkpoint (epoch 0,
model_state, no optimizer state, cfg dump): start from it with TRAIN.WEIGHTS or TEST.WEIGHTS.

torchvision's weights take RGB input; this project feeds the network INPUT.CHANNEL_ORDER (bgr
by default, as pycls). The stem convolution's input channels are permuted into that order, so
the converted model, fed by this project's loaders (or predict.py), gives torchvision's
predictions on the same photo. Convert with the INPUT.CHANNEL_ORDER you will train and test with.

Example:
    python tools/convert_weights.py --src efficientnet_b3_rwightman.pth --out EN-B3_tv.pyth
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pycls.core.errors import PyclsError  # noqa: E402
from pycls.core.io import write_atomic  # noqa: E402
from pycls.launch.cli import run_cli  # noqa: E402

# Config used when --cfg is not given
_DEFAULT_CFG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "configs/dds_baselines/effnet/EN-B3_dds_8gpu.yaml",
)

# pycls layer names of a torchvision MBConv's sub-layers, by their number of sub-layers
_BLOCK_LAYERS = {4: ("exp", "dwise", "se", "lin_proj"), 3: ("dwise", "se", "lin_proj")}

# pycls names of torchvision's SE layers
_SE_LAYERS = {"fc1": "f_ex.0", "fc2": "f_ex.2"}

# Mismatched keys listed in an error before "and N more"
_MAX_LISTED = 6


def parse_args(argv):
    """Parses the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--src", required=True, help="torchvision state dict file (.pth)")
    parser.add_argument("--out", required=True, help="pycls checkpoint to write (.pyth)")
    parser.add_argument("--cfg", default=_DEFAULT_CFG, help="model config (default: EN-B3)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config KEY VALUE overrides")
    return parser.parse_args(argv)


def _conv_bn_name(name, index):
    """Maps a Conv2dNormActivation sub-layer index (0 conv, 1 BN) to a pycls name."""
    return {"0": name, "1": name + "_bn"}.get(index)


def _block_key(parts, num_layers):
    """Maps the key of an MBConv parameter (features.S.B.block.L...) to a pycls key."""
    layers = _BLOCK_LAYERS.get(num_layers)
    if len(parts) < 7 or parts[3] != "block" or layers is None:
        return None
    if not (parts[2].isdigit() and parts[4].isdigit()):
        return None
    if int(parts[4]) >= len(layers):
        return None
    stage, block, name = "s" + parts[1], "b{}".format(int(parts[2]) + 1), layers[int(parts[4])]
    if name == "se":
        layer = _SE_LAYERS.get(parts[5])
        return ".".join([stage, block, "se", layer] + parts[6:]) if layer else None
    layer = _conv_bn_name(name, parts[5])
    return ".".join([stage, block, layer] + parts[6:]) if layer else None


def _block_sizes(keys):
    """Counts the sub-layers of each MBConv (keyed 'S.B') in torchvision keys."""
    sizes = {}
    for parts in (k.split(".") for k in keys):
        if parts[0] == "features" and len(parts) > 4 and parts[3] == "block" and parts[4].isdigit():
            block = parts[1] + "." + parts[2]
            sizes[block] = max(sizes.get(block, 0), int(parts[4]) + 1)
    return sizes


def map_key(key, head_index, block_sizes):
    """Maps one torchvision EfficientNet key to its pycls key (None when unknown)."""
    parts = key.split(".")
    if parts[0] == "classifier" and len(parts) == 3 and parts[1] == "1":
        return "head.fc." + parts[2]
    if parts[0] != "features" or len(parts) < 4 or not parts[1].isdigit():
        return None
    if parts[1] == "0":
        layer = {"0": "stem.conv", "1": "stem.bn"}.get(parts[2])
    elif int(parts[1]) == head_index:
        layer = {"0": "head.conv", "1": "head.conv_bn"}.get(parts[2])
    else:
        return _block_key(parts, block_sizes.get(parts[1] + "." + parts[2]))
    return ".".join([layer] + parts[3:]) if layer else None


def convert_state_dict(src_state):
    """Renames a torchvision EfficientNet state dict to pycls keys (PyclsError if unknown)."""
    keys = list(src_state)
    indices = [
        int(p[1])
        for p in (k.split(".") for k in keys)
        if p[0] == "features" and p[1:2] and p[1].isdigit()
    ]
    if not indices:
        raise PyclsError("the source holds no torchvision EfficientNet keys (features.*)")
    head_index, sizes = max(indices), _block_sizes(keys)
    mapped = {k: map_key(k, head_index, sizes) for k in keys}
    unknown = [k for k, v in mapped.items() if v is None]
    if unknown:
        msg = "the source has keys a torchvision EfficientNet does not: {}; is it one?"
        raise PyclsError(msg.format(_listed(unknown)))
    return {mapped[k]: src_state[k] for k in keys}


def to_channel_order(state, channel_order):
    """Permutes the stem convolution's input channels from RGB into channel_order."""
    from pycls.datasets.transforms import channel_index

    index = channel_index(channel_order)
    return dict(state, **{"stem.conv.weight": state["stem.conv.weight"][:, index].contiguous()})


def _listed(items):
    """Lists a few items in one line, with the count of the rest."""
    text = ", ".join(str(i) for i in items[:_MAX_LISTED])
    rest = len(items) - _MAX_LISTED
    return text + (" and {} more".format(rest) if rest > 0 else "")


def check_state_dict(state, model, what):
    """Raises a PyclsError listing the keys and shapes of state that do not match model."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    shapes = [
        "{} {} vs {}".format(k, tuple(state[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = [
        "{} {}: {}".format(len(items), label, _listed(items))
        for label, items in (("missing", missing), ("unexpected", extra), ("shapes", shapes))
        if items
    ]
    if problems:
        msg = "{} does not match the config's model ({}); pick the matching --cfg"
        raise PyclsError(msg.format(what, "; ".join(problems)))


def load_source(path):
    """Loads a state dict file (weights only), unwrapping a 'state_dict' or 'model' entry."""
    import torch

    if not os.path.isfile(path):
        raise PyclsError("source {} does not exist; check --src".format(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        msg = "cannot read {} as a torch state dict ({}); give a torchvision .pth file"
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PyclsError(msg.format(path, reason)) from e
    if isinstance(state, dict) and "model_state" in state:
        raise PyclsError("{} is already a pycls checkpoint; use it as it is".format(path))
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise PyclsError("{} does not hold a state dict of tensors".format(path))
    from pycls.core.checkpoint import strip_prefixes

    return {strip_prefixes(k): v for k, v in state.items()}


def write_checkpoint(state, out, cfg_text):
    """Writes a pycls checkpoint atomically (pycls.core.io.write_atomic)."""
    import torch

    checkpoint = {"epoch": 0, "model_state": state, "optimizer_state": None, "cfg": cfg_text}
    try:
        write_atomic(out, lambda f: torch.save(checkpoint, f))
    except OSError as e:
        raise PyclsError("cannot write {} ({}); check the folder".format(out, e.strerror)) from e


def _check_out(out):
    """Refuses an existing output file or a missing output folder."""
    if os.path.exists(out):
        raise PyclsError("{} exists; remove it or pick another --out".format(out))
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise PyclsError("output folder {} does not exist; create it first".format(folder))


def main(argv=None):
    """Converts --src into a pycls checkpoint at --out for the model of --cfg."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import pycls.core.builders as builders
    import pycls.core.config as config
    from pycls.core.config import cfg

    _check_out(args.out)
    config.load_cfg(args.cfg, args.opts)
    state = convert_state_dict(load_source(args.src))
    model = builders.build_model()
    check_state_dict(state, model, args.src)
    state = to_channel_order(state, cfg.INPUT.CHANNEL_ORDER)
    model.load_state_dict(state, strict=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    write_checkpoint(state, args.out, cfg.dump())
    params = sum(p.numel() for p in model.parameters())
    msg = "Wrote {} ({} tensors, {:,} params, {} input) from {}; use it as TRAIN.WEIGHTS or "
    msg += "TEST.WEIGHTS with INPUT.CHANNEL_ORDER {}"
    order = cfg.INPUT.CHANNEL_ORDER
    print(msg.format(args.out, len(state), params, order, args.src, order))


if __name__ == "__main__":
    run_cli(main)
