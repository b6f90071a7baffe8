"""Launching: local ranks through torchrun, a failed job read into one line, clean stops.

`python -m pycls.core.launch [torchrun arguments]` runs torchrun (the launchers in test/ use
it), and a CLI started alone with NUM_GPUS > 1 calls `launch_local`, the same path. On top of
torchrun this module:
- checks up front that MASTER_PORT is free (one line naming the port and the fix);
- for several nodes (static rendezvous): checks NODE_RANK < NNODES, and has the nodes meet on
  node 0's store before torchrun starts, so that node counts or process counts that disagree
  end in one line on every node instead of a wait; RDZV_TIMEOUT (seconds, default 600, as
  torchrun) bounds the meeting and torchrun's rendezvous; a node whose ranks lost contact
  with another node names that node;
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

from pycls.core.errors import LOST_PEER, PyclsError, Stopped, first_line, run_cli

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

# Seconds the nodes of a multi-node job wait for each other to join (torchrun's own default);
# the environment variable sets it, torchrun's --rdzv_conf=timeout=N wins over both
RDZV_TIMEOUT_VAR = "RDZV_TIMEOUT"
RDZV_TIMEOUT_DEFAULT = 600

# Epoch number in a checkpoint's file name
_EPOCH_RE = re.compile(r"model_epoch_(\d+)\.pyth$")


def launch(argv):
    """Runs torchrun with argv (its own arguments); a failed or stopped job ends in one line."""
    from torch.distributed import run as torchrun

    args = torchrun.parse_args(argv)
    nnodes = _check_nodes(args)
    if nnodes > 1:
        args.rdzv_conf = _with_timeout(args.rdzv_conf, rdzv_timeout())
    static = not args.standalone and args.rdzv_backend == "static"
    if args.node_rank == 0 and static:
        check_port_free(args.master_addr, args.master_port)
    store = _meet(args, nnodes) if nnodes > 1 and static else None
    _run(torchrun, args, nnodes)
    del store  # node 0's store served torchrun's rendezvous too (same port, one server)


def _meet(args, nnodes):
    """Checks, before torchrun starts, that every node has the same NNODES and process count
    and its own NODE_RANK: each node ends in one line when they do not, instead of waiting.
    Returns node 0's store (torchrun's static rendezvous shares its server, multi_tenant)."""
    import datetime

    from torch.distributed import TCPStore

    timeout = int(_conf_timeout(args.rdzv_conf))
    mine = "{} {}".format(nnodes, args.nproc_per_node)
    rank, is_master = args.node_rank, args.node_rank == 0
    try:
        store = TCPStore(
            args.master_addr, args.master_port, None, is_master,
            datetime.timedelta(seconds=timeout), wait_for_workers=False, multi_tenant=True,
        )  # fmt: skip
        if store.add("pycls_meet/claim/{}".format(rank), 1) > 1:
            msg = "NODE_RANK {} is taken by another node; give each node its own NODE_RANK "
            raise PyclsError(msg.format(rank) + "0..NNODES-1")
        store.set("pycls_meet/node/{}".format(rank), mine)
        if is_master:
            _meet_as_master(store, nnodes, mine, timeout)
        else:
            _agree(0, store.get("pycls_meet/node/0").decode(), rank, mine)
            verdict = store.get("pycls_meet/verdict").decode()
            store.add("pycls_meet/read", 1)
            if verdict != "ok":
                raise PyclsError(verdict)
    except PyclsError:
        raise
    except Exception as e:
        if not _is_store_error(e):
            raise
        raise PyclsError(_rendezvous_text(args, nnodes, e)) from None
    return store


def _meet_as_master(store, nnodes, mine, timeout):
    """Node 0: waits for every node's counts, then tells them all whether they agree."""
    import time

    keys = ["pycls_meet/node/{}".format(n) for n in range(1, nnodes)]
    end = time.monotonic() + timeout
    verdict = "ok"
    try:
        while not store.check(keys):
            for n, key in enumerate(keys, 1):
                if store.check([key]):
                    _agree(n, store.get(key).decode(), 0, mine)
            if time.monotonic() > end:
                missing = [str(n) for n, k in enumerate(keys, 1) if not store.check([k])]
                msg = "node 0 waited {} s for node(s) {} to join (NNODES={}); {}"
                fix = _start_every_node(nnodes)
                raise PyclsError(msg.format(timeout, ", ".join(missing), nnodes, fix))
            time.sleep(0.2)
        for n, key in enumerate(keys, 1):
            _agree(n, store.get(key).decode(), 0, mine)
    except PyclsError as e:
        verdict = str(e)
        raise
    finally:
        store.set("pycls_meet/verdict", verdict)
        end = time.monotonic() + 5  # the others read it before this node ends
        while store.add("pycls_meet/read", 0) < nnodes - 1 and time.monotonic() < end:
            time.sleep(0.1)


def _agree(other, theirs, rank, mine):
    """Raises the one line of two nodes whose NNODES or process counts differ."""
    if theirs == mine:
        return
    (a_n, a_p), (b_n, b_p) = mine.split(), theirs.split()
    msg = "the nodes disagree: node {} has NNODES={} and RANK_SIZE={}, node {} has NNODES={} "
    msg += "and RANK_SIZE={}; give every node the same NNODES and RANK_SIZE (processes per node)"
    first, second = sorted([(rank, a_n, a_p), (other, b_n, b_p)])
    raise PyclsError(msg.format(*first, *second))


def rdzv_timeout():
    """Returns the seconds nodes wait for each other to join (env RDZV_TIMEOUT, default 600)."""
    value = os.environ.get(RDZV_TIMEOUT_VAR, str(RDZV_TIMEOUT_DEFAULT)).strip()
    if not value.isdigit() or int(value) < 1:
        msg = "{}={!r} must be a whole number of seconds above 0 (default {})"
        raise PyclsError(msg.format(RDZV_TIMEOUT_VAR, value, RDZV_TIMEOUT_DEFAULT))
    return int(value)


def _with_timeout(rdzv_conf, seconds):
    """Returns torchrun's --rdzv_conf with timeout=seconds added (one given there wins)."""
    if _conf_timeout(rdzv_conf, None) is not None:
        return rdzv_conf
    pairs = [p for p in (rdzv_conf or "").split(",") if p.strip()]
    return ",".join(pairs + ["timeout={}".format(seconds)])


def _check_nodes(args):
    """Returns the node count of torchrun's args; raises PyclsError when NODE_RANK does not fit."""
    text = str(args.nnodes)
    if not text.isdigit() or int(text) < 1:
        return 1 if ":" in text else _bad_nodes("NNODES (--nnodes) is {!r}".format(text))
    nnodes = int(text)
    if not 0 <= args.node_rank < nnodes:
        what = "NODE_RANK (--node_rank) is {} but NNODES is {}".format(args.node_rank, nnodes)
        _bad_nodes(what)
    return nnodes


def _bad_nodes(what):
    """Raises the one line of a node count or node rank that cannot be."""
    msg = "{}; give each of the NNODES nodes the same NNODES and its own NODE_RANK "
    msg += "0..NNODES-1 (node 0 runs global rank 0 and listens on MASTER_PORT)"
    raise PyclsError(msg.format(what))


def launch_local(nproc, script, script_args):
    """Runs `python script script_args` as nproc local ranks through torchrun on a free port."""
    from torch.distributed import run as torchrun

    argv = ["--nproc_per_node={}".format(nproc), "--master_addr=127.0.0.1"]
    argv += ["--master_port={}".format(free_port()), script] + list(script_args)
    _run(torchrun, torchrun.parse_args(argv))


def _run(torchrun, args, nnodes=1):
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
        text = _failure_text(rank, failure)
        if nnodes > 1 and LOST_PEER in (_recorded_error(failure) or ""):
            text = "{}: {}".format(_lost_node_text(args, nnodes), text)
        error = PyclsError(text + "; the job stopped")
        error.exit_code = failure.exitcode if failure.exitcode > 0 else 1
        raise error from None
    except Exception as e:
        if nnodes == 1 or not _is_store_error(e):
            raise
        raise PyclsError(_rendezvous_text(args, nnodes, e)) from None


def _is_store_error(error):
    """Tells whether an error is torchrun's store failing (a node it could not reach or lost)."""
    import torch.distributed as torch_dist

    dist_error = getattr(torch_dist, "DistError", ())
    return isinstance(error, dist_error) or (
        isinstance(error, RuntimeError) and "timed out" in str(error).lower()
    )


def _rendezvous_text(args, nnodes, error):
    """Describes in one line why the nodes of a job did not meet (or lost node 0's store)."""
    timeout = _conf_timeout(args.rdzv_conf)
    where = "{}:{}".format(args.master_addr, args.master_port)
    cause = first_line(error).rstrip(".")
    if args.node_rank > 0:
        msg = "node {} could not reach node 0 at {} within {} s ({}); start node 0 "
        msg += "(NODE_RANK=0) with the same NNODES, MASTER_ADDR and MASTER_PORT, check that "
        msg += "this machine can reach that address, or raise {}"
        return msg.format(args.node_rank, where, timeout, cause, RDZV_TIMEOUT_VAR)
    msg = "node 0 waited {} s at {} for the other {} node(s) to join ({}); {}"
    return msg.format(timeout, where, nnodes - 1, cause, _start_every_node(nnodes))


def _start_every_node(nnodes):
    """The fix of nodes that did not all join: how to start them."""
    msg = "start every node with NNODES={} and the same MASTER_ADDR and MASTER_PORT, each with "
    return msg.format(nnodes) + "its own NODE_RANK, or raise " + RDZV_TIMEOUT_VAR


def _lost_node_text(args, nnodes):
    """Names the node(s) a node's ranks lost contact with."""
    others = [n for n in range(nnodes) if n != args.node_rank]
    if len(others) == 1:
        lost = "node {}".format(others[0])
    else:
        lost = "another node (one of {})".format(", ".join(map(str, others)))
    msg = "node {} lost {} (its launcher stopped or its machine went away; its log says why)"
    return msg.format(args.node_rank, lost)


def _conf_timeout(rdzv_conf, default=str(RDZV_TIMEOUT_DEFAULT)):
    """Returns the timeout=N of torchrun's --rdzv_conf (seconds), else default."""
    for pair in (rdzv_conf or "").split(","):
        key, _, value = pair.partition("=")
        if key.strip() == "timeout":
            return value.strip()
    return default


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
