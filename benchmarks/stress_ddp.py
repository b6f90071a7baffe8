#!/usr/bin/env python3
"""Runs N two-process train + eval jobs in a row through the 8p launchers; counts hangs.

    python benchmarks/stress_ddp.py [--runs 40] [--limit 300] [--epochs 2] [--workers 2]
        [--data_path DIR] [--cfg FILE] [--work DIR] [--keep] [--output_id ID] [--until S]
        [--nodes 1|2] [KEY VALUE ...]

Each job is `RANK_SIZE=2 bash test/train_full_8p.sh --device=cpu` (a tiny EfficientNet on
the digits demo data, DATA_LOADER.NUM_WORKERS loader workers per rank), then
`RANK_SIZE=2 bash test/train_eval_8p.sh` on its last checkpoint. With --nodes 2 the train
launcher runs as two nodes on this machine (`NNODES=2 NODE_RANK=0|1 RANK_SIZE=1`, started at
once), and the job finishes only when both exit 0. Each launcher runs under a
hard limit of --limit seconds: past it the job counts as hung, its processes' Python stacks
are dumped with py-spy (when installed) into the work folder, and every process of the job
(torchrun starts its ranks in sessions of their own, so all descendants) is killed. Extra
KEY VALUE pairs go to both launchers (e.g. DATA_LOADER.MP_CONTEXT fork to compare with the
old way of starting workers). Prints one line per job and `finished F failed X hung H of N`;
exits 1 unless every job finished. Nothing is downloaded: the digits come from scikit-learn.
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# KEY VALUE changes that make the launchers' EN-B3 config a tiny EfficientNet on 16px digits
TINY_EN = [
    "MODEL.NUM_CLASSES", "10", "EN.STEM_W", "8", "EN.DEPTHS", "[1,1,1,1,1,1,1]",
    "EN.WIDTHS", "[8,8,16,16,24,24,32]", "EN.HEAD_W", "64", "TRAIN.IM_SIZE", "16",
    "TEST.IM_SIZE", "16", "TRAIN.BATCH_SIZE", "64", "TEST.BATCH_SIZE", "100",
    "LOG_PERIOD", "5", "VERBOSE", "False",
]  # fmt: skip

# test/output/<id>/ of the launchers' logs during a stress run (removed after each job)
OUTPUT_ID = "95"

# Variables of an enclosing launch that must not reach the jobs
_LAUNCH_VARS = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "NNODES",
    "NODE_RANK",
)


def _free_port():
    """Returns a TCP port that is free now (each job gets its own MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children():
    """Returns {pid: [child pids]} of the processes now running (from /proc)."""
    tree = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/{}/stat".format(name)) as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(name))
    return tree


def _descendants(pid):
    """Returns pid and all its descendants (whatever session they are in)."""
    tree, found, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(tree.get(p, []))
    return found


def _dump_stacks(pids, path):
    """Writes each process's Python stacks (py-spy dump) to path, when py-spy is there."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=os.path.dirname(sys.executable))
    with open(path, "w") as f:
        if spy is None:
            f.write("py-spy is not installed (pip install py-spy); no stacks\n")
            return
        for pid in pids:
            if not _is_python(pid):
                continue
            f.write("=== pid {}\n".format(pid))
            f.flush()
            cmd = [spy, "dump", "--pid", str(pid)]
            try:
                subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=30)
            except subprocess.TimeoutExpired:
                f.write("py-spy timed out\n")


def _is_python(pid):
    """Tells whether a process runs python (bash and tee have no Python stacks to dump)."""
    try:
        with open("/proc/{}/cmdline".format(pid), "rb") as f:
            return b"python" in f.read().split(b"\0")[0]
    except OSError:
        return False


def _kill_all(pids):
    """Sends SIGKILL to each pid (already gone is fine)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_launchers(cmd, envs, limit, log_path, stacks_path):
    """Runs one launcher per env (the nodes of one job, at once) under a hard limit; returns
    "finished" (every one exited 0), "failed" or "hung" (one outlived the limit). Node K > 0
    logs to log_path with .nodeK before its extension."""
    procs, logs = [], []
    for k, env in enumerate(envs):
        root, ext = os.path.splitext(log_path)
        logs.append(open(log_path if k == 0 else "{}.node{}{}".format(root, k, ext), "w"))
        procs.append(
            subprocess.Popen(
                cmd,
                stdout=logs[-1],
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
                start_new_session=True,
            )  # fmt: skip
        )
    end, codes = time.time() + limit, []
    try:
        for proc in procs:
            codes.append(proc.wait(timeout=max(end - time.time(), 0.1)))
        status = "finished" if not any(codes) else "failed"
    except subprocess.TimeoutExpired:
        pids = [p for proc in procs for p in _descendants(proc.pid)]
        _dump_stacks(pids, stacks_path)
        _kill_all([p for proc in procs for p in _descendants(proc.pid)])
        status = "hung"
    for proc in procs:
        proc.wait()
    for log in logs:
        log.close()
    # Whatever the launchers left behind would hold the port or the CPUs of the next job
    _kill_all([p for proc in procs for p in _descendants(proc.pid) if p != proc.pid])
    return status


def run_job(i, args, env, work):
    """Runs the train then the eval launcher of job i; returns (status, seconds, log path)."""
    job_dir = os.path.join(work, "job_{:03d}".format(i))
    os.makedirs(job_dir)
    out_dir = os.path.join(job_dir, "out")
    job_env = dict(env, MASTER_PORT=str(_free_port()))
    # --nodes N: the train launcher runs as N nodes on 127.0.0.1, 2 // N processes each
    node_envs = [job_env]
    if args.nodes > 1:
        node = dict(job_env, NNODES=str(args.nodes), MASTER_ADDR="127.0.0.1")
        node["RANK_SIZE"] = str(2 // args.nodes)
        node_envs = [dict(node, NODE_RANK=str(k)) for k in range(args.nodes)]
    common = ["--data_path=" + args.data_path, "--device=cpu"]
    common += ["--cfg=" + args.cfg] if args.cfg else []
    opts = [] if args.cfg else list(TINY_EN)
    opts += ["DATA_LOADER.NUM_WORKERS", str(args.workers)] + args.opts
    train = ["bash", os.path.join(REPO, "test", "train_full_8p.sh")] + common + opts
    train += ["OPTIM.MAX_EPOCH", str(args.epochs), "OUT_DIR", out_dir]
    weights = os.path.join(out_dir, "checkpoints", "model_epoch_{:04d}.pyth".format(args.epochs))
    evaluate = ["bash", os.path.join(REPO, "test", "train_eval_8p.sh")] + common + opts
    evaluate += ["--pth_path=" + weights, "OUT_DIR", os.path.join(job_dir, "eval")]
    start = time.time()
    for name, cmd, envs in (("train", train, node_envs), ("eval", evaluate, [job_env])):
        log = os.path.join(job_dir, name + ".log")
        status = run_launchers(cmd, envs, args.limit, log, log[:-4] + ".stacks.txt")
        shutil.rmtree(os.path.join(REPO, "test", "output", args.output_id), ignore_errors=True)
        if status != "finished":
            return status, time.time() - start, log
    if not args.keep:
        shutil.rmtree(job_dir)
    return "finished", time.time() - start, None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=40, help="number of jobs (40)")
    parser.add_argument("--limit", type=int, default=300, help="seconds per launcher (300)")
    parser.add_argument("--epochs", type=int, default=2, help="train epochs per job (2)")
    parser.add_argument("--workers", type=int, default=2, help="loader workers per rank (2)")
    parser.add_argument("--data_path", help="digits data (default: written to the work dir)")
    parser.add_argument("--cfg", help="config file (default: the launchers' EN-B3 made tiny)")
    parser.add_argument("--work", help="folder for logs and outputs (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the outputs of finished jobs")
    parser.add_argument("--output_id", default=OUTPUT_ID, help="test/output/<id> of the logs")
    parser.add_argument(
        "--nodes", type=int, default=1, choices=(1, 2), help="train as 1 or 2 nodes"
    )
    parser.add_argument("--until", type=float, default=0, help="start no job after S seconds")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs for both runs")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="stress_ddp_")
    os.makedirs(work, exist_ok=True)
    if not args.data_path:
        args.data_path = os.path.join(work, "digits")
        tool = os.path.join(REPO, "tools", "make_demo_data.py")
        subprocess.run([sys.executable, tool, args.data_path, "--size", "16"], check=True)
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS}
    env.update(RANK_SIZE="2", ASCEND_DEVICE_ID=args.output_id, PYTHON=sys.executable)
    counts = {"finished": 0, "failed": 0, "hung": 0}
    print("work folder: {}".format(work), flush=True)
    start = time.time()
    for i in range(args.runs):
        if args.until and time.time() - start > args.until:
            args.runs = i
            break
        status, seconds, log = run_job(i, args, env, work)
        counts[status] += 1
        where = "" if log is None else " (see {})".format(log)
        print("job {}/{}: {} in {:.0f} s{}".format(i + 1, args.runs, status, seconds, where))
        sys.stdout.flush()
    summary = "finished {finished} failed {failed} hung {hung} of {runs}"
    print(summary.format(runs=args.runs, **counts))
    sys.exit(0 if counts["finished"] == args.runs else 1)


if __name__ == "__main__":
    main()
