"""Tests of pycls.core.distributed: process placement, and real 2-process gloo training on CPU."""

import datetime
import os
import subprocess
import sys

import pytest
import torch
from conftest import LAUNCH_VARS, REPO, child_env, free_port

from pycls.core import distributed as du
from pycls.core.errors import PyclsError

# One rank of a 2-process run: reduce tensors, train one DDP step, save the results
WORKER = """
import sys
import torch
from pycls.core import distributed as du

out_dir, rank_id = sys.argv[1], sys.argv[2]
device = du.init("cpu", rank_id=int(rank_id) if rank_id else None)
rank = du.get_rank()
mean = du.scaled_all_reduce([torch.tensor([float(rank), 2.0 * rank])])[0]
total = du.all_reduce_sum(torch.tensor([rank + 1.0]))
torch.manual_seed(rank)  # each rank starts from other weights: DDP copies rank 0's
model = du.wrap_model(torch.nn.Linear(4, 2), device)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
torch.manual_seed(100 + rank)
model(torch.randn(8, 4)).pow(2).mean().backward()
optimizer.step()
torch.distributed.barrier()
result = {
    "rank": rank,
    "world_size": du.get_world_size(),
    "main": du.is_main_proc(),
    "ddp": isinstance(model, torch.nn.parallel.DistributedDataParallel),
    "mean": mean,
    "total": total,
    "weights": [p.detach() for p in model.parameters()],
}
torch.save(result, "{}/rank{}.pyth".format(out_dir, rank))
du.cleanup()
"""


@pytest.fixture
def clean_env(monkeypatch):
    """Removes launcher variables; anything the code under test sets is undone too."""
    for name in LAUNCH_VARS:
        monkeypatch.setenv(name, "unset")
        monkeypatch.delenv(name)


def test_single_process(clean_env):
    assert du.process_info() == (0, 1, 0)
    assert du.process_info(device_id=2) == (0, 1, 2)
    assert du.init("cpu") == torch.device("cpu")
    assert not du.is_initialized()
    assert (du.get_rank(), du.get_world_size(), du.is_main_proc()) == (0, 1, True)
    tensor = torch.tensor([3.0])
    assert du.scaled_all_reduce([tensor])[0] is tensor and tensor.item() == 3.0
    assert du.all_reduce_sum(tensor).item() == 3.0
    model = torch.nn.Linear(2, 2)
    assert du.wrap_model(model, torch.device("cpu")) is model
    du.cleanup()


def test_the_error_line_takes_its_rank_from_this_module(clean_env, monkeypatch, tmp_path):
    from pycls.launch import cli

    def line():
        return cli._dist_line(RuntimeError("Connection reset by peer"))

    monkeypatch.setenv("RANK", "7")  # a leftover: the process group's rank wins
    assert line().startswith("error: rank 7 lost contact")
    init = "file://" + str(tmp_path / "store")
    du.torch_dist.init_process_group("gloo", init_method=init, rank=0, world_size=1)
    try:
        assert du.is_initialized() and line().startswith("error: rank 0 lost contact")
    finally:
        du.cleanup()
    assert not du.is_initialized() and line().startswith("error: rank 7 lost contact")


def test_torchrun_env(clean_env, monkeypatch):
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert du.process_info(rank_id=0, device_id=0) == (5, 8, 1)


def test_seed_arguments(clean_env, monkeypatch):
    monkeypatch.setenv("RANK_SIZE", "8")
    assert du.process_info(rank_id=3) == (3, 8, 3)
    assert du.process_info(rank_id=3, device_id=5) == (3, 8, 5)


def test_rank_id_without_rank_size(clean_env):
    with pytest.raises(PyclsError, match="--rank_id 3 needs the process count in RANK_SIZE"):
        du.process_info(rank_id=3)


@pytest.mark.parametrize(
    "env,rank_id",
    [
        ({"RANK_SIZE": "2"}, 2),
        ({"RANK_SIZE": "eight"}, 0),
        ({"RANK": "0", "WORLD_SIZE": "0"}, None),
    ],
)
def test_bad_placement(clean_env, monkeypatch, env, rank_id):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(PyclsError, match="RANK"):
        du.process_info(rank_id=rank_id)


def test_init_defaults_rendezvous(clean_env, monkeypatch):
    calls = []
    monkeypatch.setattr(du.torch_dist, "is_initialized", lambda: False)
    monkeypatch.setattr(du.torch_dist, "init_process_group", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setenv("RANK_SIZE", "4")
    du.init("cpu", rank_id=2)
    timeout = datetime.timedelta(seconds=1800)  # DIST.TIMEOUT's default
    kwargs = {"init_method": "env://", "rank": 2, "world_size": 4, "timeout": timeout}
    assert calls == [(("gloo",), kwargs)]
    assert (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]) == ("127.0.0.1", "29688")


def run_two_ranks(tmp_path, mode):
    """Runs WORKER as 2 processes launched torchrun-style or seed-style; returns results."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    base = child_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    procs = []
    for rank in range(2):
        env = dict(base)
        if mode == "torchrun":
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
        else:
            env.update(RANK_SIZE="2")
        rank_id = "" if mode == "torchrun" else str(rank)
        cmd = [sys.executable, str(script), str(tmp_path), rank_id]
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stderr=subprocess.PIPE))
    errors = [proc.communicate()[1].decode() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], "\n".join(errors)
    return [torch.load(tmp_path / "rank{}.pyth".format(r), weights_only=True) for r in range(2)]


def expected_weights():
    """Computes the DDP step on one process: rank 0's weights, gradients averaged."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    grads = []
    for rank in range(2):
        torch.manual_seed(100 + rank)
        grads.append(
            torch.autograd.grad(model(torch.randn(8, 4)).pow(2).mean(), model.parameters())
        )
    return [p.detach() - 0.1 * (g0 + g1) / 2 for p, g0, g1 in zip(model.parameters(), *grads)]


@pytest.mark.parametrize("mode", ["torchrun", "seed"])
def test_two_process_gloo(tmp_path, mode):
    results = run_two_ranks(tmp_path, mode)
    assert [(r["rank"], r["world_size"], r["main"], r["ddp"]) for r in results] == [
        (0, 2, True, True),
        (1, 2, False, True),
    ]
    for r in results:
        torch.testing.assert_close(r["mean"], torch.tensor([0.5, 1.0]))
        torch.testing.assert_close(r["total"], torch.tensor([3.0]))
    for w0, w1, expected in zip(results[0]["weights"], results[1]["weights"], expected_weights()):
        assert torch.equal(w0, w1)
        torch.testing.assert_close(w0, expected)


# One rank of a 2-process job where rank 1 stalls: rank 0 waits DIST.TIMEOUT in an all_reduce
STALLED_PEER = """
import sys, time
import torch
from pycls.core import distributed as du
from pycls.core.config import cfg
from pycls.launch.cli import run_cli

def main():
    cfg.DIST.TIMEOUT = 2
    du.init("cpu")
    if du.get_rank() == 1:
        time.sleep(30)
    du.scaled_all_reduce([torch.ones(2)])

run_cli(main)
"""


def test_a_stalled_peer_ends_in_one_line_naming_the_rank_and_the_wait(tmp_path):
    base = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    base.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1")
    base["PYTHONPATH"] = os.pathsep.join([REPO, base.get("PYTHONPATH", "")])
    procs = []
    for rank in range(2):
        env = dict(base, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
        cmd = [sys.executable, "-c", STALLED_PEER]
        procs.append(subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True))
    err0 = procs[0].communicate(timeout=120)[1]
    procs[1].kill()
    procs[1].communicate()
    assert procs[0].returncode == 1, err0
    line = err0.strip().splitlines()[-1]
    assert line.startswith("error: rank 0 waited 2 s for another process in a collective"), err0
    assert line.endswith("if it is only slow, raise DIST.TIMEOUT") and "Traceback" not in err0


def test_a_torchrun_restart_uses_keys_of_its_own(monkeypatch):
    calls = []
    monkeypatch.setattr(du.torch_dist, "TCPStore", lambda *a, **k: calls.append((a, k)) or "s")
    monkeypatch.setattr(du.torch_dist, "PrefixStore", lambda prefix, store: (prefix, store))
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert du._restart_store(2) is None  # the first attempt: torch's own keys
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    assert du._restart_store(2) == ("pycls_restart_2", "s")
    assert calls == [(("10.0.0.1", 29500, 2), {"is_master": False})]
