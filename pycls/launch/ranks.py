"""Starting ranks through torchrun: `python -m pycls.launch.ranks [torchrun arguments]` (the
launchers in test/) and run_job's NUM_GPUS local ranks; a port in use, nodes that disagree or do
not meet within RDZV_TIMEOUT, a failed rank and a stop signal each end in one line."""

import datetime
import logging
import os
import signal
import socket
import sys
import time

from pycls.core.errors import PyclsError, first_line
from pycls.launch.cli import LOST_PEER, Stopped, run_cli, stop_line

# Seconds the nodes wait for each other (torchrun's default); --rdzv_conf=timeout=N wins
RDZV_TIMEOUT_VAR, RDZV_TIMEOUT_DEFAULT = "RDZV_TIMEOUT", 600

# torchrun's log lines about a stop it handles as asked (the job's one line says it)
_STOP_NOISE = ("Received %s death signal", "Sending process %s closing signal")


def run_job(job, argv, description, script=None):
    """Loads cfg from a CLI's arguments and runs job, as NUM_GPUS ranks (the process count)."""
    from pycls.core import builders, config, distributed

    args = config.load_cfg_from_args(argv, description)
    builders.check_cfg_names()  # before any rank starts
    nproc = config.cfg.NUM_GPUS
    if "WORLD_SIZE" in os.environ or args.rank_id is not None:
        world_size = distributed.process_info(args.rank_id, args.device_id)[1]
        if nproc != world_size:
            msg = "NUM_GPUS is {} but this job was started with {} processes; pass NUM_GPUS {} "
            msg += "(NUM_GPUS is the process count, as in pycls)"
            raise PyclsError(msg.format(nproc, world_size, world_size))
    elif nproc > 1:
        if script is None:
            raise PyclsError("NUM_GPUS {} needs torchrun here: pass NUM_GPUS 1".format(nproc))
        argv = ["--master_port={}".format(free_port()), os.path.abspath(script)] + list(argv)
        return launch(["--nproc_per_node={}".format(nproc), "--master_addr=127.0.0.1"] + argv)
    job(rank_id=args.rank_id, device_id=args.device_id)


def launch(argv):
    """Runs torchrun with argv (its own arguments); a failed or stopped job ends in one line."""
    from torch.distributed import run as torchrun

    args = torchrun.parse_args(argv)
    nnodes, timeout = _check_nodes(args), _rdzv_timeout(args)
    static = not args.standalone and args.rdzv_backend == "static"
    store = _meet(args, nnodes, timeout) if nnodes > 1 and static else None
    _run(torchrun, args, nnodes, timeout)
    del store  # node 0's store served torchrun's rendezvous too (same port, multi_tenant)


def _check_nodes(args):
    """Returns the node count of torchrun's args; raises PyclsError when NODE_RANK does not fit."""
    nnodes, rank = str(args.nnodes), args.node_rank
    if ":" in nnodes or nnodes.isdigit() and 0 <= rank < int(nnodes):
        return 1 if ":" in nnodes else int(nnodes)  # an elastic range min:max counts as one
    what = "NNODES (--nnodes) is {!r}".format(nnodes)
    if nnodes.isdigit() and int(nnodes) > 0:
        what = "NODE_RANK (--node_rank) is {} but NNODES is {}".format(rank, nnodes)
    msg = "{}; give each of the NNODES nodes the same NNODES and its own NODE_RANK "
    msg += "0..NNODES-1 (node 0 runs global rank 0 and listens on MASTER_PORT)"
    raise PyclsError(msg.format(what))


def _rdzv_timeout(args):
    """Puts RDZV_TIMEOUT into torchrun's --rdzv_conf (unless it has a timeout); returns it."""
    from torch.distributed.elastic.rendezvous.utils import _parse_rendezvous_config

    conf = _parse_rendezvous_config(args.rdzv_conf)
    if "timeout" not in conf:
        value = os.environ.get(RDZV_TIMEOUT_VAR, str(RDZV_TIMEOUT_DEFAULT)).strip()
        if not value.isdigit() or int(value) < 1:
            msg = "{}={!r} must be a whole number of seconds above 0 (default {})"
            raise PyclsError(msg.format(RDZV_TIMEOUT_VAR, value, RDZV_TIMEOUT_DEFAULT))
        conf["timeout"] = value
        args.rdzv_conf = ",".join("{}={}".format(*kv) for kv in conf.items())
    return int(conf["timeout"])


def _meet(args, nnodes, timeout):
    """Has the nodes compare NNODES and process counts on node 0's store before torchrun starts,
    so that counts that differ end in one line on each node; returns the store."""
    from torch.distributed import TCPStore

    rank, mine = args.node_rank, "{} {}".format(nnodes, args.nproc_per_node)
    try:
        store = TCPStore(
            args.master_addr, args.master_port, None, rank == 0,
            datetime.timedelta(seconds=timeout), wait_for_workers=False, multi_tenant=True,
        )  # fmt: skip
        if store.add("pycls_meet/claim/{}".format(rank), 1) > 1:
            msg = "NODE_RANK {} is taken by another node; give each node its own NODE_RANK "
            raise PyclsError(msg.format(rank) + "0..NNODES-1")
        store.set("pycls_meet/node/{}".format(rank), mine)
        if rank == 0:
            verdict = _judge(store, nnodes, mine, timeout)
        else:
            _agree(0, store.get("pycls_meet/node/0").decode(), rank, mine)
            verdict = store.get("pycls_meet/verdict").decode()
            store.add("pycls_meet/read", 1)
    except Exception as e:
        if isinstance(e, PyclsError) or not _is_store_error(e):
            raise
        raise PyclsError(_rendezvous_text(args, nnodes, timeout, e)) from None
    if verdict != "ok":
        raise PyclsError(verdict)
    return store


def _judge(store, nnodes, mine, timeout):
    """Node 0: compares each node's counts as it joins; returns the verdict, told to them all."""
    keys = {n: "pycls_meet/node/{}".format(n) for n in range(1, nnodes)}
    end, verdict = time.monotonic() + timeout, "ok"
    try:
        while True:
            joined = [n for n, key in keys.items() if store.check([key])]
            for n in joined:
                _agree(n, store.get(keys[n]).decode(), 0, mine)
            if len(joined) == len(keys):
                break
            if time.monotonic() > end:
                missing = ", ".join(str(n) for n in keys if n not in joined)
                msg = "node 0 waited {} s for node(s) {} to join (NNODES={}); {}"
                raise PyclsError(msg.format(timeout, missing, nnodes, _start_every_node(nnodes)))
            time.sleep(0.2)
    except PyclsError as e:
        verdict = str(e)
    store.set("pycls_meet/verdict", verdict)
    end = time.monotonic() + 5  # the others read a refusal before this node (the store) ends
    while (
        verdict != "ok" and time.monotonic() < end and store.add("pycls_meet/read", 0) < nnodes - 1
    ):
        time.sleep(0.1)
    return verdict


def _agree(other, theirs, rank, mine):
    """Raises the one line of two nodes whose NNODES or process counts differ."""
    if theirs == mine:
        return
    msg = "the nodes disagree: node {} has NNODES={} and RANK_SIZE={}, node {} has NNODES={} "
    msg += "and RANK_SIZE={}; give every node the same NNODES and RANK_SIZE (processes per node)"
    first, second = sorted([(rank, *mine.split()), (other, *theirs.split())])
    raise PyclsError(msg.format(*first, *second))


def _run(torchrun, args, nnodes=1, timeout=None):
    """Runs torchrun's parsed args, turning a failed rank or a stop signal into one line."""
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing import api as mp_api
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    # torch waits 30 s for stopped ranks before it kills them; a stopped job must end in 10 s
    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "5")
    # torchrun's handler raises on every signal, so a second one (Ctrl-C reaches the launcher
    # and its bash together) would break off its shutdown of the ranks: raise on the first only
    mp_api._terminate_process_handler = _first_signal_handler
    for name in ("agent.server.api", "multiprocessing.api"):
        logger = logging.getLogger("torch.distributed.elastic." + name)
        logger.addFilter(lambda record: not str(record.msg).startswith(_STOP_NOISE))
    try:
        torchrun.run(args)
    except SignalException as e:
        script = [args.training_script] + list(args.training_script_args)
        raise Stopped(e.sigval, stop_line(e.sigval, *_tool_and_out_dir(script))) from None
    except ChildFailedError as e:
        rank, failure = _root_cause(e.failures)
        text = _failure_text(rank, failure)
        if nnodes > 1 and LOST_PEER in _recorded_error(failure):
            others = [str(n) for n in range(nnodes) if n != args.node_rank]
            lost = "another node (one of {})".format(", ".join(others))
            lost = "node " + others[0] if len(others) == 1 else lost
            msg = (
                "node {} lost {} (its launcher stopped or its machine went away; its log says why)"
            )
            text = "{}: {}".format(msg.format(args.node_rank, lost), text)
        error = PyclsError(text + "; the job stopped")
        error.exit_code = max(failure.exitcode, 1)
        raise error from None
    except Exception as e:
        if not _is_store_error(e):
            raise
        raise PyclsError(_rendezvous_text(args, nnodes, timeout, e)) from None


def _is_store_error(error):
    """Tells whether an error is torchrun's store failing (a node it could not reach or lost)."""
    import torch.distributed as torch_dist

    return isinstance(error, torch_dist.DistError) or (
        isinstance(error, RuntimeError) and "timed out" in str(error).lower()
    )


def _rendezvous_text(args, nnodes, timeout, error):
    """Describes in one line why the nodes did not meet (or node 0's store failed)."""
    where = "{}:{}".format(args.master_addr, args.master_port)
    cause = first_line(error).rstrip(".")
    if "address already in use" in str(error).lower():  # node 0's store could not listen
        msg = "MASTER_PORT {} on {} is already in use (another job or program listens there); "
        msg += "set MASTER_PORT (torchrun: --master_port) to a free port, e.g. MASTER_PORT={}, "
        return msg.format(args.master_port, args.master_addr, free_port()) + "or stop that job"
    if nnodes == 1:  # torchrun's own store, which it reaches through MASTER_ADDR
        msg = "could not reach MASTER_ADDR at {} within {} s ({}); set MASTER_ADDR to this "
        msg += "machine's address (127.0.0.1 for one machine) or raise {}"
        return msg.format(where, timeout, cause, RDZV_TIMEOUT_VAR)
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


_signals_seen = []


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


def _tool_and_out_dir(command):
    """Returns (tool name, OUT_DIR) of a job's command (its .py script and config), or Nones."""
    from pycls.core import config

    scripts = [i for i, a in enumerate(command) if str(a).endswith(".py")]
    if not scripts:
        return None, None
    tool = os.path.splitext(os.path.basename(command[scripts[0]]))[0]
    try:
        config.reset_cfg()
        config.load_cfg_from_args(command[scripts[0] + 1 :])
    except (Exception, SystemExit):  # the job ran, so its arguments parse; be safe anyway
        return tool, None
    return tool, config.cfg.OUT_DIR


def _failure_text(rank, failure):
    """Describes how a rank of a torchrun job failed, in one line."""
    where, message = "rank {} (pid {})".format(rank, failure.pid), _recorded_error(failure)
    if message:  # a signal after the line (gloo aborting at exit) changes nothing
        return "{} failed: {}".format(where, message)
    if failure.exitcode < 0:
        return "{} was killed by signal {}".format(where, failure.signal_name())
    msg = "{} exited with code {} and no error message; see its output above"
    return msg.format(where, failure.exitcode)


def _recorded_error(failure):
    """Returns the last line of the error a failed rank recorded ('error: ' cut), or ''."""
    message = failure.message
    if isinstance(message, dict):  # torchrun's own format: {"message": ..., "extraInfo": ...}
        message = message.get("message", "")
    if failure.error_file == "<N/A>" or not str(message).strip():  # torchrun's "no file"
        return ""
    line = str(message).strip().splitlines()[-1]
    return line[len("error: ") :] if line.startswith("error: ") else line


def _root_cause(failures):
    """Returns (rank, failure) of the rank most likely to have failed first: one with an error
    of its own, then a crash; ranks that lost contact or that torchrun stopped come last."""

    def order(item):
        message, stopped = _recorded_error(item[1]), item[1].exitcode == -signal.SIGTERM
        level = 3 if stopped else 2 if LOST_PEER in message else 0 if message else 1
        return (level, item[1].timestamp, item[0])

    return min(failures.items(), key=order)


if __name__ == "__main__":
    run_cli(lambda: launch(sys.argv[1:]))
