"""User-facing errors: one line that names the problem and the fix."""

import json
import os
import re
import signal
import sys
import time

# Packages the project needs, with what to run when one is missing
_INSTALL_HINT = "pip install -r requirements.txt (or run the README's set-up command)"

# Where torchrun (torch.distributed.elastic) asks a worker to record why it failed
_ERROR_FILE_VAR = "TORCHELASTIC_ERROR_FILE"

# What a rank says when another process of its job went away
LOST_PEER = "lost contact with another process of the job"

# Signs, in an error's text, that another process of a distributed job went away
_PEER_LOST = ("Connection reset by peer", "Connection closed by peer", "Broken pipe")

# Signs, in an error's text, that a wait for other processes ran past its timeout
_TIMED_OUT = re.compile(r"timed out|timeout", re.IGNORECASE)

# The wait's length in such a text ("waiting 1800000ms", "after 1800 seconds")
_WAITED = re.compile(r"(\d+)\s*(ms|s|sec|seconds)\b")


# Set by torchrun in the environment of each rank it starts. distributed.py reads it too; this
# torch-free copy serves a rank stopped before distributed is imported (this module must load
# without torch: run_cli checks torch's version before anything imports it)
_TORCHRUN_VAR = "TORCHELASTIC_RUN_ID"

# Signals that stop a job (Ctrl-C, timeout, a scheduler's time limit)
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class PyclsError(Exception):
    """An error the user can fix (bad path, config, data, checkpoint, device)."""

    # Exit status of a CLI that ends with this error
    exit_code = 2


class Stopped(BaseException):
    """The job was stopped by a signal; message (or None) is the line that says how to resume."""

    def __init__(self, signum, message=None):
        super().__init__(signum, message)
        self.signum, self.message = int(signum), message


# The stop signals this process got, first first (empty while it runs)
_stopped_by = []

# The process that installed the stop handler (its forked children inherit the handler)
_HANDLER_PID = [None]


def _stop_handler(signum, frame):
    """Raises Stopped in the main process on the first stop signal (later ones are ignored).

    A forked child (a loader worker) inherits this handler: it dies of the signal instead."""
    if os.getpid() != _HANDLER_PID[0]:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _stopped_by.append(signum)
    if len(_stopped_by) == 1:
        # Loader workers die of the same signal: torch's SIGCHLD handler must not report that
        # (a Python no-op, not SIG_DFL: CPython complains of a pending signal without handler)
        signal.signal(signal.SIGCHLD, _ignore_signal)
        raise Stopped(signum)


def _ignore_signal(signum, frame):
    """Does nothing (a signal handler)."""


def _ignore_stop_signals():
    """Ignores SIGINT and SIGTERM once the CLI has its outcome (its line is written): a late
    one, e.g. torchrun stopping a rank that is already exiting on its own error, must not
    raise Stopped into the interpreter's exit handlers (a traceback after the one line)."""
    for signum in _STOP_SIGNALS:
        signal.signal(signum, _ignore_signal)


def catch_stop_signals():
    """Makes SIGINT and SIGTERM raise Stopped (even where the parent shell ignored SIGINT)."""
    _HANDLER_PID[0] = os.getpid()
    for signum in _STOP_SIGNALS:
        signal.signal(signum, _stop_handler)


def run_cli(main):
    """Runs a CLI entry point; a user error ends in one line on stderr and exit 2, a stop
    signal (SIGINT/SIGTERM) in the line that says how to resume and exit 128 + signal."""
    from pycls.core.versions import check_versions

    too_old = check_versions()
    if too_old:
        _fail("error: {}".format(too_old), 2)
    catch_stop_signals()
    try:
        _run_main(main)
    except Stopped as e:
        _stop(e)
    finally:
        _ignore_stop_signals()


def _run_main(main):
    """Runs main, turning what it raises into one line (a stop signal raises Stopped)."""
    try:
        main()
    except Stopped:
        raise
    except BaseException as e:
        if _stopped_by and not isinstance(e, SystemExit):
            raise Stopped(_stopped_by[0]) from None  # a failure caused by the stop itself
        _fail_on(e)


def _fail_on(error):
    """Ends the process with the one line of an error (re-raises what is not the user's)."""
    try:
        raise error
    except PyclsError as e:
        _fail("error: {}".format(e), e.exit_code)
    except ModuleNotFoundError as e:
        if not e.name or e.name.split(".")[0] == "pycls":
            _fail("error: the pycls package is not importable; pip install -e . first", 2)
        _fail("error: python package {} is missing; {}".format(e.name, _INSTALL_HINT), 2)
    except KeyboardInterrupt:
        raise Stopped(signal.SIGINT) from None
    except Exception as e:
        line = _timed_out(e)
        if line:
            _fail(line, 1)
        if not _lost_peer(e):
            raise
        msg = "error: rank {} {} ({}); the job's first failure says why"
        _fail(msg.format(_rank(), LOST_PEER, first_line(e)), 1)


def _timed_out(error):
    """Describes in one line a wait for other processes that ran past DIST.TIMEOUT, else ''."""
    if not isinstance(error, RuntimeError) or not _TIMED_OUT.search(str(error)):
        return ""
    config = sys.modules.get("pycls.core.config")
    found = _WAITED.search(str(error))
    waited = "longer than DIST.TIMEOUT"
    if config is not None:  # torch's text gives the time it took, which can round up
        waited = "{} s".format(config.cfg.DIST.TIMEOUT)
    elif found:
        seconds = int(found.group(1)) / (1000.0 if found.group(2) == "ms" else 1.0)
        waited = "{:g} s".format(seconds)
    if _process_group() is not None:
        what = "another process in a collective (all_reduce, barrier or DDP's gradient sync)"
        fix = "another rank is stuck or failed (its own line says why); if it is only slow, "
        fix += "raise DIST.TIMEOUT"
    else:
        what = "the other processes to join the process group"
        fix = "start every rank with the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE, "
        fix += "or raise DIST.TIMEOUT"
    msg = "error: rank {} waited {} for {} ({}); {}"
    return msg.format(_rank(), waited, what, first_line(error).rstrip("."), fix)


def _stop(stopped):
    """Ends a stopped process with exit 128 + signal: a rank of torchrun's quietly (its
    launcher says it), a job's top process with the line that says how to resume."""
    code = 128 + stopped.signum
    if _TORCHRUN_VAR in os.environ:  # the launcher prints the job's one line
        sys.stdout.flush()
        os._exit(code)  # torchrun has signalled this rank's session: its workers end too
    _end_children()
    message = stopped.message
    if message is None:
        message = _stop_line(stopped.signum)
    write_stderr_line(message)
    sys.exit(code)


def _end_children():
    """Ends this process's multiprocessing children (loader workers) now, instead of after
    the loaders' shutdown timeouts: a stopped job must be gone within seconds."""
    mp = sys.modules.get("multiprocessing")
    for child in mp.active_children() if mp is not None else []:
        child.terminate()


def _stop_line(signum):
    """Returns the stop line of this CLI (its tool and OUT_DIR, when its config is loaded)."""
    tool = os.path.splitext(os.path.basename(sys.argv[0]))[0]
    config = sys.modules.get("pycls.core.config")
    out_dir = config.cfg.OUT_DIR if config is not None else None
    from pycls.core.launch import stop_line

    return stop_line(signum, tool, out_dir)


def _lost_peer(error):
    """Tells whether an error means that another process of a distributed job went away."""
    torch_dist = sys.modules.get("torch.distributed")
    dist_error = getattr(torch_dist, "DistError", None) if torch_dist is not None else None
    if dist_error is not None and isinstance(error, dist_error):
        return True
    return isinstance(error, RuntimeError) and any(s in str(error) for s in _PEER_LOST)


def _process_group():
    """Returns pycls.core.distributed (the one home of rank and world size) when its process
    group is up, else None.

    Looked up in sys.modules, never imported: this module must import without torch (run_cli
    checks torch's version before anything imports it, and distributed imports this module),
    and where distributed is not loaded no process group of the job is up.
    """
    dist = sys.modules.get("pycls.core.distributed")
    is_up = getattr(dist, "is_initialized", None)
    return dist if is_up is not None and is_up() else None


def _rank():
    """Returns this process's rank in its distributed job (or "?")."""
    dist = _process_group()
    return dist.get_rank() if dist is not None else os.environ.get("RANK", "?")


def first_line(error):
    """Returns the first sentence of an error's text, without a leading [source:line] tag."""
    lines = str(error).strip().splitlines()
    line = re.sub(r"^\[[^\]]*\]\s*", "", lines[0] if lines else type(error).__name__)
    return line.split(". ")[0][:200]


def write_stderr_line(message):
    """Writes one line on stderr in a single write. stderr is write-through, so print() writes
    a message and its newline apart, and the lines of ranks failing together run into each other."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _fail(message, code):
    """Prints one line on stderr (and for torchrun in its error file) and exits with the code."""
    write_stderr_line(message)
    _record_for_torchrun(message)
    sys.exit(code)


def _record_for_torchrun(message):
    """Writes the error line where torchrun reads a failed worker's error (when it asks)."""
    path = os.environ.get(_ERROR_FILE_VAR)
    if not path:
        return
    try:
        with open(path, "w") as f:
            json.dump({"message": message, "timestamp": int(time.time())}, f)
    except OSError:
        pass
