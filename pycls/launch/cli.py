"""The CLI runner: a failure ends in one line on stderr, a stop signal in the line that says how
to resume. Torch-free at import, so that run_cli checks torch's version before torch loads."""

import contextlib
import json
import multiprocessing
import os
import re
import signal
import sys
import time

from pycls.core.errors import PyclsError, first_line, write_stderr_line
from pycls.launch.versions import check_versions

# What a rank says when another process of its job went away (its launcher looks for it)
LOST_PEER = "lost contact with another process of the job"

_PEER_LOST = ("Connection reset by peer", "Connection closed by peer", "Broken pipe")
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# The stop signals this process got, and the pid that installed the handler
_stopped_by, _handler_pid = [], [None]


class Stopped(BaseException):
    """The job was stopped by a signal; message (or None) is the line that says how to resume."""

    def __init__(self, signum, message=None):
        super().__init__(signum, message)
        self.signum, self.message = int(signum), message


def _stop_handler(signum, frame):
    """Raises Stopped on the first stop signal; a forked child (loader worker) dies of it."""
    if os.getpid() != _handler_pid[0]:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _stopped_by.append(signum)
    if len(_stopped_by) == 1:
        # Loader workers die of the same signal: torch's SIGCHLD handler must not report that
        # (a Python no-op, not SIG_DFL: CPython complains of a pending signal without handler)
        signal.signal(signal.SIGCHLD, lambda *args: None)
        # Threads that die in the teardown report through sys.excepthook (multiprocessing's
        # resource sharer does, when a peer is gone): no traceback after the stop line
        sys.excepthook = lambda *args: None
        raise Stopped(signum)


def run_cli(main):
    """Runs a CLI's main: a user error ends in one line, a stop signal in the stop line."""
    too_old = check_versions()
    if too_old:
        _fail("error: " + too_old, 2)
    _handler_pid[0] = os.getpid()
    for signum in _STOP_SIGNALS:  # even where the parent shell ignored SIGINT
        signal.signal(signum, _stop_handler)
    try:
        try:
            main()
        except Stopped:
            raise
        except BaseException as e:
            if _stopped_by and not isinstance(e, SystemExit):
                raise Stopped(_stopped_by[0]) from None  # a failure caused by the stop itself
            _fail_on(e)
    except Stopped as e:
        _stop(e)
    finally:
        # A late signal (torchrun stopping a rank that ends on its own error) must not raise
        # Stopped into the exit handlers: a traceback after the line
        for signum in _STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


def _fail_on(error):
    """Ends the process with the one line of an error (re-raises what is not the user's)."""
    if isinstance(error, PyclsError):
        _fail("error: {}".format(error), error.exit_code)
    if isinstance(error, ModuleNotFoundError):
        if not error.name or error.name.split(".")[0] == "pycls":
            _fail("error: the pycls package is not importable; pip install -e . first", 2)
        msg = "error: python package {} is missing; pip install -r requirements.txt (or run "
        _fail(msg.format(error.name) + "the README's set-up command)", 2)
    if isinstance(error, KeyboardInterrupt):
        raise Stopped(signal.SIGINT) from None
    line = isinstance(error, RuntimeError) and _dist_line(error)
    if not line:
        raise error
    # Leave at once: with a peer gone, the process group's teardown at exit can abort the
    # interpreter (gloo: "terminate called without an active exception", exit -6)
    _fail(line, 1, at_once=True)


def _dist_line(error):
    """Describes in one line a wait past DIST.TIMEOUT or a lost peer process, else ''."""
    timed_out = re.search("timed out|timeout", str(error), re.IGNORECASE)
    # A DistError comes from a torch.distributed that is loaded: nothing to import for it
    dist_error = getattr(sys.modules.get("torch.distributed"), "DistError", ())
    if not (timed_out or isinstance(error, dist_error) or any(s in str(error) for s in _PEER_LOST)):
        return ""
    from pycls.core import distributed
    from pycls.core.config import cfg

    up = distributed.is_initialized()
    rank = distributed.get_rank() if up else os.environ.get("RANK", "?")
    if not timed_out:
        msg = "error: rank {} {} ({}); the job's first failure says why"
        return msg.format(rank, LOST_PEER, first_line(error))
    what = "the other processes to join the process group"
    fix = "start every rank with the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE, or raise"
    if up:
        what = "another process in a collective (all_reduce, barrier or DDP's gradient sync)"
        fix = "another rank is stuck or failed (its own line says why); if it is only slow, raise"
    msg = "error: rank {} waited {} s for {} ({}); {} DIST.TIMEOUT"
    return msg.format(rank, cfg.DIST.TIMEOUT, what, first_line(error).rstrip("."), fix)


def _stop(stopped):
    """Exits 128 + signal: a torchrun rank quietly (its launcher says it), else with the line."""
    code = 128 + stopped.signum
    if "TORCHELASTIC_RUN_ID" in os.environ:  # set by torchrun for its ranks
        sys.stdout.flush()
        os._exit(code)  # torchrun has signalled this rank's session: its workers end too
    for child in multiprocessing.active_children():  # now, not after the loaders' timeouts
        child.terminate()
    if stopped.message is None:
        from pycls.core.config import cfg

        tool = os.path.splitext(os.path.basename(sys.argv[0]))[0]
        stopped.message = stop_line(stopped.signum, tool, cfg.OUT_DIR)
    write_stderr_line(stopped.message)
    sys.exit(code)


def stop_line(signum, tool, out_dir):
    """Returns the line that ends a stopped job: the signal and how to resume."""
    how = "run it again"
    if tool == "train_net" and out_dir:  # the epoch after OUT_DIR's newest checkpoint
        from pycls.core import checkpoint

        found = re.search(r"epoch_(\d+)\.pyth$", checkpoint.get_last_checkpoint(out_dir) or "")
        how = "resume from epoch {}".format(int(found.group(1)) + 1 if found else 1)
    return "stopped by {}; rerun the same command to {}".format(signal.Signals(signum).name, how)


def _fail(message, code, at_once=False):
    """Writes one line on stderr (and where torchrun reads a failed rank's error) and exits."""
    write_stderr_line(message)
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        with contextlib.suppress(OSError), open(path, "w") as f:
            json.dump({"message": message, "timestamp": int(time.time())}, f)
    if at_once:
        for child in multiprocessing.active_children():  # loader workers
            child.terminate()
        sys.stdout.flush()
        os._exit(code)
    sys.exit(code)
