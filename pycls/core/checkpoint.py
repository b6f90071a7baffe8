"""Checkpoints (pycls format): atomic saves, a best copy, pruning and safe loads.

A checkpoint is a dict with pycls's keys (epoch, model_state, optimizer_state, cfg) plus what
resuming needs (ema_state, amp_state, test_err, ema_err, best_err). Files are
OUT_DIR/checkpoints/model_epoch_XXXX.pyth (epochs counted from 1) and model_best.pyth. Every
load uses torch.load(weights_only=True): a file holding arbitrary Python objects is refused.
There is no RNG state: trainer.seed_epoch reseeds every generator at the start of each epoch
and the loaders seed their own per epoch, so a resumed epoch draws as an uninterrupted one
(the rng_state of older checkpoints is ignored).
"""

import atexit
import io
import json
import os
import pickletools
import re
import shutil
import socket
import time
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

# Checkpoints folder (in OUT_DIR) and file names
_DIR_NAME = "checkpoints"
_NAME_PREFIX = "model_epoch_"
_NAME_RE = re.compile(r"^model_epoch_(\d+)\.pyth$")
_BEST_NAME = "model_best.pyth"

# Wrapper prefixes stripped from state dict keys: the attributes net.unwrap_model unwraps
_WRAPPER_PREFIXES = tuple(attr + "." for attr in net.WRAPPER_ATTRS)

# Keys a file must hold to count as a checkpoint
_REQUIRED_KEYS = ("epoch", "model_state")

# BN batch counter: files older than PyTorch 0.4.1 lack it
_BN_COUNTER = "num_batches_tracked"

# Most key names listed in a mismatch error
_MAX_NAMES = 10

# Lock file of the run that owns an OUT_DIR, and the lock this process holds
_LOCK_NAME = ".lock"
_held_lock = {}

# Globals a weights_only load accepts where torch cannot list them (torch's tensors and dtypes
# besides); any other global in a pickle is a Python object
_SAFE_GLOBALS = {"collections.OrderedDict", "_codecs.encode", "builtins.set", "builtins.bytearray"}
_SAFE_TORCH_RE = re.compile(r"^torch\.(_utils\._rebuild\w*|_tensor\._rebuild\w*|\w+)$")

# Python 2 module names in protocol 2 pickles
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}

# A zip file (torch's format since 1.6) starts with these bytes
_ZIP_MAGIC = b"PK\x03\x04"

# Pickles read from a file in torch's legacy format: magic number, version, sys info, the
# object, the storage keys
_LEGACY_PICKLES = 5


def get_checkpoint_dir(out_dir=None):
    """Returns the checkpoints folder (OUT_DIR/checkpoints)."""
    return os.path.join(cfg.OUT_DIR if out_dir is None else out_dir, _DIR_NAME)


def get_checkpoint(epoch, out_dir=None):
    """Returns the path of the checkpoint of an epoch (counted from 1)."""
    name = "{}{:04d}.pyth".format(_NAME_PREFIX, epoch)
    return os.path.join(get_checkpoint_dir(out_dir), name)


def get_checkpoint_best(out_dir=None):
    """Returns the path of the best checkpoint."""
    return os.path.join(get_checkpoint_dir(out_dir), _BEST_NAME)


def _epoch_checkpoints(out_dir=None):
    """Returns [(epoch, path)] of the epoch checkpoints, oldest first (temp files skipped)."""
    checkpoint_dir = get_checkpoint_dir(out_dir)
    if not os.path.isdir(checkpoint_dir):
        return []
    matches = [(_NAME_RE.match(f), f) for f in os.listdir(checkpoint_dir)]
    found = [(int(m.group(1)), os.path.join(checkpoint_dir, f)) for m, f in matches if m]
    return sorted(found)


def get_last_checkpoint(out_dir=None):
    """Returns the path of the newest epoch checkpoint, or None when there is none."""
    found = _epoch_checkpoints(out_dir)
    return found[-1][1] if found else None


def has_checkpoint(out_dir=None):
    """Tells whether OUT_DIR holds an epoch checkpoint."""
    return bool(_epoch_checkpoints(out_dir))


def estimate_checkpoint_bytes(model, copies=3):
    """Estimates a checkpoint's size: copies of the model state (model, momentum, EMA)."""
    state = model.state_dict().values()
    return copies * sum(t.numel() * t.element_size() for t in state if torch.is_tensor(t))


def check_out_dir(min_free_bytes=0):
    """Creates OUT_DIR/checkpoints; PyclsError if it is not writable or short of space."""
    checkpoint_dir = get_checkpoint_dir()
    fix = "set OUT_DIR to a folder you can write"
    try:
        os.makedirs(checkpoint_dir, exist_ok=True)
        probe = pio.temp_path(os.path.join(checkpoint_dir, "write_probe"))
        with open(probe, "xb") as f:
            f.write(b"probe")
        os.remove(probe)
    except OSError as e:
        msg = "output folder {} is not writable ({}); {}"
        raise PyclsError(msg.format(checkpoint_dir, e.strerror or e, fix)) from e
    return check_free_space(min_free_bytes)


def check_free_space(min_free_bytes):
    """Checks OUT_DIR/checkpoints (made by check_out_dir) has room for a checkpoint save;
    PyclsError if not, a warning if the checkpoints kept will not fit; returns the folder."""
    checkpoint_dir = get_checkpoint_dir()
    fix = "set OUT_DIR to a folder you can write"
    free = shutil.disk_usage(checkpoint_dir).free
    if free < min_free_bytes:
        msg = "only {:.0f} MiB free in {}, checkpoints need about {:.0f} MiB; free space or {}"
        mib = 1024**2
        raise PyclsError(msg.format(free / mib, checkpoint_dir, min_free_bytes / mib, fix))
    if min_free_bytes > 0:
        _warn_if_kept_do_not_fit(checkpoint_dir, free, min_free_bytes / 2)
    return checkpoint_dir


def _warn_if_kept_do_not_fit(checkpoint_dir, free, checkpoint_bytes):
    """Warns when the checkpoints the run keeps (TRAIN.CHECKPOINT_KEEP) need more than is free.

    min_free_bytes of check_out_dir is the room of one save (the new file next to the last);
    the run writes one checkpoint per TRAIN.CHECKPOINT_PERIOD epochs and the last epoch.
    """
    period, epochs, keep = (
        cfg.TRAIN.CHECKPOINT_PERIOD,
        cfg.OPTIM.MAX_EPOCH,
        cfg.TRAIN.CHECKPOINT_KEEP,
    )
    saves = epochs // period + (1 if epochs % period else 0)
    new = max(saves - len(_epoch_checkpoints()), 0)
    files = min(keep, new) + 1 if keep > 0 else new
    need = files * checkpoint_bytes
    if need > free:
        mib = 1024**2
        msg = "TRAIN.CHECKPOINT_KEEP {} keeps {} more checkpoints of about {:.0f} MiB ({:.0f} MiB) "
        msg += "but only {:.0f} MiB are free in {}; the run will stop when the disk is full: free "
        msg += "space or set TRAIN.CHECKPOINT_KEEP"
        args = (keep, files, checkpoint_bytes / mib, need / mib, free / mib, checkpoint_dir)
        logger.warning(msg.format(*args))


def _lock_owner(text):
    """Describes the run named in a lock file's text (pid, host, start time)."""
    try:
        owner = json.loads(text)
        return "pid {} on host {}, started {}".format(owner["pid"], owner["host"], owner["started"])
    except (ValueError, KeyError, TypeError):
        return "unknown pid and host"


def _release_lock():
    """Removes and unlocks this process's OUT_DIR lock (a killed run leaves the file behind)."""
    f, path = _held_lock.pop("file", None), _held_lock.pop("path", None)
    if f is None:
        return
    pio.remove_quietly(path)  # while still locked: a run waiting on this file retries
    f.close()  # closing releases the flock


def _open_locked(path):
    """Opens and flocks the lock file at path (retrying if a finishing run removed it); returns
    the file, or raises BlockingIOError with the file's text as its filename when held."""
    import fcntl

    for _ in range(10):
        f = open(path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            text = f.read(1000)
            f.close()
            raise BlockingIOError(0, "locked", text) from None
        except OSError:
            f.close()
            raise
        try:
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                return f
        except FileNotFoundError:
            pass
        f.close()  # locked a file the run before removed on its way out: lock the new one
    raise BlockingIOError(0, "locked", "")


def lock_out_dir():
    """Makes this run the only one on OUT_DIR (main process only) until the process ends.

    The lock is an flock on OUT_DIR/.lock, which the OS releases however the process ends; the
    file names the owner (pid, host, start time) and is removed at a normal exit. A second run
    on the same OUT_DIR stops with a PyclsError naming the owner; a file left by a killed run
    (no longer locked) is taken over with a warning.
    """
    if not dist.is_main_proc():
        return
    path = os.path.join(os.path.realpath(cfg.OUT_DIR), _LOCK_NAME)
    if _held_lock.get("path") == path:
        return
    _release_lock()  # a process runs one job at a time (tests run several in one process)
    try:
        f = _open_locked(path)
    except BlockingIOError as e:
        msg = "OUT_DIR {} is in use by another run ({}); wait for it to end, stop it, or set "
        msg += "OUT_DIR elsewhere"
        raise PyclsError(msg.format(cfg.OUT_DIR, _lock_owner(e.filename))) from None
    except OSError as e:  # not writable, or a file system without locks
        msg = "Could not lock {} ({}); nothing stops a second run on this OUT_DIR"
        logger.warning(msg.format(path, e.strerror or e))
        return
    f.seek(0)
    old = f.read(1000)
    if old.strip():
        msg = "Taking over OUT_DIR {} from a run that ended without releasing it ({})"
        logger.warning(msg.format(cfg.OUT_DIR, _lock_owner(old)))
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.ctime()}
    f.seek(0)
    f.truncate()
    f.write(json.dumps(owner) + "\n")
    f.flush()
    if not _held_lock.get("registered"):
        atexit.register(_release_lock)
    _held_lock.update(path=path, file=f, registered=True)


def strip_prefixes(key):
    """Strips wrapper prefixes (module., _orig_mod., also nested) from a state dict key."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def _clean_state(state):
    """Returns a state dict with wrapper prefixes stripped from its keys."""
    return {strip_prefixes(k): v for k, v in state.items()}


def _list_names(names):
    """Lists up to _MAX_NAMES names, then 'and N more'."""
    names = list(names)
    shown = ", ".join(names[:_MAX_NAMES])
    more = len(names) - _MAX_NAMES
    return shown + (" and {} more".format(more) if more > 0 else "")


def _check_finite(state, what):
    """Raises a PyclsError if a floating tensor of a state dict is not finite."""
    floats = [(k, v) for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()]
    if not floats:
        return
    device = floats[0][1].device
    flags = torch.stack([torch.isfinite(v).all().to(device) for _, v in floats])
    if bool(flags.all()):
        return
    bad = [k for (k, _), ok in zip(floats, flags.tolist()) if not ok]
    msg = "{} weights are not finite ({}), so no checkpoint was written; lower OPTIM.BASE_LR "
    msg += "or set OPTIM.GRAD_CLIP and resume from the last checkpoint"
    raise PyclsError(msg.format(what, _list_names(bad)))


def _write_error(path, error):
    """Builds the error of a failed checkpoint write, naming the folder and its free space."""
    folder = os.path.dirname(path)
    reason = getattr(error, "strerror", None) or _first_line(error)
    try:
        free = "{:.0f} MiB free".format(shutil.disk_usage(folder).free / 1024**2)
    except OSError:
        free = "free space unknown"
    msg = "could not write checkpoint {} ({}; {} in {}); free disk space or set OUT_DIR "
    msg += "elsewhere, then rerun to resume from the last checkpoint"
    return PyclsError(msg.format(path, reason, free, folder))


def _write(path, write, by_path=False):
    """Writes path through pio.write_atomic (synced to disk); PyclsError naming the free space."""
    try:
        pio.write_atomic(path, write, fsync=True, by_path=by_path)
    except (OSError, RuntimeError) as e:  # torch reports some failed writes as RuntimeError
        raise _write_error(path, e) from e


def _link_or_copy(src, dst):
    """Makes dst a hard link to src, or a copy where the file system has no links."""
    try:
        os.link(src, dst)
    except OSError:
        pio.remove_quietly(dst)
        shutil.copyfile(src, dst)


def lowest_err(*errs):
    """Returns the lowest of the errors given (None ones left out; inf if none is left)."""
    errs = [e for e in errs if e is not None]
    return min(errs) if errs else float("inf")


def _prune():
    """Deletes all but the newest TRAIN.CHECKPOINT_KEEP epoch checkpoints (best kept)."""
    keep = cfg.TRAIN.CHECKPOINT_KEEP
    if keep <= 0:
        return
    for _, path in _epoch_checkpoints()[:-keep]:
        try:
            os.remove(path)
        except OSError as e:
            logger.warning("Could not remove old checkpoint {}: {}".format(path, e))
            continue
        logger.info("Removed old checkpoint {} (TRAIN.CHECKPOINT_KEEP {})".format(path, keep))


def save_checkpoint(
    model, model_ema, optimizer, epoch, test_err, ema_err, extra=None, best_err=None
):
    """Saves the checkpoint after epoch index epoch (main process only); returns its path.

    best_err is the run's lowest error before this epoch (None: no checkpoint yet, as the trainer
    tracks it); the checkpoint becomes model_best.pyth when its error is lower."""
    # Every process checks the weights (the same on all), so all stop together on NaNs
    model_state = _clean_state(net.unwrap_model(model).state_dict())
    _check_finite(model_state, "model")
    ema_state = None
    if model_ema is not None:
        ema_state = _clean_state(net.unwrap_model(model_ema).state_dict())
        _check_finite(ema_state, "EMA model")
    if not dist.is_main_proc():
        return None
    os.makedirs(get_checkpoint_dir(), exist_ok=True)
    err = lowest_err(test_err, ema_err)
    is_best = best_err is None or err < best_err
    checkpoint = {
        "epoch": epoch,
        "model_state": model_state,
        "ema_state": ema_state,
        "optimizer_state": optimizer.state_dict() if optimizer is not None else None,
        "cfg": cfg.dump(),
        "test_err": test_err,
        "ema_err": ema_err,
        "best_err": lowest_err(err, best_err),
        "amp_state": None,
    }
    checkpoint.update(extra or {})
    path = get_checkpoint(epoch + 1)
    _write(path, lambda f: torch.save(checkpoint, f))
    if is_best:
        _write(get_checkpoint_best(), lambda tmp: _link_or_copy(path, tmp), by_path=True)
    _prune()
    return path


def _first_line(error):
    """Returns an error's type and the first line of its text, cut short, for an error line."""
    text = str(error).strip()
    first = text.splitlines()[0][:100] if text else ""
    return "{}: {}".format(type(error).__name__, first) if first else type(error).__name__


def _pickle_globals(stream):
    """Returns the globals (module.name) one pickle in stream names; ValueError if it is not
    a whole pickle."""
    found, pushed, memo = [], [], {}
    for op, arg, _ in pickletools.genops(stream):
        if op.name == "GLOBAL":
            found.append(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            found.append("{}.{}".format(*[str(x) for x in pushed[-2:]]))
        elif op.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
            memo[len(memo) if op.name == "MEMOIZE" else arg] = pushed[-1] if pushed else None
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(arg))
        else:
            pushed.append(arg if isinstance(arg, str) else None)
    return found


def _read_globals(path):
    """Returns the globals a checkpoint's pickles name (data.pkl of a zip file, else the
    leading pickles of torch's legacy format); ValueError saying why the file is unreadable."""
    if os.path.getsize(path) == 0:
        raise ValueError("an empty file")
    with open(path, "rb") as f:
        is_zip = f.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
    if is_zip:
        try:
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
                data = zf.read(names[0]) if names else None
        except Exception as e:  # zipfile and zlib raise several kinds
            raise ValueError("a damaged zip file") from e
        if data is None:
            raise ValueError("a zip file without data.pkl")
        try:
            return _pickle_globals(io.BytesIO(data))
        except Exception as e:
            raise ValueError("its data.pkl is not a whole pickle") from e
    found = []
    with open(path, "rb") as f:
        try:
            for _ in range(_LEGACY_PICKLES):
                found += _pickle_globals(f)
                if not f.peek(1):
                    break
        except Exception as e:
            raise ValueError("neither a zip file nor a whole pickle") from e
    return found


def _pickled_objects(path):
    """Returns the Python objects (module.name) a checkpoint's pickle names beyond torch's
    tensors and plain containers; ValueError when the file is truncated or not a pickle."""
    found = _read_globals(path)
    safe = _safe_globals()
    found = [_PY2_MODULES.get(n.split(".")[0], n.split(".")[0]) + n[n.find(".") :] for n in found]
    if safe is None:
        return [n for n in found if n not in _SAFE_GLOBALS and not _SAFE_TORCH_RE.match(n)]
    return [n for n in found if n not in safe]


def _safe_globals():
    """Returns the names a weights_only load accepts (torch's own list), or None if unknown."""
    try:
        from torch import _weights_only_unpickler as unpickler

        names = set(unpickler._get_allowed_globals())
        names.update(getattr(unpickler, "_get_user_allowed_globals", dict)())
    except Exception:  # a private torch API: fall back to _SAFE_GLOBALS
        return None
    return names


def _load_error(path, error):
    """Says why torch.load could not read path, from the file itself (not torch's wording)."""
    try:
        objects = _pickled_objects(path)
    except ValueError as e:
        msg = "checkpoint {} is truncated, corrupt or not a checkpoint ({}); use another file"
        return PyclsError(msg.format(path, e))
    if objects:
        msg = "checkpoint {} holds a Python object ({}) that safe loading (weights_only) "
        msg += "refuses; use a checkpoint of plain tensors, from a source you trust"
        return PyclsError(msg.format(path, objects[0]))
    msg = "checkpoint {} is intact but safe loading (weights_only) cannot read it ({}); "
    msg += "save it again with torch.save's default settings"
    return PyclsError(msg.format(path, _first_line(error)))


def _load_file(path):
    """Loads a checkpoint file safely (weights_only, on the cpu); PyclsError if it can't."""
    if not os.path.isfile(path):
        what = "is a folder, not a file" if os.path.isdir(path) else "does not exist"
        raise PyclsError("checkpoint {} {}; check the path".format(path, what))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise _load_error(path, e) from e
    if not isinstance(data, dict):
        msg = "checkpoint {} holds a {}, not a dict of weights; use a pycls .pyth file"
        raise PyclsError(msg.format(path, type(data).__name__))
    return data


def _tensor_map_problem(state):
    """Says why a loaded value is not a state dict (a mapping of names to tensors), or ''."""
    if not isinstance(state, dict):
        return "is a {}, not a mapping of tensors".format(type(state).__name__)
    for k, v in state.items():
        if not isinstance(k, str) or not torch.is_tensor(v):
            key = repr(k)[:40]
            return "holds a {} at key {}, not a tensor".format(type(v).__name__, key)
    return ""


def _structure_problem(checkpoint):
    """Says which field of a loaded checkpoint dict has the wrong type, or ''."""
    epoch = checkpoint["epoch"]
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        return "its epoch is a {}, not a whole number".format(type(epoch).__name__)
    for key in ("model_state", "ema_state"):
        value = checkpoint.get(key)
        problem = _tensor_map_problem(value) if key == "model_state" or value is not None else ""
        if problem:
            return "its {} {}".format(key, problem)
    if not isinstance(checkpoint.get("optimizer_state") or {}, dict):
        return "its optimizer_state is a {}".format(type(checkpoint["optimizer_state"]).__name__)
    for key in ("test_err", "ema_err", "best_err"):
        value = checkpoint.get(key)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            return "its {} is a {}, not a number".format(key, type(value).__name__)
    return ""


def _load_checkpoint_file(path):
    """Loads a file that must be a checkpoint (with epoch and model_state of the right types)."""
    checkpoint = _load_file(path)
    missing = [k for k in _REQUIRED_KEYS if k not in checkpoint]
    if missing:
        msg = "checkpoint {} has no {}; use a checkpoint written by pycls"
        raise PyclsError(msg.format(path, " or ".join(missing)))
    problem = _structure_problem(checkpoint)
    if problem:
        msg = "checkpoint {} is not a pycls checkpoint: {}; use a checkpoint written by pycls"
        raise PyclsError(msg.format(path, problem))
    return checkpoint


def find_resume_checkpoint():
    """Returns the newest epoch checkpoint that loads (older ones are tried), or None."""
    found = _epoch_checkpoints()
    skipped = []
    for _, path in reversed(found):
        try:
            _load_checkpoint_file(path)
        except PyclsError as e:
            logger.warning("Skipping unreadable checkpoint: {}".format(e))
            skipped.append(path)
            continue
        if skipped:
            msg = "Resuming from {} instead of the unreadable {}"
            logger.warning(msg.format(path, ", ".join(skipped)))
        return path
    if skipped:
        msg = "no checkpoint in {} loads (all {} are corrupt); delete them or set OUT_DIR elsewhere"
        raise PyclsError(msg.format(get_checkpoint_dir(), len(skipped)))
    return None


def _made_with(checkpoint):
    """Describes the config a checkpoint was made with (from its cfg), or ''."""
    try:
        model_cfg = yaml.safe_load(checkpoint.get("cfg") or "")["MODEL"]
        model_type, num_classes = model_cfg["TYPE"], model_cfg.get("NUM_CLASSES", "?")
    except (yaml.YAMLError, KeyError, TypeError, AttributeError):
        return ""
    if not model_type:
        return ""
    return " (it was made with MODEL.TYPE {} and MODEL.NUM_CLASSES {})".format(
        model_type, num_classes
    )


def _mismatches(model_state, state):
    """Returns the problems (missing, unexpected keys, other shapes) of a loaded state dict."""
    # torch fills in the BN counters that old files (as some of pycls's) lack
    missing = [k for k in model_state if k not in state and not k.endswith(_BN_COUNTER)]
    unexpected = [k for k in state if k not in model_state]
    shapes = [
        "{} (file {}, model {})".format(k, list(state[k].shape), list(model_state[k].shape))
        for k in model_state
        if k in state and torch.is_tensor(state[k]) and state[k].shape != model_state[k].shape
    ]
    problems = []
    if missing:
        problems.append("missing keys: " + _list_names(missing))
    if unexpected:
        problems.append("unexpected keys: " + _list_names(unexpected))
    if shapes:
        problems.append("shape mismatches: " + _list_names(shapes))
    return problems


def _load_state(path, model, state, checkpoint, what=""):
    """Loads a state dict strictly into the bare model; returns the keys skipped (none)."""
    model = net.unwrap_model(model)
    state = _clean_state(state)
    problems = _mismatches(model.state_dict(), state)
    if problems:
        msg = "checkpoint {}{} does not fit the model{}: {}; check --cfg / MODEL settings"
        raise PyclsError(msg.format(path, what, _made_with(checkpoint), "; ".join(problems)))
    model.load_state_dict(state)
    return []


def load_checkpoint(path, model, model_ema=None, optimizer=None):
    """Loads a checkpoint strictly; returns (epochs done = next epoch index, extra dict)."""
    checkpoint = _load_checkpoint_file(path)
    _load_state(path, model, checkpoint["model_state"], checkpoint)
    if model_ema is not None:
        ema_state = checkpoint.get("ema_state") or checkpoint["model_state"]
        _load_state(path, model_ema, ema_state, checkpoint, " (EMA weights)")
    if optimizer is not None:
        if not checkpoint.get("optimizer_state"):
            raise PyclsError("checkpoint {} has no optimizer state to resume".format(path))
        try:
            optimizer.load_state_dict(checkpoint["optimizer_state"])
        except (ValueError, KeyError) as e:
            msg = "optimizer state in {} does not fit the optimizer ({}); check OPTIM settings"
            raise PyclsError(msg.format(path, e)) from e
    skip = ("model_state", "ema_state", "optimizer_state")
    extra = {k: v for k, v in checkpoint.items() if k not in skip}
    extra.setdefault("test_err", None)
    extra.setdefault("ema_err", None)
    if "best_err" not in extra:  # written before checkpoints held it, or by pycls
        extra["best_err"] = lowest_err(extra["test_err"], extra["ema_err"], _best_file_err(path))
    return checkpoint["epoch"] + 1, extra


def _best_file_err(path):
    """Returns the error of the model_best.pyth beside a checkpoint (None if none is read)."""
    best = os.path.join(os.path.dirname(os.path.abspath(path)), _BEST_NAME)
    if not os.path.exists(best) or os.path.samefile(best, path):
        return None
    try:
        checkpoint = _load_checkpoint_file(best)
    except PyclsError:
        return None
    return lowest_err(checkpoint.get("test_err"), checkpoint.get("ema_err"))


def _is_state_dict(data):
    """Tells whether a loaded dict is a raw state dict (all values tensors)."""
    return bool(data) and all(torch.is_tensor(v) for v in data.values())


def _head_keys(model):
    """Returns the state dict keys of the model's classifier head (its last Linear layer)."""
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        return set()
    prefix = linears[-1] + "."
    return {k for k in model.state_dict() if k.startswith(prefix)}


def _load_pretrained(path, model, state, checkpoint):
    """Loads fine-tuning weights: a head of another shape is skipped, any other difference is an
    error unless TRAIN.PRETRAINED_PARTIAL loads only the tensors that fit; returns those skipped."""
    model = net.unwrap_model(model)
    state, model_state = _clean_state(state), model.state_dict()
    head = [
        k
        for k in _head_keys(model)
        if k in state and torch.is_tensor(state[k]) and state[k].shape != model_state[k].shape
    ]
    body_model = {k: v for k, v in model_state.items() if k not in head}
    body_state = {k: v for k, v in state.items() if k not in head}
    problems = _mismatches(body_model, body_state)
    if problems and not cfg.TRAIN.PRETRAINED_PARTIAL:
        msg = "pretrained weights {} differ from the model beyond its head{}: {}; check --cfg / "
        msg += "MODEL settings, or set TRAIN.PRETRAINED_PARTIAL True to load only what fits"
        raise PyclsError(msg.format(path, _made_with(checkpoint), "; ".join(problems)))
    fits = {
        k: v
        for k, v in body_state.items()
        if k in model_state and torch.is_tensor(v) and v.shape == model_state[k].shape
    }
    model.load_state_dict(fits, strict=False)
    return [k for k in model_state if k not in fits and not k.endswith(_BN_COUNTER)]


def load_weights(path, model, skip_mismatched_head=False):
    """Loads model weights (model_state or a raw state dict); returns the keys skipped.

    With skip_mismatched_head (TRAIN.PRETRAINED), a classifier head of another shape is skipped
    (see _load_pretrained); otherwise every key and shape must match.
    """
    data = _load_file(path)
    if "model_state" in data:
        state, checkpoint = data["model_state"], data
    elif _is_state_dict(data):
        state, checkpoint = data, {}
    else:
        msg = "weights file {} has no model_state and is not a state dict; use a pycls .pyth"
        raise PyclsError(msg.format(path))
    problem = _tensor_map_problem(state)
    if problem:
        msg = "checkpoint {} is not a pycls checkpoint: its model_state {}; use a checkpoint "
        msg += "written by pycls"
        raise PyclsError(msg.format(path, problem))
    if skip_mismatched_head:
        skipped = _load_pretrained(path, model, state, checkpoint)
    else:
        skipped = _load_state(path, model, state, checkpoint)
    if skipped:
        msg = "Skipped {} of the model's tensors from {} (kept their initial values): {}"
        logger.warning(msg.format(len(skipped), path, _list_names(skipped)))
    return skipped


def checkpoint_epoch(path):
    """Returns the epochs done by an epoch checkpoint, read from its name (None if unnamed)."""
    match = _NAME_RE.match(os.path.basename(path))
    return int(match.group(1)) if match else None


def _folder_epoch_checkpoints(folder):
    """Returns the paths of the epoch checkpoints in a folder, newest first."""
    found = [(checkpoint_epoch(f), f) for f in os.listdir(folder)]
    found = sorted((e, f) for e, f in found if e is not None)
    return [os.path.join(folder, f) for _, f in reversed(found)]


def find_weights(path):
    """Returns the checkpoint a weights path names: a file itself, or in an OUT_DIR or its
    checkpoints folder model_best.pyth, else the newest epoch checkpoint that loads."""
    if not os.path.isdir(path):
        return path
    folder = os.path.join(path, _DIR_NAME)
    folder = folder if os.path.isdir(folder) else path
    best = os.path.join(folder, _BEST_NAME)
    if os.path.isfile(best):
        return best
    newest = _folder_epoch_checkpoints(folder)
    for candidate in newest:
        try:
            _load_checkpoint_file(candidate)
        except PyclsError as e:
            logger.warning("Skipping unreadable checkpoint: {}".format(e))
            continue
        return candidate
    fix = "pass a checkpoint file, or an OUT_DIR or checkpoints folder that holds one"
    if newest:
        msg = "no checkpoint in {} loads (all {} are corrupt); {}"
        raise PyclsError(msg.format(folder, len(newest), fix))
    msg = "folder {} holds no checkpoint ({} or {}XXXX.pyth); {}"
    raise PyclsError(msg.format(folder, _BEST_NAME, _NAME_PREFIX, fix))
