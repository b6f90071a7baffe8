"""A run's claim on OUT_DIR: a writable folder with room for its checkpoints, and a lock."""

import atexit
import fcntl
import os
import shutil
import socket
import tempfile
import time

import pycls.core.io as pio
import pycls.core.logging as logging
from pycls.core.config import cfg
from pycls.core.errors import PyclsError

logger = logging.get_logger(__name__)

_MIB = 1024**2
_held = {}  # the OUT_DIR lock this process holds: path, file


def check_out_dir(folder, min_free_bytes=0, start_epoch=0):
    """Creates folder (OUT_DIR/checkpoints); checks it is writable with room for the checkpoints."""
    fix = "set OUT_DIR to a folder you can write"
    try:
        os.makedirs(folder, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        msg = "output folder {} is not writable ({}); {}"
        raise PyclsError(msg.format(folder, e.strerror or e, fix)) from e
    free = shutil.disk_usage(folder).free
    if free < min_free_bytes:  # room for one save, the new file beside the last
        msg = "only {:.0f} MiB free in {}, checkpoints need about {:.0f} MiB; free space or {}"
        raise PyclsError(msg.format(free / _MIB, folder, min_free_bytes / _MIB, fix))
    keep, epochs = cfg.TRAIN.CHECKPOINT_KEEP, range(start_epoch, cfg.OPTIM.MAX_EPOCH)
    saves = sum((e + 1) % cfg.TRAIN.CHECKPOINT_PERIOD == 0 or e + 1 == epochs.stop for e in epochs)
    files, one = min(keep, saves) + 1 if keep > 0 else saves, min_free_bytes / 2 / _MIB
    if files * one * _MIB > free:
        msg = "TRAIN.CHECKPOINT_KEEP {} keeps {} more checkpoints of about {:.0f} MiB ({:.0f} MiB) "
        msg += "but only {:.0f} MiB are free in {}; the run will stop when the disk is full: free "
        msg += "space or set TRAIN.CHECKPOINT_KEEP"
        logger.warning(msg.format(keep, files, one, files * one, free / _MIB, folder))
    return folder


@atexit.register
def _release_lock():
    """Removes and unlocks this process's OUT_DIR lock (a killed run leaves the file behind)."""
    if "file" in _held:
        pio.remove_quietly(_held.pop("path"))  # while still locked: a run waiting on it retries
        _held.pop("file").close()  # closing releases the flock


def _lock(path):
    """Returns (file, its text: the holder) with path flocked; BlockingIOError if held."""
    f = open(path, "a+")
    f.seek(0)
    text = f.read(1000).strip()
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.close()
        e.filename = text
        raise
    if os.fstat(f.fileno()).st_nlink:
        return f, text
    f.close()  # locked the file of a run that removed it on its way out: lock the new one
    return _lock(path)


def lock_out_dir():
    """Makes this run the only one on OUT_DIR until it ends (the OS drops an flock however)."""
    path = os.path.join(os.path.realpath(cfg.OUT_DIR), ".lock")
    _release_lock()  # a process runs one job at a time (tests run several in one process)
    try:
        f, old = _lock(path)
    except BlockingIOError as e:
        msg = "OUT_DIR {} is in use by another run ({}); wait for it to end, stop it, or set "
        msg += "OUT_DIR elsewhere"
        raise PyclsError(msg.format(cfg.OUT_DIR, e.filename or "unknown pid and host")) from None
    except OSError as e:  # not writable, or a file system without locks
        msg = "Could not lock {} ({}); nothing stops a second run on this OUT_DIR"
        return logger.warning(msg.format(path, e.strerror or e))
    if old:  # a killed run's file
        msg = "Taking over OUT_DIR {} from a run that ended without releasing it ({})"
        logger.warning(msg.format(cfg.OUT_DIR, old))
    f.truncate(0)
    f.write("pid {} on host {}, started {}".format(os.getpid(), socket.gethostname(), time.ctime()))
    f.flush()
    _held.update(path=path, file=f)
