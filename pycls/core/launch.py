"""Launching: local ranks through torchrun, a failed job read into one line, clean stops.

`python -m pycls.core.launch [torchrun arguments]` runs torchrun (the launchers in test/ use
it), and a CLI started alone with NUM_GPUS > 1 calls `launch_local`, the same path. On top of
torchrun this module:
- checks up front that MASTER_PORT is free (one line naming the port and the fix);
- reads a failed job into one line naming the first rank that failed and its error;
- turns SIGINT/SIGTERM into one line (`stopped by SIGTERM; rerun the same command to resume
  from epoch N`) and exit 130/143, after torchrun has stopped every rank (each rank and its
  loader workers run in a session of their own that torchrun signals as a whole).
"""

import errno
import logging
import os
import re
import signal
import socket
import sys

from pycls.core.errors import LOST_PEER, PyclsError, Stopped, run_cli

# torchrun's error file name for a failed rank that recorded no error
_NO_ERROR_FILE = "<N/A>"

# Start of the error line of pycls's CLIs
_ERROR_TAG = "error: "

# Seconds torchrun gives its ranks to end after a stop signal before it kills them (torch's
# default is 30; a stopped job must be gone within 10 s)
_SHUTDOWN_TIMEOUT_S = "5"

# torchrun's log lines about a stop it handles as asked (the job's one line says it)
_STOP_NOISE = ("Received %s death signal", "Sending process %s closing signal")
_STOP_NOISE_LOGGERS = (
    "torch.distributed.elastic.agent.server.api",
    "torch.distributed.elastic.multiprocessing.api",
)

# Epoch number in a checkpoint's file name
_EPOCH_RE = re.compile(r"model_epoch_(\d+)\.pyth$")


def launch(argv):
    """Runs torchrun with argv (its own arguments); a failed or stopped job ends in one line."""
    from torch.distributed import run as torchrun

    args = torchrun.parse_args(argv)
    if args.node_rank == 0 and not args.standalone and args.rdzv_backend == "static":
        check_port_free(args.master_addr, args.master_port)
    _run(torchrun, args)


def launch_local(nproc, script, script_args):
    """Runs `python script script_args` as nproc local ranks through torchrun on a free port."""
    from torch.distributed import run as torchrun

    argv = ["--nproc_per_node={}".format(nproc), "--master_addr=127.0.0.1"]
    argv += ["--master_port={}".format(free_port()), script] + list(script_args)
    _run(torchrun, torchrun.parse_args(argv))


def _run(torchrun, args):
    """Runs torchrun's parsed args, turning a failed rank or a stop signal into one line."""
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing import api as mp_api
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", _SHUTDOWN_TIMEOUT_S)
    # torchrun's handler raises on every signal, so a second one (Ctrl-C reaches the launcher
    # and its bash together) would break off its shutdown of the ranks: raise on the first only
    mp_api._terminate_process_handler = _first_signal_handler
    for name in _STOP_NOISE_LOGGERS:
        logging.getLogger(name).addFilter(_quiet_stop)
    try:
        torchrun.run(args)
    except SignalException as e:
        script = [args.training_script] + list(args.training_script_args)
        raise Stopped(e.sigval, stop_line(e.sigval, *_tool_and_out_dir(script))) from None
    except ChildFailedError as e:
        rank, failure = _root_cause(e.failures)
        error = PyclsError(_failure_text(rank, failure) + "; the job stopped")
        error.exit_code = failure.exitcode if failure.exitcode > 0 else 1
        raise error from None


_signals_seen = []


def _quiet_stop(record):
    """Drops torchrun's log lines about shutting down its ranks after a stop signal."""
    return not str(record.msg).startswith(_STOP_NOISE)


def _first_signal_handler(signum, frame):
    """Raises torchrun's SignalException on the first stop signal; later ones are ignored."""
    from torch.distributed.elastic.multiprocessing import SignalException

    _signals_seen.append(signum)
    if len(_signals_seen) == 1:
        sigval = signal.Signals(signum)
        raise SignalException("process {} got signal {}".format(os.getpid(), sigval), sigval)


def free_port():
    """Returns a TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_port_free(addr, port):
    """Raises PyclsError when this host cannot listen on port (the rendezvous port)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", int(port)))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                return  # torchrun reports other failures (e.g. a port that needs root) itself
            msg = "MASTER_PORT {} on {} is already in use (another job or program listens "
            msg += "there); set MASTER_PORT (torchrun: --master_port) to a free port, e.g. "
            msg += "MASTER_PORT={}, or stop that job"
            raise PyclsError(msg.format(port, addr, free_port())) from None


def resume_epoch(out_dir):
    """Returns the epoch (counted from 1) a rerun would start at, from OUT_DIR's checkpoints."""
    from pycls.core import checkpoint as cp

    last = cp.get_last_checkpoint(out_dir)
    match = _EPOCH_RE.search(last or "")
    return int(match.group(1)) + 1 if match else 1


def stop_line(signum, tool, out_dir):
    """Returns the line that ends a stopped job: the signal and how to resume."""
    name = signal.Signals(signum).name
    if tool == "train_net" and out_dir:
        epoch = resume_epoch(out_dir)
        return "stopped by {}; rerun the same command to resume from epoch {}".format(name, epoch)
    return "stopped by {}; rerun the same command to run it again".format(name)


def _tool_and_out_dir(command):
    """Returns (tool name, OUT_DIR) of a job's command (its .py script and config), or Nones."""
    from pycls.core import config

    scripts = [i for i, a in enumerate(command) if str(a).endswith(".py")]
    if not scripts:
        return None, None
    i = scripts[0]
    tool = os.path.splitext(os.path.basename(command[i]))[0]
    try:
        config.reset_cfg()
        config.load_cfg_from_args(command[i + 1 :])
    except (Exception, SystemExit):  # the job ran, so its arguments parse; be safe anyway
        return tool, None
    return tool, config.cfg.OUT_DIR


def _failure_text(rank, failure):
    """Describes how a rank of a torchrun job failed, in one line."""
    where = "rank {} (pid {})".format(rank, failure.pid)
    if failure.exitcode < 0:
        return "{} was killed by signal {}".format(where, failure.signal_name())
    message = _recorded_error(failure)
    if message:
        return "{} failed: {}".format(where, message)
    msg = "{} exited with code {} and no error message; see its output above"
    return msg.format(where, failure.exitcode)


def _recorded_error(failure):
    """Returns the last line of the error a failed rank recorded (pycls's 'error: ' cut), or ''."""
    message = failure.message
    if isinstance(message, dict):  # torchrun's own format: {"message": ..., "extraInfo": ...}
        message = message.get("message", "")
    if failure.error_file == _NO_ERROR_FILE or not str(message).strip():
        return ""
    line = str(message).strip().splitlines()[-1]
    return line[len(_ERROR_TAG) :] if line.startswith(_ERROR_TAG) else line


def _root_cause(failures):
    """Returns (rank, failure) of the rank most likely to have failed first.

    A rank with an error of its own comes first, then one that crashed or was killed; ranks
    that lost contact with it, or that torchrun stopped (SIGTERM), come last.
    """

    def order(item):
        rank, failure = item
        message = _recorded_error(failure)
        if failure.exitcode == -signal.SIGTERM:
            level = 3
        elif LOST_PEER in message:
            level = 2
        else:
            level = 0 if message else 1
        return (level, failure.timestamp, rank)

    return min(failures.items(), key=order)


if __name__ == "__main__":
    run_cli(lambda: launch(sys.argv[1:]))
