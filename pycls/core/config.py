"""Configuration (a yacs tree): pycls's keys and defaults plus the engine's new keys."""

import argparse
import contextlib
import difflib
import math
import os
import re

import yaml
from yacs.config import CfgNode

from pycls.core.errors import PyclsError
from pycls.core.io import write_atomic

_C = CfgNode()
cfg = _C
_SECTIONS = "MODEL RESNET ANYNET REGNET EN BN OPTIM TRAIN TEST DATA_LOADER DIST INPUT AMP CUDNN"
for _name in (_SECTIONS + " PREC_TIME PROFILE").split():
    _C[_name] = CfgNode()
_C.MODEL.TYPE = ""  # anynet, effnet, regnet or resnet
_C.MODEL.DEPTH = 0  # number of weight layers (resnet)
_C.MODEL.NUM_CLASSES = 10
_C.MODEL.LOSS_FUN = "cross_entropy"  # a name in the builders registry
_C.MODEL.ACTIVATION_FUN = "relu"  # relu, silu or swish
_C.MODEL.ACTIVATION_INPLACE = True  # perform activation inplace if implemented
_C.MODEL.MEMORY_FORMAT = "auto"  # auto (channels_last where faster), channels_last, contiguous
_C.MODEL.COMPILE = False  # wrap the model in torch.compile
_C.RESNET.TRANS_FUN = "basic_transform"  # or bottleneck_transform
_C.RESNET.NUM_GROUPS = 1  # 1: ResNet; > 1: ResNeXt
_C.RESNET.WIDTH_PER_GROUP = 64  # 64: ResNet; 4: ResNeXt
_C.RESNET.STRIDE_1X1 = True  # stride on the 1x1 conv (True: MSRA; False: fb.torch)
_C.ANYNET.STEM_TYPE, _C.ANYNET.STEM_W = "simple_stem_in", 32  # stem type and width
_C.ANYNET.BLOCK_TYPE = "res_bottleneck_block"
_C.ANYNET.DEPTHS = []  # per stage: blocks
_C.ANYNET.WIDTHS = []  # per stage: width of each block
_C.ANYNET.STRIDES = []  # per stage: stride of its first block
_C.ANYNET.BOT_MULS = []  # per stage: bottleneck multiplier
_C.ANYNET.GROUP_WS = []  # per stage: group width
_C.ANYNET.HEAD_W = 0  # width of the head's conv (0: no conv)
_C.ANYNET.SE_ON, _C.ANYNET.SE_R = False, 0.25  # Squeeze-and-Excitation on res_bottleneck_block
_C.REGNET.STEM_TYPE, _C.REGNET.STEM_W = "simple_stem_in", 32  # stem type and width
_C.REGNET.BLOCK_TYPE = "res_bottleneck_block"
_C.REGNET.STRIDE = 2  # stride of each stage
_C.REGNET.SE_ON, _C.REGNET.SE_R = False, 0.25  # Squeeze-and-Excitation (RegNetY)
_C.REGNET.DEPTH = 10
_C.REGNET.W0 = 32  # initial width
_C.REGNET.WA = 5.0  # slope
_C.REGNET.WM = 2.5  # quantization
_C.REGNET.GROUP_W = 16
_C.REGNET.BOT_MUL = 1.0  # bottleneck multiplier (bm = 1 / b from the paper)
_C.REGNET.HEAD_W = 0  # width of the head's conv (0: no conv)
_C.EN.STEM_W = 32
_C.EN.DEPTHS = []  # per stage: blocks
_C.EN.WIDTHS = []  # per stage: width of each block
_C.EN.EXP_RATIOS = []  # per stage: MBConv expansion ratio
_C.EN.SE_R = 0.25  # Squeeze-and-Excitation ratio
_C.EN.STRIDES = []  # per stage: stride of its first block
_C.EN.KERNELS = []  # per stage: kernel size
_C.EN.HEAD_W = 1280
_C.EN.DC_RATIO = 0.0  # drop connect ratio
_C.EN.DROPOUT_RATIO = 0.0
_C.BN.EPS, _C.BN.MOM = 1e-5, 0.1  # epsilon; momentum as PyTorch's (1 - Caffe2's)
_C.BN.USE_PRECISE_STATS = True  # recompute BN stats from train images before each test epoch
_C.BN.NUM_SAMPLES_PRECISE = 8192  # over all processes
_C.BN.PRECISE_BATCH_SIZE = 0  # images per precise BN pass over all processes; 0: TRAIN.BATCH_SIZE
_C.BN.ZERO_INIT_FINAL_GAMMA = False  # zero the gamma of each block's final BN
_C.BN.USE_CUSTOM_WEIGHT_DECAY, _C.BN.CUSTOM_WEIGHT_DECAY = False, 0.0  # another one for BN layers
_C.OPTIM.OPTIMIZER = "sgd"  # sgd, adam or adamw
_C.OPTIM.BASE_LR = 0.1
_C.OPTIM.MIN_LR = 0.0  # the LR ends at MIN_LR * BASE_LR
_C.OPTIM.LR_POLICY = "cos"  # cos, exp, lin or steps
_C.OPTIM.STEPS = []  # epochs where the steps policy multiplies the LR by LR_MULT
_C.OPTIM.LR_MULT = 0.1
_C.OPTIM.MAX_EPOCH = 200
_C.OPTIM.MOMENTUM = 0.9
_C.OPTIM.DAMPENING = 0.0
_C.OPTIM.NESTEROV = True
_C.OPTIM.BETA1, _C.OPTIM.BETA2 = 0.9, 0.999  # Adam/AdamW betas
_C.OPTIM.WEIGHT_DECAY = 5e-4
_C.OPTIM.BIAS_USE_CUSTOM_WEIGHT_DECAY, _C.OPTIM.BIAS_CUSTOM_WEIGHT_DECAY = False, 0.0
_C.OPTIM.WARMUP_FACTOR, _C.OPTIM.WARMUP_EPOCHS = 0.1, 0  # from BASE_LR * WARMUP_FACTOR
_C.OPTIM.EMA_ALPHA = 0.0  # EMA update value (0: no EMA model)
_C.OPTIM.EMA_UPDATE_PERIOD = 32  # in iterations
_C.OPTIM.GRAD_CLIP = 0.0  # clip the global gradient norm to this (0: no clipping)
_C.TRAIN.DATASET, _C.TRAIN.SPLIT = "", "train"  # imagenet (a folder) or synthetic
_C.TRAIN.BATCH_SIZE = 128  # over all processes
_C.TRAIN.IM_SIZE = 224
_C.TRAIN.EVAL_PERIOD = 1  # epochs between evaluations
_C.TRAIN.CHECKPOINT_PERIOD = 1  # epochs between checkpoints
_C.TRAIN.CHECKPOINT_KEEP = 0  # keep the newest N epoch checkpoints (0: all) and the best
_C.TRAIN.AUTO_RESUME = True  # resume from the latest checkpoint in OUT_DIR
_C.TRAIN.WEIGHTS = ""  # weights to start from (all keys must match)
_C.TRAIN.PRETRAINED = ""  # weights to fine-tune from (a head of another size is skipped)
_C.TRAIN.PRETRAINED_PARTIAL = False  # load only the PRETRAINED tensors that fit
_C.TRAIN.LABEL_SMOOTHING = 0.0
_C.TRAIN.MIXUP_ALPHA, _C.TRAIN.CUTMIX_ALPHA = 0.0, 0.0  # 0: no mixup / cutmix
_C.TRAIN.PCA_STD = 0.1  # AlexNet-style PCA jitter (0: none)
_C.TRAIN.AUGMENT = ""  # "", "AutoAugment", "RandAugment_N2_M0.5", ...
_C.TRAIN.CROP_SCALE = [0.08, 1.0]  # area range of the random resized crop
_C.TRAIN.HFLIP = 0.5  # flip probability (0 where a flip changes the class)
_C.TEST.DATASET, _C.TEST.SPLIT = "", "val"
_C.TEST.BATCH_SIZE = 200  # over all processes
_C.TEST.IM_SIZE = 256  # short side resized to this, then center-cropped to TRAIN.IM_SIZE
_C.TEST.WEIGHTS = ""
_C.DATA_LOADER.DATA_PATH = ""  # a folder with train/ and val/, one sub-folder per class
_C.DATA_LOADER.NUM_WORKERS = 8  # per process (capped at the CPUs available)
_C.DATA_LOADER.PIN_MEMORY = True  # only where there is an accelerator
_C.DATA_LOADER.MAX_BAD_FRACTION = 0.01  # stop past this fraction of unreadable images
_C.DATA_LOADER.SYNTHETIC_LENGTH = 0  # 0: ImageNet's 1281167 train / 50000 val
_C.DATA_LOADER.MP_CONTEXT = "auto"  # auto (forkserver, else spawn), forkserver, spawn, fork
_C.DATA_LOADER.TIMEOUT = 600  # seconds to wait for a batch (0: forever)
_C.DIST.TIMEOUT = 1800  # seconds to wait for the other processes (rendezvous, collectives)
_C.INPUT.CHANNEL_ORDER = "bgr"  # bgr (pycls and its model zoo) or rgb; mean and std follow
_C.DEVICE = "auto"  # auto (npu, then gpu, then cpu), cpu, gpu or npu
_C.AMP.OPT_LEVEL = "O0"  # as apex: O0 (fp32), O1 (autocast), O2 (fp16 model, fp32 master)
_C.AMP.LOSS_SCALE = "dynamic"  # or a number (the seed uses 128)
_C.AMP.DTYPE = "auto"  # auto (float16 on accelerators, bfloat16 on cpu), float16, bfloat16
_C.AMP.BACKEND = "auto"  # auto (apex when importable), apex or native (torch.amp)
_C.CUDNN.BENCHMARK = True  # pick the fastest algorithms (best for fixed input sizes)
_C.PREC_TIME.WARMUP_ITER, _C.PREC_TIME.NUM_ITER = 3, 30  # warm-up left out of timings and fps
_C.PROFILE.ENABLED, _C.PROFILE.NUM_STEPS = False, 5  # trace steps into OUT_DIR (--profperf 1)
_C.DESC = ""
_C.VERBOSE = True
_C.NUM_GPUS = 1  # number of processes (devices)
_C.OUT_DIR, _C.CFG_DEST = "/tmp", "config.yaml"  # output folder; dumped config's name in it
_C.RNG_SEED = 1
_C.DETERMINISTIC = False  # deterministic algorithms only (CPU runs repeat bit for bit)
_C.LOG_DEST, _C.LOG_PERIOD = "stdout", 10  # stdout or file; period in iterations

_CFG_DEFAULT = _C.clone()
_CFG_DEFAULT.freeze()

# Keys that take one of a few words (registry names are checked by builders.check_cfg_names)
_CHOICES = {
    "DEVICE": ["auto", "cpu", "gpu", "npu"],
    "AMP.OPT_LEVEL": ["O0", "O1", "O2"],
    "AMP.DTYPE": ["auto", "float16", "bfloat16"],
    "AMP.BACKEND": ["auto", "apex", "native"],
    "MODEL.MEMORY_FORMAT": ["auto", "channels_last", "contiguous"],
    "TRAIN.SPLIT": ["train", "val"],
    "TEST.SPLIT": ["train", "val"],
    "LOG_DEST": ["stdout", "file"],
    "INPUT.CHANNEL_ORDER": ["bgr", "rgb"],
    "DATA_LOADER.MP_CONTEXT": ["auto", "forkserver", "spawn", "fork"],
}

# Interval each number (each entry of a list) must lie in; any other number: [0, inf)
_RANGES = {
    "(0, inf)": "MODEL.NUM_CLASSES TRAIN.BATCH_SIZE TRAIN.IM_SIZE TEST.BATCH_SIZE TEST.IM_SIZE "
    "NUM_GPUS OPTIM.MAX_EPOCH LOG_PERIOD TRAIN.EVAL_PERIOD TRAIN.CHECKPOINT_PERIOD DIST.TIMEOUT "
    "BN.NUM_SAMPLES_PRECISE OPTIM.BASE_LR OPTIM.LR_MULT BN.EPS OPTIM.EMA_UPDATE_PERIOD "
    "PREC_TIME.NUM_ITER PROFILE.NUM_STEPS RESNET.NUM_GROUPS RESNET.WIDTH_PER_GROUP ANYNET.STEM_W "
    "ANYNET.DEPTHS ANYNET.WIDTHS ANYNET.STRIDES ANYNET.BOT_MULS ANYNET.GROUP_WS REGNET.STEM_W "
    "REGNET.STRIDE REGNET.DEPTH REGNET.W0 REGNET.WM REGNET.GROUP_W REGNET.BOT_MUL EN.STEM_W "
    "EN.DEPTHS EN.WIDTHS EN.EXP_RATIOS EN.STRIDES EN.KERNELS EN.HEAD_W",
    "[0, 1)": "TRAIN.LABEL_SMOOTHING EN.DC_RATIO EN.DROPOUT_RATIO OPTIM.MOMENTUM OPTIM.DAMPENING "
    "OPTIM.BETA1 OPTIM.BETA2 OPTIM.EMA_ALPHA",
    "[0, 1]": "TRAIN.HFLIP DATA_LOADER.MAX_BAD_FRACTION OPTIM.MIN_LR OPTIM.WARMUP_FACTOR BN.MOM",
    "(0, 1]": "EN.SE_R ANYNET.SE_R REGNET.SE_R TRAIN.CROP_SCALE",
    "[0, 2147483647]": "RNG_SEED",  # numpy takes seeds below 2**32, and each rank adds its rank
}

# A config is a few KB of text: larger files and values are refused
_MAX_CFG_BYTES = 1024**2
_MAX_VALUE_CHARS = 4096


def _excerpt(value, limit=60):
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _all_keys(node, prefix=""):
    keys = []
    for k, v in node.items():
        keys += _all_keys(v, prefix + k + ".") if isinstance(v, CfgNode) else [prefix + k]
    return keys


def _get(key, node=_C):
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _key_error(key, value, where, unknown=False):
    """Words a key yacs refused: unknown (or below a leaf key), a section, or of another type."""
    default = _get(key, _CFG_DEFAULT)
    if isinstance(value, dict) and value and not isinstance(default, CfgNode):
        key, unknown = "{}.{}".format(key, next(iter(value))), True
    if unknown:
        close = difflib.get_close_matches(key, _all_keys(_CFG_DEFAULT), n=1, cutoff=0.6)
        hint = "did you mean {}?".format(close[0]) if close else "see pycls/core/config.py"
        return PyclsError("unknown config key {} in {}: {}".format(_excerpt(key), where, hint))
    if isinstance(default, CfgNode):
        return PyclsError("config key {} in {} is a section; give its keys".format(key, where))
    msg = "config key {} in {} takes a {} (like {!r}), not {}"
    return PyclsError(
        msg.format(key, where, type(default).__name__, default, _excerpt(repr(value)))
    )


def _for_yacs(data, where, prefix=""):
    """Readies values for yacs, which keeps ints for floats, evals str keys' text and takes None."""
    out = {}
    for k, v in data.items():
        key, default = prefix + str(k), _get(prefix + str(k), _CFG_DEFAULT)
        chars = len(v if isinstance(v, str) else repr(v))
        if chars > _MAX_VALUE_CHARS and not isinstance(v, dict):
            msg = "config key {} in {} has a value of {} characters ({}); no config value is "
            raise PyclsError((msg + "so long").format(key, where, chars, _excerpt(v)))
        v = v if isinstance(default, str) else CfgNode._decode_cfg_value(v)  # as yacs will
        if isinstance(v, dict):
            v = _for_yacs(v, where, key + ".")
        elif v is None and default is not None:
            raise _key_error(key, v, where)
        elif isinstance(default, float) and type(v) is int:
            v = float(v)
        elif isinstance(default, str) and type(v) in (str, int, float):
            v = repr(str(v)) if isinstance(v, str) or key == "AMP.LOSS_SCALE" else v
        out[str(k)] = v
    return out


def _merge(data, where):
    """Merges a dict of user values into cfg with yacs's merge, its errors made one line."""
    if not isinstance(data, dict):
        msg = "config {} holds {}, not a mapping of config keys"
        raise PyclsError(msg.format(where, _excerpt(data)))
    try:
        _C.merge_from_other_cfg(CfgNode(_for_yacs(data, where)))
    except (KeyError, ValueError, AssertionError) as e:  # yacs names the key in its message
        text = str(e.args[0]) if e.args else ""
        found = re.match(r"Key (.+?) with value", text) or re.search(r"key: (.+)$", text)
        if not found:
            raise
        key, unknown = found.group(1), isinstance(e, KeyError)
        raise _key_error(key, _get(key, data), where, unknown) from None


class _Refused(yaml.YAMLError):
    """A YAML feature no config needs."""


class _Loader(yaml.SafeLoader):
    """YAML's safe loader, refusing anchors and aliases (no alias bombs) and keys given twice."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if getattr(event, "anchor", None) is not None:
            msg = "uses a YAML anchor or alias (line {}); write the values out"
            raise _Refused(msg.format(event.start_mark.line + 1))
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        lines = {}
        for key, _ in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else id(key)
            if name in lines:
                msg = "sets {} twice (lines {} and {}); keep one"
                raise _Refused(msg.format(_excerpt(name), lines[name], key.start_mark.line + 1))
            lines[name] = key.start_mark.line + 1
        return super().construct_mapping(node, deep)


def _load_yaml(text):
    try:
        return yaml.load(text, Loader=_Loader)
    except RecursionError:
        raise _Refused("is nested too deeply; a config is small text") from None


def merge_from_file(path):
    """Merges a YAML config file (not a .py one: yacs would run it) into cfg."""
    if not path.endswith((".yaml", ".yml")):
        raise PyclsError("config {} is not a .yaml file; only YAML configs load".format(path))
    if not os.path.isfile(path):
        what = "is not a regular file" if os.path.exists(path) else "does not exist"
        what = "is a folder, not a file" if os.path.isdir(path) else what
        raise PyclsError("config file {} {}; check --cfg".format(path, what))
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_CFG_BYTES + 1)
    except OSError as e:
        msg = "cannot read config {} ({}); check --cfg"
        raise PyclsError(msg.format(path, e.strerror)) from None
    if len(data) > _MAX_CFG_BYTES:
        msg = "config {} is larger than {} MiB; a config is small text, check --cfg"
        raise PyclsError(msg.format(path, _MAX_CFG_BYTES // 1024**2))
    try:
        data = _load_yaml(data.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        msg = "config {} is not UTF-8 text (byte 0x{:02x} at offset {}); save it as UTF-8"
        raise PyclsError(msg.format(path, data[e.start], e.start)) from None
    except _Refused as e:
        raise PyclsError("config {} {}".format(path, e)) from None
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        at = " at line {}".format(line + 1) if line is not None else ""
        raise PyclsError("config {} is not valid YAML{}; fix its syntax".format(path, at)) from None
    if data is not None:
        _merge(data, path)


def merge_from_list(opts):
    """Merges KEY VALUE pairs into cfg (a value is read as YAML, but a str key keeps its text)."""
    if len(opts) % 2 != 0:
        raise PyclsError("config overrides must be KEY VALUE pairs; got {}".format(_excerpt(opts)))
    for key, value in zip(opts[0::2], opts[1::2]):
        if value and not isinstance(_get(key, _CFG_DEFAULT), str):
            with contextlib.suppress(yaml.YAMLError):  # else yacs reads it as text
                value = _load_yaml(value)
        for part in reversed(key.split(".")):
            value = {part: value}
        _merge(value, "the command line")


def assert_cfg():
    """Checks config values; a bad one ends in a PyclsError naming the key and the fix."""
    for key, choices in _CHOICES.items():
        if _get(key) not in choices:
            msg = "config key {} is {}; choose one of {}"
            raise PyclsError(msg.format(key, _excerpt(repr(_get(key))), ", ".join(choices)))
    for key in _all_keys(_C):
        if type(_get(key, _CFG_DEFAULT)) not in (int, float, list):
            continue
        value = _get(key)
        bounds = next((b for b, keys in _RANGES.items() if key in keys.split()), "[0, inf)")
        low, high = (float(b) for b in bounds[1:-1].split(", "))
        for x in value if isinstance(value, list) else [value]:
            finite = type(x) in (int, float) and math.isfinite(x)
            above = finite and (x > low if bounds[0] == "(" else x >= low)
            if not above or not (x < high if bounds[-1] == ")" else x <= high):
                words = {"(0, inf)": "above 0", "[0, inf)": "0 or more"}.get(bounds, "in " + bounds)
                what = "every entry" if isinstance(value, list) else "it"
                what += " must be " + (words if finite else "a finite number")
                raise PyclsError("config key {} is {}; {}".format(key, _excerpt(value), what))
    scale = _C.AMP.LOSS_SCALE
    try:
        ok = scale == "dynamic" or 0 < float(scale) < math.inf
    except ValueError:
        ok = False
    if not ok:
        msg = "config key AMP.LOSS_SCALE is {!r}; give a number above 0 or dynamic"
        raise PyclsError(msg.format(scale))
    if len(_C.TRAIN.CROP_SCALE) != 2 or _C.TRAIN.CROP_SCALE[0] > _C.TRAIN.CROP_SCALE[1]:
        msg = "config key TRAIN.CROP_SCALE must be [low, high] with 0 < low <= high <= 1"
        raise PyclsError(msg)
    if _C.BN.PRECISE_BATCH_SIZE % _C.TRAIN.BATCH_SIZE:
        msg = "config key BN.PRECISE_BATCH_SIZE is {} and TRAIN.BATCH_SIZE {}; set it to 0 or a "
        msg += "multiple of TRAIN.BATCH_SIZE (its passes join whole train batches)"
        raise PyclsError(msg.format(_C.BN.PRECISE_BATCH_SIZE, _C.TRAIN.BATCH_SIZE))
    if os.path.isfile(_C.OUT_DIR):
        raise PyclsError("OUT_DIR {} is a file; set OUT_DIR to a folder".format(_C.OUT_DIR))


def loss_scale():
    """Returns AMP.LOSS_SCALE as a float, or None for a dynamic loss scale."""
    return None if _C.AMP.LOSS_SCALE == "dynamic" else float(_C.AMP.LOSS_SCALE)


def dump_cfg():
    """Dumps the config to OUT_DIR/CFG_DEST (atomically) and returns its path."""
    cfg_file = os.path.join(_C.OUT_DIR, _C.CFG_DEST)
    return write_atomic(cfg_file, lambda f: _C.dump(stream=f), text=True)


def load_cfg(cfg_file, opts=()):
    """Resets cfg, merges a YAML file and KEY VALUE pairs, checks it: how every tool loads."""
    reset_cfg()
    merge_from_file(cfg_file)
    merge_from_list([str(x) for x in opts])
    assert_cfg()


def reset_cfg():
    """Resets the config to its defaults."""
    _C.merge_from_other_cfg(_CFG_DEFAULT)


def load_cfg_from_args(argv, description="Config file options."):
    """Loads cfg from a CLI's arguments (--cfg FILE, flags, KEY VALUE...); returns the flags."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cfg", dest="cfg_file", required=True, help="config file (.yaml)")
    parser.add_argument("--device", choices=_CHOICES["DEVICE"], help="sets DEVICE")
    parser.add_argument("--data_path", help="dataset root with train/ and val/ folders")
    parser.add_argument("--rank_id", type=int, help="rank of this process (seed-style launch)")
    parser.add_argument("--device_id", type=int, help="device index of this process")
    parser.add_argument("--profperf", type=int, choices=[0, 1], default=0, help="write a trace")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs; see config.py")
    # pycls's CLIs put --flags after the KEY VALUE pairs: move them (and their values) first
    takes_value = {o: a.nargs != 0 for a in parser._actions for o in a.option_strings}
    flags, rest, i = [], [], 0
    while i < len(argv):
        name = argv[i].split("=", 1)[0]
        n = 1 + bool(takes_value.get(name) and "=" not in argv[i] and i + 1 < len(argv))
        (flags if name in takes_value else rest).extend(argv[i : i + n])
        i += n
    args = parser.parse_args(flags + rest)
    flags = {"DEVICE": args.device, "DATA_LOADER.DATA_PATH": args.data_path}
    flags["PROFILE.ENABLED"] = "True" if args.profperf else None
    flag_opts = [x for kv in flags.items() if kv[1] for x in kv]
    load_cfg(args.cfg_file, flag_opts + args.opts)
    return args
