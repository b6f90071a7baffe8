"""The node facts of a launch, checked, and read from SLURM where the user did not set them.

Every launcher in test/ `eval`s what `python -m pycls.launch.slurm --nproc N [--ignore-slurm]`
prints (torch-free, so it starts fast): NNODES, NODE_RANK and, in a SLURM job, MASTER_ADDR,
MASTER_PORT, nproc (processes per node) and NODE_SOURCES, where each came from."""

import argparse
import collections
import contextlib
import itertools
import math
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys

from pycls.core.errors import PyclsError

# Variables a user sets to place a node by hand (they win over SLURM's)
EXPLICIT_VARS = ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "RANK_SIZE")

# Under SLURM, MASTER_PORT is PORT_BASE + SLURM_JOB_ID % PORT_SPAN: two jobs on a node differ
PORT_BASE, PORT_SPAN = 20000, 10000

# Most host names a node list may expand to (a typo like node[1-99999999] must not hang)
MAX_HOSTS = 65536

# Generic resources that count as one process each (in SLURM_TRES_PER_NODE / SLURM_GRES)
DEVICE_GRES = ("gpu", "npu")

# One launch value and where it came from
Fact = collections.namedtuple("Fact", "value source")


def in_slurm(env):
    """Tells whether env is that of a SLURM job."""
    return bool(env.get("SLURM_JOB_ID"))


def expand_nodelist(nodelist):
    """Expands a SLURM node list (`node[01-03,07]`, `a1,b[2-3]`, `r[1-2]-n[1-2]`) into names."""
    depths = list(itertools.accumulate({"[": 1, "]": -1}.get(ch, 0) for ch in nodelist))
    if any(d not in (0, 1) for d in depths) or depths[-1:] not in ([], [0]):
        raise _bad_nodelist(nodelist, "its brackets do not pair up")
    items, hosts = re.split(r",(?![^\[\]]*\])", nodelist), []  # at commas outside brackets
    if not all(items):
        raise _bad_nodelist(nodelist, "it has an empty entry")
    for item in items:
        parts = []
        for piece in re.split(r"(\[[^\]]*\])", item):  # text and [ranges] in turn
            bad, is_range = re.search(r"[^A-Za-z0-9._-]", piece), piece.startswith("[")
            if bad and not is_range:
                raise _bad_nodelist(nodelist, "it holds {!r}".format(bad.group()))
            parts.append(_expand_ranges(piece[1:-1], nodelist) if is_range else [piece])
        if len(hosts) + math.prod(map(len, parts)) > MAX_HOSTS:
            raise _bad_nodelist(nodelist, "it names more than {} hosts".format(MAX_HOSTS))
        hosts += ["".join(p) for p in itertools.product(*parts)]
    return hosts


def _expand_ranges(ranges, nodelist):
    """Expands `01-03,7` into ['01', '02', '03', '7'], keeping each range's zero padding."""
    numbers = []
    for part in ranges.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise _bad_nodelist(nodelist, "[{}] is not a list of numbers and ranges".format(ranges))
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if high < low:
            raise _bad_nodelist(nodelist, "its range {} runs backwards".format(part))
        if high - low >= MAX_HOSTS:
            raise _bad_nodelist(nodelist, "it names more than {} hosts".format(MAX_HOSTS))
        numbers += [str(n).zfill(len(match.group(1))) for n in range(low, high + 1)]
    return numbers


def _bad_nodelist(nodelist, why):
    """Returns the error of a node list that cannot be read."""
    msg = "cannot read the SLURM node list {!r}: {}; put scontrol on PATH or set MASTER_ADDR to "
    return PyclsError(msg.format(nodelist, why) + "the first node's address")


def first_host(nodelist):
    """Returns the first host of a node list and how it was found (scontrol or the parser)."""
    scontrol = shutil.which("scontrol")
    if scontrol:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            cmd = [scontrol, "show", "hostnames", nodelist]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            if out.returncode == 0 and out.stdout.split():
                return out.stdout.split()[0], "scontrol"
    return expand_nodelist(nodelist)[0], "parsed"


def _int(env, name, low=0, high=None, fix=""):
    """Returns env[name] as an int in [low, high), or raises one line naming it and the fix."""
    text = env[name].strip()
    if text.isdecimal() and int(text) >= low and (high is None or int(text) < high):
        return int(text)
    bound = "an integer >= {}".format(low) if high is None else "{}..{}".format(low, high - 1)
    raise PyclsError("{}={!r} is not {}; {}".format(name, env[name], bound, fix))


def _first_set(env, names):
    """Returns the first of names that env sets (non-empty), else None."""
    return next((name for name in names if env.get(name, "").strip()), None)


def node_count(env):
    """Returns NNODES: the user's, else SLURM's node count of this step, else 1."""
    fix = "set NNODES to the number of nodes (launchers) of the job"
    name = _first_set(env, ("SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES"))
    if env.get("NNODES", "").strip():
        return Fact(_int(env, "NNODES", 1, fix=fix), "NNODES set")
    if in_slurm(env) and name:
        return Fact(_int(env, name, 1, fix=fix), name)
    return Fact(1, "default")


def node_rank(env, nnodes):
    """Returns NODE_RANK: the user's, else SLURM_NODEID, else 0 (one node or outside SLURM)."""
    fix = "set NODE_RANK to this node's rank, 0..{} (NNODES={}, {})"
    fix = fix.format(nnodes.value - 1, nnodes.value, nnodes.source)
    if nnodes.source == "default":
        fix = "set NNODES to the number of nodes and NODE_RANK to this node's rank below it"
    if env.get("NODE_RANK", "").strip():
        return Fact(_int(env, "NODE_RANK", 0, nnodes.value, fix), "NODE_RANK set")
    if not in_slurm(env) or nnodes.value == 1:
        return Fact(0, "default")
    fix = "start one launcher per node with srun --ntasks-per-node=1, or " + fix
    # srun sets both for its tasks; a batch script or an salloc shell has neither (or only the
    # job's SLURM_NODEID 0), and a launcher started there alone would wait for the other nodes
    for name in ("SLURM_STEP_NUM_NODES", "SLURM_NODEID"):
        if not env.get(name, "").strip():
            msg = "{} is not set: this launcher runs in a {}-node SLURM job ({}) but not in an"
            msg += " srun step; "
            raise PyclsError(msg.format(name, nnodes.value, nnodes.source) + fix)
    return Fact(_int(env, "SLURM_NODEID", 0, nnodes.value, fix), "SLURM_NODEID")


def master_addr(env, nnodes):
    """Returns MASTER_ADDR: the user's, else the first host of SLURM's node list."""
    if env.get("MASTER_ADDR", "").strip():
        return Fact(env["MASTER_ADDR"].strip(), "MASTER_ADDR set")
    if not in_slurm(env) or nnodes.value == 1:
        return Fact("127.0.0.1", "default")
    names = ("SLURM_STEP_NODELIST", "SLURM_NODELIST", "SLURM_JOB_NODELIST")
    name = _first_set(env, names)
    if not name:
        msg = "the SLURM job has {} nodes but none of {} is set; set MASTER_ADDR to node 0's"
        raise PyclsError(msg.format(nnodes.value, ", ".join(names)) + " address")
    host, how = first_host(env[name].strip())
    return Fact(host, "first host of {}, {}".format(name, how))


def master_port(env):
    """Returns MASTER_PORT: the user's, else one derived from SLURM_JOB_ID, else 29500."""
    fix = "set MASTER_PORT to a free TCP port, e.g. MASTER_PORT=29500"
    if env.get("MASTER_PORT", "").strip():
        return Fact(_int(env, "MASTER_PORT", 1, 65536, fix), "MASTER_PORT set")
    if not in_slurm(env):
        return Fact(29500, "default")
    job_id = _int(env, "SLURM_JOB_ID", 0, fix=fix)
    source = "{} + SLURM_JOB_ID % {}".format(PORT_BASE, PORT_SPAN)
    return Fact(PORT_BASE + job_id % PORT_SPAN, source)


def procs_per_node(env, default):
    """Returns the processes per node: RANK_SIZE, else SLURM's devices per node, else default."""
    if env.get("RANK_SIZE", "").strip():
        fix = "set RANK_SIZE to the number of processes (devices) per node"
        return Fact(_int(env, "RANK_SIZE", 1, fix=fix), "RANK_SIZE set")
    names = ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE", "SLURM_TRES_PER_NODE", "SLURM_GRES")
    for name in names if in_slurm(env) else ():
        count = _device_count(name, env.get(name, ""))
        if count:
            return Fact(count, name)
    return Fact(int(default), "launcher default")  # the launcher's own number


def _device_count(name, text):
    """Returns the count of SLURM_GPUS_* (`N`, `type:N`) or of a gres list's first gpu/npu entry
    (`gres/npu:8`, `gpu:a100:4`); 0 when there is none."""
    if "GPUS" not in name:
        fields = [re.sub(r"^gres[/:]", "", e.strip()).split(":") for e in text.split(",")]
        text = next((f[-1] for f in fields if f[0] in DEVICE_GRES and len(f) > 1), "")
    count = text.strip().split(":")[-1]
    return int(count) if count.isdigit() else 0


def launch_facts(env, default_nproc):
    """Returns the launch values {name: Fact} of this node; raises one line on a bad value."""
    tasks, nodes = env.get("SLURM_STEP_NUM_TASKS", ""), env.get("SLURM_STEP_NUM_NODES", "")
    if in_slurm(env) and tasks.isdigit() and nodes.isdigit() and int(tasks) > int(nodes):
        msg = "srun started {} launchers on {} nodes (SLURM_STEP_NUM_TASKS={}); a launcher starts"
        msg += " all the processes of its node: use srun --ntasks-per-node=1"
        raise PyclsError(msg.format(tasks, nodes, tasks))
    if env.get("ASCEND_DEVICE_ID", "").strip():  # a 1p run's device, and its output folder
        _int(env, "ASCEND_DEVICE_ID", fix="set it to a device index (0, 1, ...) or unset it")
    nnodes = node_count(env)
    facts = {
        "NNODES": nnodes,
        "NODE_RANK": node_rank(env, nnodes),
        "MASTER_ADDR": master_addr(env, nnodes),
        "MASTER_PORT": master_port(env),
        "nproc": procs_per_node(env, default_nproc),
    }
    addr = facts["MASTER_ADDR"]
    if addr.source == "MASTER_ADDR set" and nnodes.value * facts["nproc"].value > 1:
        try:  # torchrun would retry a name that does not resolve until its timeout
            socket.getaddrinfo(addr.value, None)
        except (OSError, UnicodeError) as e:
            msg = "MASTER_ADDR={!r} does not resolve ({}); set MASTER_ADDR to node 0's host name "
            why = getattr(e, "strerror", None) or e
            raise PyclsError(
                msg.format(addr.value, why) + "or IP address (127.0.0.1 on one machine)"
            ) from None
    return facts


def sources_line(env, facts):
    """Returns the one line that says where each launch value came from."""
    names = {"nproc": "processes per node"}
    parts = ["{}={} ({})".format(names.get(n, n), f.value, f.source) for n, f in facts.items()]
    return "SLURM job {}: {}".format(env["SLURM_JOB_ID"], ", ".join(parts))


def main(argv=None, env=None):
    """Prints the launch values as shell assignments; a bad value ends in one line and exit 2."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", required=True, help="the launcher's default (or RANK_SIZE)")
    parser.add_argument("--ignore-slurm", action="store_true", help="read no SLURM variable (1p)")
    args = parser.parse_args(argv)
    env = os.environ if env is None else env
    if args.ignore_slurm:
        env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    try:
        facts = launch_facts(env, args.nproc)
    except PyclsError as e:
        sys.stderr.write("error: {}\n".format(e))
        return 2
    if not in_slurm(env):
        facts = {name: facts[name] for name in ("NNODES", "NODE_RANK")}
    for name, fact in facts.items():
        export = "" if name == "nproc" else "export "
        print("{}{}={}".format(export, name, shlex.quote(str(fact.value))))
    sources = sources_line(env, facts) if in_slurm(env) else ""
    print("NODE_SOURCES={}".format(shlex.quote(sources)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
