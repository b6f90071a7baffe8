"""User-facing errors: one line that names the problem and the fix."""

import json
import os
import re
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


class PyclsError(Exception):
    """An error the user can fix (bad path, config, data, checkpoint, device)."""

    # Exit status of a CLI that ends with this error
    exit_code = 2


def run_cli(main):
    """Runs a CLI entry point; a user error ends in one line on stderr and exit 2."""
    from pycls.core.versions import check_versions

    too_old = check_versions()
    if too_old:
        _fail("error: {}".format(too_old), 2)
    try:
        main()
    except PyclsError as e:
        _fail("error: {}".format(e), e.exit_code)
    except ModuleNotFoundError as e:
        if not e.name or e.name.split(".")[0] == "pycls":
            _fail("error: the pycls package is not importable; pip install -e . first", 2)
        _fail("error: python package {} is missing; {}".format(e.name, _INSTALL_HINT), 2)
    except KeyboardInterrupt:
        _fail("error: interrupted", 130)
    except Exception as e:
        line = _timed_out(e)
        if line:
            _fail(line, 1)
        if not _lost_peer(e):
            raise
        msg = "error: rank {} {} ({}); the job's first failure says why"
        _fail(msg.format(_rank(), LOST_PEER, _first_line(e)), 1)


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
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        what = "another process in a collective (all_reduce, barrier or DDP's gradient sync)"
        fix = "another rank is stuck or failed (its own line says why); if it is only slow, "
        fix += "raise DIST.TIMEOUT"
    else:
        what = "the other processes to join the process group"
        fix = "start every rank with the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE, "
        fix += "or raise DIST.TIMEOUT"
    msg = "error: rank {} waited {} for {} ({}); {}"
    return msg.format(_rank(), waited, what, _first_line(error).rstrip("."), fix)


def _lost_peer(error):
    """Tells whether an error means that another process of a distributed job went away."""
    dist = sys.modules.get("torch.distributed")
    dist_error = getattr(dist, "DistError", None) if dist is not None else None
    if dist_error is not None and isinstance(error, dist_error):
        return True
    return isinstance(error, RuntimeError) and any(s in str(error) for s in _PEER_LOST)


def _rank():
    """Returns this process's rank in its distributed job (or "?")."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return os.environ.get("RANK", "?")


def _first_line(error):
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
