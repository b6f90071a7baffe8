"""pycls checkpoints (+ EMA, AMP state, errors; no RNG state: trainer.seed_epoch reseeds every
epoch): atomic saves, model_best.pyth, keep-N pruning, safe (weights_only) one-read loads."""

import contextlib
import os
import pickle
import re
import shutil
import warnings
import zipfile

import torch
import yaml

import pycls.core.distributed as dist
import pycls.core.io as pio
import pycls.core.logging as logging
import pycls.core.net as net
from pycls.core.config import cfg
from pycls.core.errors import PyclsError

logger = logging.get_logger(__name__)

_NAME_RE = re.compile(r"^model_epoch_(\d+)\.pyth$")
_BEST_NAME = "model_best.pyth"
_ERR_KEYS = ("test_err", "ema_err")
_WEIGHT_KEYS = ("model_state", "ema_state", "optimizer_state")
_SAFE = ("torch.", "collections.OrderedDict", "builtins.set", "_codecs.encode")  # in weights_only
_MADE_WITH = " (it was made with MODEL.TYPE {TYPE} and MODEL.NUM_CLASSES {NUM_CLASSES})"
_BN_COUNTER = "num_batches_tracked"  # torch fills in these buffers that old files lack


def get_checkpoint_dir(out_dir=None):
    """Returns the checkpoints folder (OUT_DIR/checkpoints)."""
    return os.path.join(cfg.OUT_DIR if out_dir is None else out_dir, "checkpoints")


def get_checkpoint(epoch, out_dir=None):
    """Returns the path of the checkpoint of an epoch (counted from 1)."""
    return os.path.join(get_checkpoint_dir(out_dir), "model_epoch_{:04d}.pyth".format(epoch))


def checkpoint_epoch(path):
    """Returns the epochs done by an epoch checkpoint, read from its name (None if unnamed)."""
    match = _NAME_RE.match(os.path.basename(path))
    return int(match.group(1)) if match else None


def _epoch_checkpoints(folder):
    """Returns the paths of a folder's epoch checkpoints, oldest first (temp files skipped)."""
    names = os.listdir(folder) if os.path.isdir(folder) else []
    found = sorted((checkpoint_epoch(n), n) for n in names if checkpoint_epoch(n) is not None)
    return [os.path.join(folder, n) for _, n in found]


def get_last_checkpoint(out_dir=None):
    """Returns the path of the newest epoch checkpoint, or None when there is none."""
    return (_epoch_checkpoints(get_checkpoint_dir(out_dir)) or [None])[-1]


def estimate_checkpoint_bytes(model):
    """Estimates a checkpoint's size: 3 copies of the model state (model, momentum, EMA)."""
    return 3 * sum(t.numel() * t.element_size() for t in model.state_dict().values())


def strip_prefixes(key):
    """Strips wrapper prefixes (module., _orig_mod., also nested) from a state dict key."""
    while key.startswith(tuple(attr + "." for attr in net.WRAPPER_ATTRS)):
        key = key.split(".", 1)[1]
    return key


def _list_names(names):  # up to 10, then "and N more"
    more = len(names) - 10
    return ", ".join(names[:10]) + (" and {} more".format(more) if more > 0 else "")


def _first_line(error):  # its type and the first line of its text, cut short
    first = (str(error).strip().splitlines() or [""])[0][:100]
    return "{}: {}".format(type(error).__name__, first) if first else type(error).__name__


def lowest_err(*errs):
    """Returns the lowest of the errors given (None ones left out; inf if none is left)."""
    return min([e for e in errs if e is not None], default=float("inf"))


def _bare_state(model, what):
    """Returns a model's state dict with bare keys; PyclsError if a float tensor is not finite."""
    state = {strip_prefixes(k): v for k, v in net.unwrap_model(model).state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        msg = "{} weights are not finite ({}), so no checkpoint was written; lower OPTIM.BASE_LR "
        msg += "or set OPTIM.GRAD_CLIP and resume from the last checkpoint"
        raise PyclsError(msg.format(what, _list_names(bad)))
    return state


def _link_or_copy(src, dst):  # a hard link, or a copy where the file system has none
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def save_checkpoint(
    model, model_ema, optimizer, epoch, test_err, ema_err, extra=None, best_err=None
):
    """Saves an epoch's checkpoint (main process), as model_best.pyth too if below best_err."""
    # Every process checks the weights (the same on all), so all stop together on NaNs
    model_state = _bare_state(model, "model")
    ema_state = _bare_state(model_ema, "EMA model") if model_ema is not None else None
    if not dist.is_main_proc():
        return None
    err, opt_state = lowest_err(test_err, ema_err), optimizer and optimizer.state_dict()
    checkpoint = {"epoch": epoch, "model_state": model_state, "ema_state": ema_state}
    checkpoint.update(optimizer_state=opt_state, cfg=cfg.dump(), test_err=test_err, ema_err=ema_err)
    checkpoint.update({"best_err": lowest_err(err, best_err), "amp_state": None, **(extra or {})})
    path = target = get_checkpoint(epoch + 1)
    os.makedirs(get_checkpoint_dir(), exist_ok=True)
    try:
        pio.write_atomic(path, lambda f: torch.save(checkpoint, f), fsync=True)
        if best_err is None or err < best_err:
            target = os.path.join(get_checkpoint_dir(), _BEST_NAME)
            pio.write_atomic(target, lambda tmp: _link_or_copy(path, tmp), fsync=True, by_path=True)
    except (OSError, RuntimeError) as e:  # torch reports some failed writes as RuntimeError
        folder, reason = os.path.dirname(path), getattr(e, "strerror", None) or _first_line(e)
        msg = "could not write checkpoint {} ({}; {:.0f} MiB free in {}); free disk space or set "
        msg += "OUT_DIR elsewhere, then rerun to resume from the last checkpoint"
        free = shutil.disk_usage(folder).free / 2**20
        raise PyclsError(msg.format(target, reason, free, folder)) from e
    keep = cfg.TRAIN.CHECKPOINT_KEEP
    for old in _epoch_checkpoints(get_checkpoint_dir())[:-keep] if keep > 0 else []:
        try:
            os.remove(old)
            logger.info("Removed old checkpoint {} (TRAIN.CHECKPOINT_KEEP {})".format(old, keep))
        except OSError as e:
            logger.warning("Could not remove old checkpoint {}: {}".format(old, e))
    return path


class _Names(pickle.Unpickler):
    """Unpickles with a stub for each global, listing their names: nothing of the file runs."""

    names = ()

    def find_class(self, module, name):
        self.names += (module + "." + name,)
        return lambda *args: {}

    def persistent_load(self, pid):
        return None


def _load(path, resume=False):
    """Loads a dict of weights (to resume: with an epoch count) safely, or says why not."""
    if not os.path.isfile(path):
        what = "is a folder, not a file" if os.path.isdir(path) else "does not exist"
        raise PyclsError("checkpoint {} {}; check the path".format(path, what))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        try:  # torch names the Python objects; for pickle protocols it cannot scan (4, 5) _Names
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except pickle.UnpicklingError:
            with zipfile.ZipFile(path) as zf, contextlib.suppress(Exception):
                (names := _Names(zf.open([n for n in zf.namelist() if "data.pkl" in n][0]))).load()
            unsafe = [n for n in names.names if not n.startswith(_SAFE)]
        except Exception as e:  # not a whole zip file (cut short, or no checkpoint): say why
            msg = "checkpoint {} is truncated, corrupt or not a checkpoint ({}); use another file"
            raise PyclsError(msg.format(path, _first_line(e))) from e
        msg = "checkpoint {} is intact but safe loading (weights_only) cannot read it ({}); save "
        msg += "it again with torch.save's default settings"
        if unsafe:
            msg = "checkpoint {} holds a Python object ({}) that safe loading (weights_only) "
            msg += "refuses; use a checkpoint of plain tensors, from a source you trust"
        raise PyclsError(msg.format(path, unsafe[0] if unsafe else _first_line(error))) from error
    state = data.get("model_state", None if resume else data) if isinstance(data, dict) else data
    key = "its model_state" if state is not data else "it has no model_state and"
    if not isinstance(data, dict):
        problem = "it holds a {}, not a dict of weights".format(type(data).__name__)
    elif resume and (type(data.get("epoch")) is not int or data["epoch"] < 0):
        problem = "its epoch is {!r:.20}, not a whole number".format(data.get("epoch"))
    elif not isinstance(state, dict):
        problem = "{} is a {}, not a mapping of tensors".format(key, type(state).__name__)
    else:
        bad = [k for k, v in state.items() if not (isinstance(k, str) and torch.is_tensor(v))]
        if not bad:
            return data
        kind = type(state[bad[0]]).__name__
        problem = "{} holds a {} at key {!r:.40}, not a tensor".format(key, kind, bad[0])
    msg = "checkpoint {} is not a pycls checkpoint: {}; use a checkpoint written by pycls"
    raise PyclsError(msg.format(path, problem))


def _load_newest(paths, folder, fix, using, none=None):
    """Returns (path, checkpoint) of the newest of paths (oldest first) that loads, if any."""
    for i, path in enumerate(reversed(paths)):
        try:
            checkpoint = _load(path, resume=True)
        except PyclsError as e:
            logger.warning("Skipping unreadable checkpoint: {}".format(e))
            continue
        if i:
            skipped = ", ".join(paths[: -i - 1 : -1])
            logger.warning("{} {} instead of the unreadable {}".format(using, path, skipped))
        return path, checkpoint
    if paths or none:
        msg = "no checkpoint in {} loads (all {} are corrupt); {}" if paths else none
        raise PyclsError(msg.format(folder, len(paths), fix))
    return None, None


def find_resume_checkpoint():
    """Returns (path, checkpoint) of OUT_DIR's newest epoch checkpoint that loads, if any."""
    folder, fix = get_checkpoint_dir(), "delete them or set OUT_DIR elsewhere"
    return _load_newest(_epoch_checkpoints(folder), folder, fix, "Resuming from")


def find_weights(path):
    """Returns (path, loaded dict) of the weights a path names: a file, or in an OUT_DIR or its
    checkpoints folder model_best.pyth, else the newest epoch checkpoint that loads."""
    if not os.path.isdir(path):
        return path, _load(path)
    folder = next(f for f in (get_checkpoint_dir(path), path) if os.path.isdir(f))
    best = os.path.join(folder, _BEST_NAME)
    paths = _epoch_checkpoints(folder) + ([best] if os.path.isfile(best) else [])
    fix = "pass a checkpoint file, or an OUT_DIR or checkpoints folder that holds one"
    none = "folder {0} holds no checkpoint (model_best.pyth or model_epoch_XXXX.pyth); {2}"
    return _load_newest(paths, folder, fix, "Loading", none)


def _made_with(checkpoint):
    """Describes the model config a checkpoint was made with (from its cfg), or ''."""
    try:
        return _MADE_WITH.format(**yaml.safe_load(checkpoint["cfg"])["MODEL"])
    except (LookupError, TypeError, AttributeError, yaml.YAMLError):  # not pycls's cfg
        return ""


def load_checkpoint(path, model, model_ema=None, optimizer=None, checkpoint=None):
    """Loads a checkpoint (or what was read from path); returns (epochs done, the other fields)."""
    checkpoint = _load(path, resume=True) if checkpoint is None else checkpoint
    load_weights(path, model, data=checkpoint)
    if model_ema is not None:
        ema = dict(checkpoint, model_state=checkpoint.get("ema_state") or checkpoint["model_state"])
        load_weights(path + " (EMA weights)", model_ema, data=ema)
    if optimizer is not None:
        try:
            optimizer.load_state_dict(checkpoint.get("optimizer_state"))
        except (ValueError, LookupError, TypeError, AttributeError) as e:
            why = e if checkpoint.get("optimizer_state") else "the file has none"
            msg = "optimizer state in {} does not fit the optimizer ({}); check OPTIM settings"
            raise PyclsError(msg.format(path, why)) from e
    extra = {**dict.fromkeys(_ERR_KEYS), **checkpoint}
    extra = {k: v for k, v in extra.items() if k not in _WEIGHT_KEYS}
    if "best_err" not in extra:  # written by pycls or before checkpoints held it: ask model_best
        best, other = os.path.join(os.path.dirname(os.path.abspath(path)), _BEST_NAME), {}
        with contextlib.suppress(PyclsError, OSError):  # none, or unreadable
            other = {} if os.path.samefile(best, path) else _load(best, resume=True)
        extra["best_err"] = lowest_err(*(d.get(k) for d in (extra, other) for k in _ERR_KEYS))
    return checkpoint["epoch"] + 1, extra


def load_weights(path, model, skip_mismatched_head=False, data=None):
    """Loads model weights (model_state or a raw state dict, or data read from path) strictly, but
    for a head of another shape with skip_mismatched_head (TRAIN.PRETRAINED); returns those."""
    data = _load(path) if data is None else data
    model, own = net.unwrap_model(model), net.unwrap_model(model).state_dict()
    state = {strip_prefixes(k): v for k, v in data.get("model_state", data).items()}
    fits = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    heads = [n + "." for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    head = heads[-1] if skip_mismatched_head and heads else None  # the classifier: last Linear
    missing = [k for k in own if k not in state and not k.endswith(_BN_COUNTER)]
    other = [k for k in state if k in own and k not in fits and not (head and k.startswith(head))]
    shapes = ["{} (file {}, model {})".format(k, [*state[k].shape], [*own[k].shape]) for k in other]
    found = [("missing keys", missing), ("unexpected keys", [k for k in state if k not in own])]
    found = [*found, ("shape mismatches", shapes)]
    problems = "; ".join("{}: {}".format(n, _list_names(ks)) for n, ks in found if ks)
    if problems and not skip_mismatched_head:
        msg = "checkpoint {} does not fit the model{}: {}; check --cfg / MODEL settings"
        raise PyclsError(msg.format(path, _made_with(data), problems))
    if problems and not cfg.TRAIN.PRETRAINED_PARTIAL:
        msg = "pretrained weights {} differ from the model beyond its head{}: {}; check --cfg / "
        msg += "MODEL settings, or set TRAIN.PRETRAINED_PARTIAL True to load only what fits"
        raise PyclsError(msg.format(path, _made_with(data), problems))
    model.load_state_dict(fits, strict=False)
    skipped = [k for k in own if k not in fits and not k.endswith(_BN_COUNTER)]
    if skipped:
        msg = "Skipped {} of the model's tensors from {} (kept their initial values): {}"
        logger.warning(msg.format(len(skipped), path, _list_names(skipped)))
    return skipped
