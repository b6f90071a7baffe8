"""pycls.launch.ranks and the launchers' runner: stops, ports, NUM_GPUS, the Ascend env script."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import types
import uuid

import pytest
import torch
from conftest import LAUNCH_VARS, REPO, json_stats, output_id

from pycls.launch import cli, ranks

TEST_DIR = os.path.join(REPO, "test")
# A launcher output id of our own, removed afterwards (the launchers write test/output/<id>/)
OUTPUT_ID = output_id(96)


def job_pids(marker):
    """Returns the pids of the processes whose environment holds PYCLS_TEST_JOB=marker."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/{}/environ".format(pid), "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if "PYCLS_TEST_JOB={}".format(marker).encode() in env:
            pids.append(int(pid))
    return pids


def port_is_free(port):
    """Tells whether a TCP port on this host can be listened on."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def _default_sigint():
    """Gives the started shell the default SIGINT (a non-interactive parent may ignore it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(cmd, marker, log_path, **env):
    """Starts cmd in a session of its own with output to log_path; returns the Popen."""
    full_env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    full_env.update(PYCLS_TEST_JOB=marker, ASCEND_DEVICE_ID=OUTPUT_ID, OMP_NUM_THREADS="1")
    full_env.update(env)
    with open(log_path, "w") as log:
        return subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=REPO,
            start_new_session=True, preexec_fn=_default_sigint,
        )  # fmt: skip


def wait_for(predicate, limit_s, what):
    """Polls predicate until it holds; fails the test after limit_s (a hang guard, not a speed
    figure: a stopped job ends in well under a second here)."""
    end = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < end, "still waiting for " + what
        time.sleep(0.2)


@pytest.fixture(scope="module", autouse=True)
def clean_output():
    """Removes what the launchers wrote under test/output/<OUTPUT_ID>."""
    yield
    import shutil

    shutil.rmtree(os.path.join(TEST_DIR, "output", OUTPUT_ID), ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    "script,rank_size,sig",
    [
        ("train_full_8p", 2, signal.SIGTERM),
        ("train_full_8p", 2, signal.SIGINT),
        ("train_full_1p", None, signal.SIGTERM),
        ("train_net", 2, signal.SIGTERM),  # the CLI alone with NUM_GPUS 2
    ],
)
def test_stopping_a_launcher_stops_its_whole_job(
    demo_data, tiny_cfg, tmp_path, script, rank_size, sig
):
    marker, port = uuid.uuid4().hex, ranks.free_port()
    case = "{}_{}".format(script, sig.name)
    if script == "train_net":
        cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--cfg", tiny_cfg]
        cmd += ["--data_path", demo_data, "--device", "cpu", "NUM_GPUS", str(rank_size)]
    else:
        cmd = ["bash", os.path.join(TEST_DIR, script + ".sh"), "--data_path=" + demo_data]
        cmd += ["--device=cpu", "--cfg=" + tiny_cfg]
    cmd += [
        "OPTIM.MAX_EPOCH",
        "50",
        "DATA_LOADER.NUM_WORKERS",
        "1",
        "OUT_DIR",
        str(tmp_path / case),
    ]
    env = {"MASTER_PORT": str(port), "RANK_SIZE": str(rank_size or 1)}
    log_path = tmp_path / "out.txt"
    proc = start(cmd, marker, log_path, **env)
    try:
        checkpoints = tmp_path / case / "checkpoints"
        wait_for(lambda: len(list(checkpoints.glob("model_epoch_*.pyth"))) >= 2, 300, "epoch 2")
        proc.send_signal(sig)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    wait_for(lambda: not job_pids(marker), 30, "the job's processes to end")
    assert port_is_free(port)
    output = log_path.read_text()
    assert code == 128 + sig, output[-3000:]
    assert "Traceback" not in output and "SignalException" not in output
    last = output.strip().splitlines()[-1]
    m = re.fullmatch(
        r"stopped by {}; rerun the same command to resume from epoch (\d+)".format(sig.name), last
    )
    assert m, output[-3000:]
    names = sorted(os.listdir(checkpoints))
    assert not [n for n in names if n.startswith(".tmp")]
    epochs = sorted(int(n[12:16]) for n in names if n.startswith("model_epoch_"))
    assert int(m.group(1)) == epochs[-1] + 1
    newest = checkpoints / "model_epoch_{:04d}.pyth".format(epochs[-1])
    assert (
        torch.load(newest, map_location="cpu", weights_only=True)["epoch"] == epochs[-1] - 1
    )  # 0-based, as pycls


@pytest.mark.slow
def test_num_gpus_2_starts_two_local_ranks(demo_data, tiny_cfg, tmp_path):
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--cfg", tiny_cfg]
    cmd += ["--data_path", demo_data, "OPTIM.MAX_EPOCH", "1", "NUM_GPUS", "2"]
    # auto where it picks the CPU (it then warns once); a flag after the pairs
    auto = not torch.cuda.is_available() and launch_device_is_cpu()
    cmd += ["--device", "auto" if auto else "cpu", "OUT_DIR", str(tmp_path / "run")]
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stdout[-1500:] + res.stderr[-1500:]
    assert "world size 2" in res.stdout
    if auto:
        assert "--device auto picked cpu" in res.stdout
        warning = "--device auto found no GPU or NPU, so all 2 processes run on the CPU; to "
        warning += "choose, pass --device=cpu with RANK_SIZE=N (or use the 1p launcher)"
        assert (res.stdout + res.stderr).count(warning) == 1
    assert [s["epoch"] for s in json_stats(res.stdout, "train_epoch")] == ["1/1"]


def launch_device_is_cpu():
    """Tells whether --device auto picks the CPU here."""
    from pycls.core import device

    return device.resolve("auto") == "cpu"


def test_stop_line_names_the_epoch_a_rerun_starts_at(tmp_path):
    line = cli.stop_line(signal.SIGTERM, "train_net", str(tmp_path))
    assert line == "stopped by SIGTERM; rerun the same command to resume from epoch 1"
    (tmp_path / "checkpoints").mkdir()
    for name in [
        "model_epoch_0003.pyth",
        "model_epoch_0004.pyth.tmp",
        ".tmp_model_epoch_0009.pyth",
    ]:
        (tmp_path / "checkpoints" / name).write_bytes(b"x")
    line = cli.stop_line(signal.SIGTERM, "train_net", str(tmp_path))
    assert line == "stopped by SIGTERM; rerun the same command to resume from epoch 4"
    line = cli.stop_line(signal.SIGINT, "test_net", str(tmp_path))
    assert line == "stopped by SIGINT; rerun the same command to run it again"


def test_env_npu_sources_cann_with_nounset_off_and_restores_it(tmp_path):
    toolkit = tmp_path / "ascend-toolkit"
    toolkit.mkdir()
    # A stand-in for CANN's set_env.sh that reads an unset variable, as public copies do
    (toolkit / "set_env.sh").write_text("export PYTHONPATH=/cann/python:$PYTHONPATH_UNSET_HERE\n")
    script = 'set -u; source test/env_npu.sh; echo "ok $PYTHONPATH $-"; echo $UNSET_AFTER'
    env = dict(os.environ, PYCLS_CANN_ROOT=str(tmp_path))
    env.pop("PYTHONPATH_UNSET_HERE", None)
    res = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=REPO, env=env)
    first, *rest = res.stdout.splitlines()
    assert first.startswith("ok /cann/python:") and "u" in first.split()[-1], res.stderr
    assert not rest and "UNSET_AFTER: unbound variable" in res.stderr  # nounset is back on
    res = subprocess.run(
        ["bash", "-c", 'source test/env_npu.sh; echo "$-"'],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    assert res.returncode == 0 and "u" not in res.stdout  # and stays off where it was off


STOPPED_CLI = """
import os, signal, sys, time
from pycls.launch.cli import run_cli

def main():
    from pycls.core.config import cfg

    cfg.OUT_DIR = {out_dir!r}
    ready, go = os.pipe()
    child = os.fork()
    if child == 0:  # a loader worker: inherits the handler, and dies of the signal
        os.write(go, b"x")
        time.sleep(30)
        os._exit(0)
    os.read(ready, 1)
    os.kill(child, signal.SIGTERM)
    print("child", os.waitpid(child, 0)[1], flush=True)
    os.kill(os.getpid(), signal.SIG{sig})
    time.sleep(30)

run_cli(main)
"""


@pytest.mark.parametrize("sig,under_torchrun", [("TERM", False), ("INT", False), ("TERM", True)])
def test_a_stopped_cli_ends_in_one_line(tmp_path, sig, under_torchrun):
    script = tmp_path / "train_net.py"
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "model_epoch_0003.pyth").write_bytes(b"x")
    script.write_text(STOPPED_CLI.format(sig=sig, out_dir=str(tmp_path)))
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS + ["TORCHELASTIC_RUN_ID"]}
    env["PYTHONPATH"] = REPO
    if under_torchrun:
        env["TORCHELASTIC_RUN_ID"] = "test"
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env)
    signum = getattr(signal, "SIG" + sig)
    assert res.returncode == 128 + signum
    assert res.stdout == "child {}\n".format(signal.SIGTERM)  # killed by the signal itself
    if under_torchrun:  # a rank: its launcher says it
        assert res.stderr == ""
    else:
        line = "stopped by SIG{}; rerun the same command to resume from epoch 4\n".format(sig)
        assert res.stderr == line


def test_the_launcher_blames_the_rank_that_failed_first():
    def failure(exitcode, message="", timestamp=10):
        fake = types.SimpleNamespace(exitcode=exitcode, pid=100, timestamp=timestamp)
        fake.error_file = "/x/error.json" if message else "<N/A>"
        fake.message = message
        return fake

    lost = "error: rank 0 {} (reset); the job's first failure says why".format(cli.LOST_PEER)
    cases = [
        ({0: failure(-signal.SIGTERM), 1: failure(2, "error: bad batch", 11)}, 1),
        ({0: failure(1, lost, 9), 1: failure(1)}, 1),
        ({0: failure(-signal.SIGTERM), 1: failure(-signal.SIGKILL, timestamp=12)}, 1),
        ({0: failure(2, "error: a", 12), 1: failure(2, "error: b", 11)}, 1),
    ]
    for failures, blamed in cases:
        assert ranks._root_cause(failures)[0] == blamed
    assert ranks._recorded_error(failure(2, "error: bad batch")) == "bad batch"
