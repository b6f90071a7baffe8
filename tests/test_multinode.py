"""Multi-node runs on one machine: two launchers as two nodes on 127.0.0.1 and a free port.

Each node runs one gloo process, so two nodes are the world of a one-node RANK_SIZE=2 run; in
deterministic mode with the same seed both must end with the same figures and weights. The
other tests lose a node mid-run, restart a crashed rank on node 1 (MAX_RESTARTS=1), and start
nodes that cannot meet: every node ends in one line, within the rendezvous timeout.
"""

import os
import re
import signal
import subprocess
import sys
import uuid

import pytest
import torch
from _data_utils import make_image_folder
from conftest import REPO, TINY_EN_OPTS, child_env, free_port, json_stats, last_line, output_id
from test_launch import job_pids, wait_for
from test_reliability import HOOKED_TRAIN

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

LAUNCHER = os.path.join(REPO, "test", "train_full_8p.sh")
CFG = os.path.join(REPO, "configs", "dds_baselines", "effnet", "EN-B3_dds_8npu_full.yaml")
# A launcher output id of our own, removed afterwards (the launchers write test/output/<id>/)
OUTPUT_ID = output_id(95)
OUTPUT = os.path.join(REPO, "test", "output", OUTPUT_ID)
TINY = dict(TINY_EN_OPTS, **{"OPTIM.MAX_EPOCH": "2", "DETERMINISTIC": "True"})
# The Final result lines that must equal between a two-node and a one-node run
FIGURES = ("Final Train Accuracy", "Test Accuracy top1", "Test Accuracy top5")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny image folder: 3 classes, 8 train and 4 val images each, 16x16."""
    root = str(tmp_path_factory.mktemp("data"))
    return make_image_folder(root, ("a", "b", "c"), {"train": 8, "val": 4}, (16, 16))


@pytest.fixture(scope="module", autouse=True)
def clean_output():
    """Removes what the launchers wrote under test/output/<OUTPUT_ID>."""
    yield
    import shutil

    shutil.rmtree(OUTPUT, ignore_errors=True)


def env_for(marker, **extra):
    """The environment of one node: no launcher variables, one thread, a job marker."""
    env = child_env(PYCLS_TEST_JOB=marker, ASCEND_DEVICE_ID=OUTPUT_ID)
    env.update(PYCLS_REPO=REPO, PYTHON=sys.executable)
    env.update(extra)
    return env


def launcher_cmd(data, out_dir, **changes):
    """Returns the command of test/train_full_8p.sh on the tiny config."""
    pairs = [x for kv in dict(TINY, OUT_DIR=str(out_dir), **changes).items() for x in kv]
    return ["bash", LAUNCHER, "--data_path=" + data, "--device=cpu", "--cfg=" + CFG] + pairs


def start_nodes(cmd, marker, tmp_path, nnodes=(2, 2), ranks=(0, 1), **env):
    """Starts one launcher per node (each in a session of its own); returns their Popens."""
    port = str(free_port())
    procs = []
    for nn, rank in zip(nnodes, ranks):
        node_env = env_for(marker, NNODES=str(nn), NODE_RANK=str(rank), MASTER_PORT=port)
        node_env.update(MASTER_ADDR="127.0.0.1", RANK_SIZE="1", **env)
        procs.append(start_node(cmd, node_env, tmp_path, rank))
    return procs


def start_node(cmd, env, tmp_path, rank):
    """Starts one node's command in a session of its own, its output in tmp_path/node<rank>.txt."""
    with open(tmp_path / "node{}.txt".format(rank), "w") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True
        )


def finish(procs, marker, limit_s=300):
    """Waits for every node (killing their groups if one hangs); returns the exit codes."""
    try:
        codes = [p.wait(limit_s) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    try:
        wait_for(lambda: not job_pids(marker), 30, "the job's processes to end")
    except AssertionError:
        msg = "processes of the job are left: {}".format(commands(marker))
        raise AssertionError(msg) from None
    return codes


def commands(marker):
    """Returns the command lines of the job's processes still on the machine."""
    found = []
    for pid in job_pids(marker):
        try:
            with open("/proc/{}/cmdline".format(pid), "rb") as f:
                found.append(f.read().replace(b"\0", b" ").decode(errors="replace")[:200])
        except OSError:
            pass
    return found


def output(tmp_path, rank):
    """Returns what node rank printed."""
    return (tmp_path / "node{}.txt".format(rank)).read_text()


def figures(text):
    """Returns the FIGURES lines of a Final result block."""
    return [ln for ln in text.splitlines() if ln.split(" : ")[0] in FIGURES]


def weights(out_dir, epoch=2):
    """Returns the model state of an epoch's checkpoint."""
    path = os.path.join(str(out_dir), "checkpoints", "model_epoch_{:04d}.pyth".format(epoch))
    return torch.load(path, map_location="cpu", weights_only=True)["model_state"]


def assert_same_weights(out_a, out_b):
    """Checks that two runs saved the same final weights."""
    a, b = weights(out_a), weights(out_b)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def one_node(data, tmp_path_factory):
    """A one-node RANK_SIZE=2 launcher run: (OUT_DIR, its output)."""
    tmp = tmp_path_factory.mktemp("one_node")
    env = env_for(uuid.uuid4().hex, RANK_SIZE="2", MASTER_PORT=str(free_port()))
    result = subprocess.run(
        launcher_cmd(data, tmp / "out"), env=env, cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return tmp / "out", result.stdout


def test_two_nodes_end_as_one_node_of_the_same_world(data, one_node, tmp_path):
    marker, out_dir = uuid.uuid4().hex, tmp_path / "out"
    procs = start_nodes(launcher_cmd(data, out_dir), marker, tmp_path)
    codes = finish(procs, marker)
    node0, node1 = output(tmp_path, 0), output(tmp_path, 1)
    assert codes == [0, 0], node0[-3000:] + node1[-3000:]
    assert figures(node0) and figures(node0) == figures(one_node[1]), node0[-3000:]
    for data_type, keys in (("test_epoch", ("top1_err", "top5_err")), ("train_epoch", ("loss",))):
        two, one = json_stats(node0, data_type)[-1], json_stats(one_node[1], data_type)[-1]
        assert [two[k] for k in keys] == [one[k] for k in keys], data_type
    assert_same_weights(one_node[0], out_dir)
    # Node 1: its own log and closing block, no figures, no files of node 0's
    assert "Final Train Accuracy" not in node1
    assert "Node rank : 1" in node1 and "Exit status : 0" in node1
    assert "Processes : 1 (global ranks 1-1)" in node1
    assert "Node rank : 0" in node0 and "Final result : printed by node 0" not in node0
    logs = {}
    for name in os.listdir(OUTPUT):
        if name.startswith("train_full_8p."):
            with open(os.path.join(OUTPUT, name)) as f:
                logs[name] = f.read()
    assert logs["train_full_8p.node1.log"].startswith("Node 1 of 2:"), sorted(logs)
    assert "Node 0 of 2:" in logs["train_full_8p.log"]  # not moved aside by node 1
    assert "Final Train Accuracy" in logs["train_full_8p.log"]
    node1_logs = [n for n, text in logs.items() if "Node 1 of 2" in text]
    assert node1_logs == ["train_full_8p.node1.log"], sorted(logs)


def test_a_lost_node_ends_the_other_in_one_line(data, tmp_path):
    marker, out_dir = uuid.uuid4().hex, tmp_path / "out"
    cmd = launcher_cmd(data, out_dir, **{"OPTIM.MAX_EPOCH": "50", "DIST.TIMEOUT": "20"})
    procs = start_nodes(cmd, marker, tmp_path, RDZV_TIMEOUT="20")
    try:
        first = out_dir / "checkpoints" / "model_epoch_0001.pyth"
        wait_for(lambda: first.exists() or procs[0].poll() is not None, 300, "epoch 1")
        os.killpg(procs[1].pid, signal.SIGKILL)  # node 1's machine is gone
        code = procs[0].wait(60)  # DIST.TIMEOUT bounds it; a closed socket ends it at once
    finally:
        finish(procs, marker)
    text = output(tmp_path, 0)
    assert code != 0, text[-3000:]
    assert re.fullmatch(
        r"error: node 0 lost node 1 \(its launcher stopped or its machine went away; its log "
        r"says why\): rank 0 \(pid \d+\) failed: .*; the job stopped",
        last_line(text),
    ), text[-3000:]
    assert "Traceback" not in text


def test_a_crashed_rank_on_node_1_restarts_across_nodes(data, one_node, tmp_path):
    marker, out_dir = uuid.uuid4().hex, tmp_path / "out"
    hooked = tmp_path / "hooked_train.py"
    hooked.write_text(HOOKED_TRAIN)
    port = str(free_port())
    hook = {"PYCLS_TEST_HOOK": "exit:2:2:1", "PYCLS_TEST_MARKER": str(tmp_path / "hook")}
    pairs = [x for kv in dict(TINY, OUT_DIR=str(out_dir), NUM_GPUS="2").items() for x in kv]
    procs = []
    for rank in (0, 1):
        cmd = [sys.executable, "-m", "pycls.launch.ranks", "--nproc_per_node=1", "--nnodes=2"]
        cmd += ["--node_rank={}".format(rank), "--master_addr=127.0.0.1"]
        cmd += ["--master_port=" + port, "--max-restarts=1", str(hooked), "--cfg", CFG]
        cmd += ["--data_path", data, "--device", "cpu"] + pairs
        procs.append(start_node(cmd, env_for(marker, **hook), tmp_path, rank))
    codes = finish(procs, marker)
    node0 = output(tmp_path, 0)
    assert codes == [0, 0], node0[-3000:] + output(tmp_path, 1)[-3000:]
    assert os.path.exists(str(tmp_path / "hook") + ".rank1")  # rank 1 did crash in epoch 2
    assert re.search(r"Resumed from \S*model_epoch_0001\.pyth", node0)
    assert_same_weights(one_node[0], out_dir)
    assert (
        json_stats(node0, "test_epoch")[-1]["top1_err"]
        == json_stats(one_node[1], "test_epoch")[-1]["top1_err"]
    )


def test_nodes_whose_counts_disagree_end_in_one_line_each(data, tmp_path):
    marker = uuid.uuid4().hex
    cmd = launcher_cmd(data, tmp_path / "out")
    procs = start_nodes(cmd, marker, tmp_path, (2, 3), RDZV_TIMEOUT="5")
    codes = finish(procs, marker, limit_s=60)
    for rank in (0, 1):
        text = output(tmp_path, rank)
        assert codes[rank] == 2, text[-3000:]
        assert last_line(text) == (
            "error: the nodes disagree: node 0 has NNODES=2 and RANK_SIZE=1, node 1 has "
            "NNODES=3 and RANK_SIZE=1; give every node the same NNODES and RANK_SIZE "
            "(processes per node)"
        ), text[-3000:]


ALONE = {
    0: r"error: node 0 waited 3 s for node\(s\) 1 to join \(NNODES=2\); start every node with "
    r"NNODES=2 and the same MASTER_ADDR and MASTER_PORT, each with its own NODE_RANK, or raise "
    r"RDZV_TIMEOUT",
    1: r"error: node 1 could not reach node 0 at 127\.0\.0\.1:\d+ within 3 s \(.*\); start node "
    r"0 \(NODE_RANK=0\) with the same NNODES, MASTER_ADDR and MASTER_PORT, check that this "
    r"machine can reach that address, or raise RDZV_TIMEOUT",
}


@pytest.mark.parametrize("rank", [0, 1])
def test_a_node_alone_ends_within_the_rendezvous_timeout(data, tmp_path, rank):
    marker = uuid.uuid4().hex
    procs = start_nodes(
        launcher_cmd(data, tmp_path / "out"), marker, tmp_path, (2,), (rank,), RDZV_TIMEOUT="3"
    )
    codes = finish(procs, marker, limit_s=60)
    text = output(tmp_path, rank)
    assert codes == [2], text[-3000:]
    assert re.fullmatch(ALONE[rank], last_line(text)), text[-3000:]
