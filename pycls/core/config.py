"""Configuration (a yacs tree): pycls's keys and defaults plus the engine's new keys."""

import argparse
import ast
import difflib
import os

import yaml
from yacs.config import CfgNode

from pycls.core.errors import PyclsError
from pycls.core.io import write_atomic

# Global config object; example usage: from pycls.core.config import cfg
_C = CfgNode()
cfg = _C


# ---------------------------------- Model options ----------------------------------- #
_C.MODEL = CfgNode()

# Model type (effnet, anynet, regnet, resnet)
_C.MODEL.TYPE = ""

# Number of weight layers
_C.MODEL.DEPTH = 0

# Number of classes
_C.MODEL.NUM_CLASSES = 10

# Loss function (cross_entropy)
_C.MODEL.LOSS_FUN = "cross_entropy"

# Activation function (relu or silu/swish)
_C.MODEL.ACTIVATION_FUN = "relu"

# Perform activation inplace if implemented
_C.MODEL.ACTIVATION_INPLACE = True

# Memory format of activations: auto (channels_last where it is faster), channels_last,
# or contiguous
_C.MODEL.MEMORY_FORMAT = "auto"

# Wrap the model in torch.compile (compile time is paid in the first iterations)
_C.MODEL.COMPILE = False


# ---------------------------------- ResNet options ---------------------------------- #
_C.RESNET = CfgNode()

# Transformation function (basic_transform or bottleneck_transform)
_C.RESNET.TRANS_FUN = "basic_transform"

# Number of groups to use (1 -> ResNet; > 1 -> ResNeXt)
_C.RESNET.NUM_GROUPS = 1

# Width of each group (64 -> ResNet; 4 -> ResNeXt)
_C.RESNET.WIDTH_PER_GROUP = 64

# Apply stride to 1x1 conv (True -> MSRA; False -> fb.torch)
_C.RESNET.STRIDE_1X1 = True


# ---------------------------------- AnyNet options ---------------------------------- #
_C.ANYNET = CfgNode()

# Stem type
_C.ANYNET.STEM_TYPE = "simple_stem_in"

# Stem width
_C.ANYNET.STEM_W = 32

# Block type
_C.ANYNET.BLOCK_TYPE = "res_bottleneck_block"

# Depth for each stage (number of blocks in the stage)
_C.ANYNET.DEPTHS = []

# Width for each stage (width of each block in the stage)
_C.ANYNET.WIDTHS = []

# Strides for each stage (applies to the first block of each stage)
_C.ANYNET.STRIDES = []

# Bottleneck multipliers for each stage (applies to bottleneck block)
_C.ANYNET.BOT_MULS = []

# Group widths for each stage (applies to bottleneck block)
_C.ANYNET.GROUP_WS = []

# Head width for first conv in head (if 0 conv is omitted, as is the default)
_C.ANYNET.HEAD_W = 0

# Whether SE is enabled for res_bottleneck_block
_C.ANYNET.SE_ON = False

# SE ratio
_C.ANYNET.SE_R = 0.25


# ---------------------------------- RegNet options ---------------------------------- #
_C.REGNET = CfgNode()

# Stem type
_C.REGNET.STEM_TYPE = "simple_stem_in"

# Stem width
_C.REGNET.STEM_W = 32

# Block type
_C.REGNET.BLOCK_TYPE = "res_bottleneck_block"

# Stride of each stage
_C.REGNET.STRIDE = 2

# Squeeze-and-Excitation (RegNetY)
_C.REGNET.SE_ON = False
_C.REGNET.SE_R = 0.25

# Depth
_C.REGNET.DEPTH = 10

# Initial width
_C.REGNET.W0 = 32

# Slope
_C.REGNET.WA = 5.0

# Quantization
_C.REGNET.WM = 2.5

# Group width
_C.REGNET.GROUP_W = 16

# Bottleneck multiplier (bm = 1 / b from the paper)
_C.REGNET.BOT_MUL = 1.0

# Head width for first conv in head (if 0 conv is omitted, as is the default)
_C.REGNET.HEAD_W = 0


# ------------------------------- EfficientNet options ------------------------------- #
_C.EN = CfgNode()

# Stem width
_C.EN.STEM_W = 32

# Depth for each stage (number of blocks in the stage)
_C.EN.DEPTHS = []

# Width for each stage (width of each block in the stage)
_C.EN.WIDTHS = []

# Expansion ratios for MBConv blocks in each stage
_C.EN.EXP_RATIOS = []

# Squeeze-and-Excitation (SE) ratio
_C.EN.SE_R = 0.25

# Strides for each stage (applies to the first block of each stage)
_C.EN.STRIDES = []

# Kernel sizes for each stage
_C.EN.KERNELS = []

# Head width
_C.EN.HEAD_W = 1280

# Drop connect ratio
_C.EN.DC_RATIO = 0.0

# Dropout ratio
_C.EN.DROPOUT_RATIO = 0.0


# -------------------------------- Batch norm options -------------------------------- #
_C.BN = CfgNode()

# BN epsilon
_C.BN.EPS = 1e-5

# BN momentum (BN momentum in PyTorch = 1 - BN momentum in Caffe2)
_C.BN.MOM = 0.1

# Precise BN stats (as pycls and the seed's port): after each epoch, BN running stats are
# recomputed from NUM_SAMPLES_PRECISE training images (all processes together)
_C.BN.USE_PRECISE_STATS = True
_C.BN.NUM_SAMPLES_PRECISE = 8192

# Initialize the gamma of the final BN of each block to zero
_C.BN.ZERO_INIT_FINAL_GAMMA = False

# Use a different weight decay for BN layers
_C.BN.USE_CUSTOM_WEIGHT_DECAY = False
_C.BN.CUSTOM_WEIGHT_DECAY = 0.0


# -------------------------------- Optimizer options --------------------------------- #
_C.OPTIM = CfgNode()

# Type of optimizer select from {'sgd', 'adam', 'adamw'}
_C.OPTIM.OPTIMIZER = "sgd"

# Learning rate ranges from BASE_LR to MIN_LR*BASE_LR according to the LR_POLICY
_C.OPTIM.BASE_LR = 0.1
_C.OPTIM.MIN_LR = 0.0

# Learning rate policy select from {'cos', 'exp', 'lin', 'steps'}
_C.OPTIM.LR_POLICY = "cos"

# Steps for 'steps' policy (in epochs)
_C.OPTIM.STEPS = []

# Learning rate multiplier for 'steps' policy
_C.OPTIM.LR_MULT = 0.1

# Maximal number of epochs
_C.OPTIM.MAX_EPOCH = 200

# Momentum
_C.OPTIM.MOMENTUM = 0.9

# Momentum dampening
_C.OPTIM.DAMPENING = 0.0

# Nesterov momentum
_C.OPTIM.NESTEROV = True

# Betas (for Adam/AdamW optimizer)
_C.OPTIM.BETA1 = 0.9
_C.OPTIM.BETA2 = 0.999

# L2 regularization
_C.OPTIM.WEIGHT_DECAY = 5e-4

# Use a different weight decay for all biases (excluding those in BN layers)
_C.OPTIM.BIAS_USE_CUSTOM_WEIGHT_DECAY = False
_C.OPTIM.BIAS_CUSTOM_WEIGHT_DECAY = 0.0

# Start the warm up from OPTIM.BASE_LR * OPTIM.WARMUP_FACTOR
_C.OPTIM.WARMUP_FACTOR = 0.1

# Gradually warm up the OPTIM.BASE_LR over this number of epochs
_C.OPTIM.WARMUP_EPOCHS = 0

# Exponential Moving Average (EMA) update value (0 disables the EMA model)
_C.OPTIM.EMA_ALPHA = 0.0

# Iteration frequency with which to update EMA weights
_C.OPTIM.EMA_UPDATE_PERIOD = 32

# Clip the global gradient norm to this value (0 disables clipping)
_C.OPTIM.GRAD_CLIP = 0.0


# --------------------------------- Training options --------------------------------- #
_C.TRAIN = CfgNode()

# Dataset and split (imagenet: an ImageNet-layout folder; synthetic: random tensors)
_C.TRAIN.DATASET = ""
_C.TRAIN.SPLIT = "train"

# Total mini-batch size (over all processes)
_C.TRAIN.BATCH_SIZE = 128

# Image size
_C.TRAIN.IM_SIZE = 224

# Evaluate model on test data every eval period epochs
_C.TRAIN.EVAL_PERIOD = 1

# Save model checkpoint every checkpoint period epochs
_C.TRAIN.CHECKPOINT_PERIOD = 1

# Keep only the newest N epoch checkpoints (0 keeps all); the best one is always kept
_C.TRAIN.CHECKPOINT_KEEP = 0

# Resume training from the latest checkpoint in the output directory
_C.TRAIN.AUTO_RESUME = True

# Weights to start training from (all keys must match)
_C.TRAIN.WEIGHTS = ""

# Pretrained weights to fine-tune from (a head of another size is skipped and reported)
_C.TRAIN.PRETRAINED = ""

# Load only the TRAIN.PRETRAINED tensors that fit (any that differ keep their initial values);
# without it, any difference beyond the classifier head is an error
_C.TRAIN.PRETRAINED_PARTIAL = False

# Label smoothing value in 0 to 1 where (0 gives no smoothing)
_C.TRAIN.LABEL_SMOOTHING = 0.0

# Batch mixup regularization value in 0 to 1 (0 gives no mixup)
_C.TRAIN.MIXUP_ALPHA = 0.0

# Batch cutmix regularization value in 0 to 1 (0 gives no cutmix)
_C.TRAIN.CUTMIX_ALPHA = 0.0

# Standard deviation for AlexNet-style PCA jitter (0 gives no PCA jitter)
_C.TRAIN.PCA_STD = 0.1

# Data augmentation to use ("", "AutoAugment", "RandAugment_N2_M0.5", etc.)
_C.TRAIN.AUGMENT = ""

# Area range of the random resized crop, as fractions of the image (ImageNet: 0.08 to 1)
_C.TRAIN.CROP_SCALE = [0.08, 1.0]

# Probability of a horizontal flip (0 for data where a flip changes the class, like digits)
_C.TRAIN.HFLIP = 0.5


# --------------------------------- Testing options ---------------------------------- #
_C.TEST = CfgNode()

# Dataset and split
_C.TEST.DATASET = ""
_C.TEST.SPLIT = "val"

# Total mini-batch size (over all processes)
_C.TEST.BATCH_SIZE = 200

# Image size (the short side is resized to this, then center-cropped to TRAIN.IM_SIZE)
_C.TEST.IM_SIZE = 256

# Weights to use for testing
_C.TEST.WEIGHTS = ""


# ------------------------------- Data loader options -------------------------------- #
_C.DATA_LOADER = CfgNode()

# Dataset root: a folder with train/ and val/, one sub-folder per class
_C.DATA_LOADER.DATA_PATH = ""

# Number of data loader workers per process (capped at the CPUs available)
_C.DATA_LOADER.NUM_WORKERS = 8

# Load data to pinned host memory (only where there is an accelerator)
_C.DATA_LOADER.PIN_MEMORY = True

# Stop the run when more than this fraction of an epoch's images are unreadable
_C.DATA_LOADER.MAX_BAD_FRACTION = 0.01

# Epoch length of TRAIN/TEST.DATASET synthetic (0: ImageNet's 1281167 train / 50000 val)
_C.DATA_LOADER.SYNTHETIC_LENGTH = 0

# How loader workers start: auto (forkserver where it exists, else spawn), forkserver,
# spawn or fork. fork is unsafe once the process has threads (it can deadlock a worker)
_C.DATA_LOADER.MP_CONTEXT = "auto"

# Seconds a process waits for a batch from its loader workers before it stops with an
# error (0: wait forever; not used with NUM_WORKERS 0)
_C.DATA_LOADER.TIMEOUT = 600

# --------------------------------- Distributed options ------------------------------ #
_C.DIST = CfgNode()

# Seconds a process waits for the others in the process group's rendezvous and in each
# collective (all_reduce, barrier, DDP's gradient sync) before it stops with an error
_C.DIST.TIMEOUT = 1800


# ---------------------------------- Input options ----------------------------------- #
_C.INPUT = CfgNode()

# Channel order of the images the network sees: bgr (as pycls and the seed's port; pycls
# model-zoo weights expect it) or rgb (as torchvision). The mean and std follow the order.
_C.INPUT.CHANNEL_ORDER = "bgr"


# --------------------------------- Device options ----------------------------------- #
# Device to run on: auto (npu, then gpu, then cpu), cpu, gpu or npu
_C.DEVICE = "auto"


# ------------------------------ Mixed precision options ----------------------------- #
_C.AMP = CfgNode()

# Opt level as apex: O0 (fp32), O1 (autocast), O2 (fp16 model, fp32 master weights)
_C.AMP.OPT_LEVEL = "O0"

# Loss scale: a number (the seed uses 128) or "dynamic"
_C.AMP.LOSS_SCALE = "dynamic"

# Low-precision dtype: auto (float16 on accelerators, bfloat16 on cpu), float16, bfloat16
_C.AMP.DTYPE = "auto"

# Backend: auto (apex when importable, else torch.amp), apex or native (torch.amp)
_C.AMP.BACKEND = "auto"


# ---------------------------------- CUDNN options ----------------------------------- #
_C.CUDNN = CfgNode()

# Perform benchmarking to select fastest CUDNN algorithms (best for fixed input sizes)
_C.CUDNN.BENCHMARK = True


# ------------------------------- Precise time options ------------------------------- #
_C.PREC_TIME = CfgNode()

# Number of warm-up iterations (left out of timings and of the fps figures)
_C.PREC_TIME.WARMUP_ITER = 3

# Number of iterations to compute avg time
_C.PREC_TIME.NUM_ITER = 30


# -------------------------------- Profiling options --------------------------------- #
_C.PROFILE = CfgNode()

# Write a torch.profiler Chrome trace of a few training steps to OUT_DIR (--profperf 1)
_C.PROFILE.ENABLED = False

# Number of steps traced (after one step of warm-up)
_C.PROFILE.NUM_STEPS = 5


# ----------------------------------- Misc options ----------------------------------- #
# Optional description of a config
_C.DESC = ""

# If True output additional info to log
_C.VERBOSE = True

# Number of devices (processes) the config is written for; the launchers set it
_C.NUM_GPUS = 1

# Output directory
_C.OUT_DIR = "/tmp"

# Config destination (in OUT_DIR)
_C.CFG_DEST = "config.yaml"

# Seed of every random number generator; runs with the same seed repeat on CPU
_C.RNG_SEED = 1

# Use deterministic algorithms only (slower; makes CPU runs repeat bit for bit)
_C.DETERMINISTIC = False

# Log destination ('stdout' or 'file')
_C.LOG_DEST = "stdout"

# Log period in iters
_C.LOG_PERIOD = 10


# ---------------------------------- Default config ---------------------------------- #
_CFG_DEFAULT = _C.clone()
_CFG_DEFAULT.freeze()

# Keys that take a number or a word; numbers are kept as strings
_NUMBER_OR_WORD_KEYS = {"AMP.LOSS_SCALE"}

# Allowed values of the keys that take one of a few words; the keys whose choices are a
# registry's names (MODEL.LOSS_FUN, MODEL.ACTIVATION_FUN, OPTIM.OPTIMIZER, OPTIM.LR_POLICY) are
# checked by that registry (see _check_registry_keys)
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

# Largest RNG_SEED (numpy takes seeds below 2**32, and each rank adds its rank)
_MAX_SEED = 2**31 - 1

# Keys that must hold a number above zero
_POSITIVE = [
    "MODEL.NUM_CLASSES",
    "TRAIN.BATCH_SIZE",
    "TRAIN.IM_SIZE",
    "TEST.BATCH_SIZE",
    "TEST.IM_SIZE",
    "OPTIM.MAX_EPOCH",
    "NUM_GPUS",
    "LOG_PERIOD",
    "TRAIN.EVAL_PERIOD",
    "TRAIN.CHECKPOINT_PERIOD",
    "BN.NUM_SAMPLES_PRECISE",
    "DIST.TIMEOUT",
]


def _all_keys(node, prefix=""):
    """Lists the full names of every leaf key of a config node."""
    keys = []
    for k, v in node.items():
        name = prefix + k
        keys.extend(_all_keys(v, name + ".") if isinstance(v, CfgNode) else [name])
    return keys


def _unknown_key_error(key, where):
    """Builds the error for a key that is not in the config tree."""
    close = difflib.get_close_matches(key, _all_keys(_CFG_DEFAULT), n=1, cutoff=0.6)
    hint = "did you mean {}?".format(close[0]) if close else "see pycls/core/config.py"
    return PyclsError("unknown config key {} in {}: {}".format(_excerpt(key), where, hint))


def _default_of(key, where):
    """Returns the default value of a full key name, or raises a clear error."""
    node = _CFG_DEFAULT
    for part in key.split("."):
        if not isinstance(node, CfgNode) or part not in node:
            raise _unknown_key_error(key, where)
        node = node[part]
    return node


def _coerce(key, value, where):
    """Checks a value against the key's default type, widening int to float."""
    default = _default_of(key, where)
    if isinstance(default, CfgNode):
        if not isinstance(value, dict):
            raise PyclsError("config key {} in {} is a section; give its keys".format(key, where))
        return {k: _coerce(key + "." + k, v, where) for k, v in value.items()}
    chars = len(value) if isinstance(value, str) else len(repr(value))
    if chars > _MAX_VALUE_CHARS:
        msg = "config key {} in {} has a value of {} characters ({}); no config value is so long"
        raise PyclsError(msg.format(key, where, chars, _excerpt(value)))
    if key in _NUMBER_OR_WORD_KEYS and isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str) and not isinstance(default, str):
        # YAML reads 1e-5 as a string; decode it as yacs does
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return list(value)
    if type(value) is not type(default):
        msg = "config key {} in {} takes a {} (like {!r}), not {}"
        raise PyclsError(
            msg.format(key, where, type(default).__name__, default, _excerpt(repr(value)))
        )
    return value


def _merge_dict(data, where):
    """Merges a nested dict of config values into cfg, with clear errors."""
    if data is None:
        return
    if not isinstance(data, dict):
        msg = "{} must hold a mapping of config keys, not {}"
        raise PyclsError(msg.format(where, _excerpt(repr(data))))
    _set_values(_C, {k: _coerce(k, v, where) for k, v in data.items()})


def _set_values(node, data):
    """Writes checked values into a config node (yacs would decode strings again)."""
    if node.is_frozen():
        raise PyclsError("the config is frozen; set keys before the run starts")
    for k, v in data.items():
        if isinstance(v, dict):
            _set_values(node[k], v)
        else:
            node[k] = v


# A config is a few KB of text: larger files, documents or values are refused
_MAX_CFG_BYTES = 1024**2
_MAX_VALUE_CHARS = 4096

# Longest excerpt of a user's value an error line shows
_MAX_EXCERPT = 60


def _excerpt(value):
    """Returns a string (or the repr of another value) cut to a short excerpt for an error line."""
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= _MAX_EXCERPT else text[: _MAX_EXCERPT - 3] + "..."


def _node_size(node, where, key, sizes, open_ids):
    """Returns a YAML node's size with aliases expanded (characters of its scalars); refuses
    documents past _MAX_CFG_BYTES (alias bombs), nodes that hold themselves and repeated keys."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_ids:
        raise PyclsError(
            "config {} holds a YAML alias to itself at {}; remove it".format(where, key)
        )
    open_ids.add(id(node))
    if isinstance(node, yaml.ScalarNode):
        size = len(node.value) + 1
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_node_size(n, where, key, sizes, open_ids) for n in node.value)
    else:
        size, lines = 1, {}
        for k, v in node.value:
            scalar = isinstance(k, yaml.ScalarNode)
            name = "{}.{}".format(key, k.value) if key and scalar else str(k.value)
            if scalar and k.value in lines:
                msg = "config {} sets {} twice (lines {} and {}); keep one"
                line = k.start_mark.line + 1
                raise PyclsError(msg.format(where, _excerpt(name), lines[k.value], line))
            if scalar:
                lines[k.value] = k.start_mark.line + 1
            size += _node_size(k, where, key, sizes, open_ids)
            size += _node_size(v, where, name, sizes, open_ids)
    open_ids.discard(id(node))
    if size > _MAX_CFG_BYTES:
        msg = "config {} expands (through YAML aliases) past {} MiB; a config is small text"
        raise PyclsError(msg.format(where, _MAX_CFG_BYTES // 1024**2))
    sizes[id(node)] = size
    return size


def _load_yaml(text, where):
    """Parses YAML text safely: no Python objects, no alias bombs, no repeated keys."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _node_size(node, where, "", {}, set())
        return loader.construct_document(node)
    except RecursionError:
        msg = "config {} is nested too deeply; a config is small text"
        raise PyclsError(msg.format(where)) from None
    finally:
        loader.dispose()


def _read_cfg_text(path):
    """Reads a config file as UTF-8 text, refusing folders, huge files and other encodings."""
    if os.path.isdir(path):
        raise PyclsError("config {} is a folder, not a file; check --cfg".format(path))
    if not os.path.isfile(path):
        what = "is not a regular file" if os.path.exists(path) else "does not exist"
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
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        msg = "config {} is not UTF-8 text (byte 0x{:02x} at offset {}); save it as UTF-8"
        raise PyclsError(msg.format(path, data[e.start], e.start)) from None


def merge_from_file(path):
    """Merges a YAML config file into cfg (a .py config is refused: yacs would run it)."""
    if not path.endswith((".yaml", ".yml")):
        raise PyclsError("config {} is not a .yaml file; only YAML configs load".format(path))
    text = _read_cfg_text(path)
    try:
        data = _load_yaml(text, path)
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        at = " at line {}".format(line + 1) if line is not None else ""
        raise PyclsError("config {} is not valid YAML{}; fix its syntax".format(path, at)) from None
    _merge_dict(data, path)


def merge_from_list(opts):
    """Merges trailing KEY VALUE pairs (values parsed as YAML scalars) into cfg."""
    if len(opts) % 2 != 0:
        raise PyclsError("config overrides must be KEY VALUE pairs; got {}".format(_excerpt(opts)))
    for key, text in zip(opts[0::2], opts[1::2]):
        try:
            value = _load_yaml(text, "the command line") if text != "" else ""
        except yaml.YAMLError:
            value = text
        data = text if isinstance(_default_of(key, "the command line"), str) else value
        for part in reversed(key.split(".")):
            data = {part: data}
        _merge_dict(data, "the command line")


def assert_cfg():
    """Checks config values; a bad one ends in a PyclsError naming the key and the fix."""
    for key, choices in _CHOICES.items():
        value = _get(key)
        if value not in choices:
            msg = "config key {} is {}; choose one of {}"
            raise PyclsError(msg.format(key, _excerpt(repr(value)), ", ".join(choices)))
    for key in _POSITIVE:
        if _get(key) <= 0:
            raise PyclsError("config key {} is {}; it must be above 0".format(key, _get(key)))
    scale = _C.AMP.LOSS_SCALE
    if scale != "dynamic":
        try:
            ok = float(scale) > 0
        except ValueError:
            ok = False
        if not ok:
            msg = "config key AMP.LOSS_SCALE is {!r}; give a number above 0 or dynamic"
            raise PyclsError(msg.format(scale))
    if _C.DATA_LOADER.NUM_WORKERS < 0:
        raise PyclsError("config key DATA_LOADER.NUM_WORKERS must be 0 or more")
    low, high = (list(_C.TRAIN.CROP_SCALE) + [0, 0])[:2]
    if len(_C.TRAIN.CROP_SCALE) != 2 or not 0 < low <= high <= 1:
        msg = "config key TRAIN.CROP_SCALE must be [low, high] with 0 < low <= high <= 1"
        raise PyclsError(msg)
    if not 0.0 <= _C.TRAIN.HFLIP <= 1.0:
        raise PyclsError("config key TRAIN.HFLIP is a probability: give a value from 0 to 1")
    if not 0.0 <= _C.DATA_LOADER.MAX_BAD_FRACTION <= 1.0:
        raise PyclsError("config key DATA_LOADER.MAX_BAD_FRACTION must be between 0 and 1")
    if _C.DATA_LOADER.TIMEOUT < 0:
        msg = "config key DATA_LOADER.TIMEOUT is {}; give seconds above 0 (0 waits forever)"
        raise PyclsError(msg.format(_C.DATA_LOADER.TIMEOUT))
    if not 0 <= _C.RNG_SEED <= _MAX_SEED:
        msg = "config key RNG_SEED is {}; set it from 0 to {}"
        raise PyclsError(msg.format(_C.RNG_SEED, _MAX_SEED))
    _check_registry_keys()


def _check_registry_keys():
    """Checks the keys that name a registry entry, through the registry that owns the names
    (imported here: they import torch, which loading a config does not need)."""
    import pycls.core.builders as builders
    import pycls.core.optimizer as optimizer
    import pycls.models.blocks as blocks

    builders.get_loss_fun()
    blocks.get_activation(_C.MODEL.ACTIVATION_FUN)
    optimizer.check_optimizer()
    optimizer.get_lr_fun()


def _get(key):
    """Returns the value of a full key name in cfg."""
    node = _C
    for part in key.split("."):
        node = node[part]
    return node


def loss_scale():
    """Returns AMP.LOSS_SCALE as a float, or None for a dynamic loss scale."""
    return None if _C.AMP.LOSS_SCALE == "dynamic" else float(_C.AMP.LOSS_SCALE)


def dump_cfg():
    """Dumps the config to OUT_DIR/CFG_DEST (atomically) and returns its path."""
    cfg_file = os.path.join(_C.OUT_DIR, _C.CFG_DEST)
    return write_atomic(cfg_file, lambda f: _C.dump(stream=f), text=True)


def load_cfg(cfg_file, opts=()):
    """Resets cfg, merges a YAML config file (as written by dump_cfg, or any --cfg) and
    KEY VALUE overrides, then checks it: the one way a tool loads its config."""
    reset_cfg()
    merge_from_file(cfg_file)
    merge_from_list([str(x) for x in opts])
    assert_cfg()


def reset_cfg():
    """Resets the config to its defaults."""
    was_frozen = _C.is_frozen()
    _C.defrost()
    _C.merge_from_other_cfg(_CFG_DEFAULT)
    if was_frozen:
        _C.freeze()


def _flags_first(parser, argv):
    """Moves the parser's --flags (and their values) before the KEY VALUE pairs, as pycls's
    `train_net.py ... NUM_GPUS 2 --device cpu` has them after."""
    takes_value = {o: a.nargs != 0 for a in parser._actions for o in a.option_strings}
    flags, rest, i = [], [], 0
    while i < len(argv):
        name = argv[i].split("=", 1)[0]
        if name in takes_value:
            value = takes_value[name] and "=" not in argv[i] and i + 1 < len(argv)
            flags += argv[i : i + 1 + value]
            i += 1 + value
        else:
            rest.append(argv[i])
            i += 1
    return flags + rest


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
    args = parser.parse_args(_flags_first(parser, argv))
    flags = {"DEVICE": args.device, "DATA_LOADER.DATA_PATH": args.data_path}
    flags["PROFILE.ENABLED"] = "True" if args.profperf else None
    flag_opts = [x for kv in flags.items() if kv[1] for x in kv]
    load_cfg(args.cfg_file, flag_opts + args.opts)
    return args
