"""End-to-end runs on the CPU: train, checkpoint, test, resume (issue: training engine)."""

import os

import pytest
import torch
from conftest import json_stats, run_tool


@pytest.fixture(scope="module")
def trained(demo_data, tiny_cfg, tmp_path_factory):
    """A 2-epoch run of the tiny EfficientNet on the digits, with precise BN as pycls's
    default recipe; returns (out_dir, log text)."""
    out_dir = tmp_path_factory.mktemp("run")
    args = ["--cfg", tiny_cfg, "--data_path", demo_data, "OUT_DIR", out_dir]
    res = run_tool("train_net", *args, "BN.USE_PRECISE_STATS", "True")
    assert res.returncode == 0, res.stderr[-2000:]
    return str(out_dir), res.stdout + res.stderr


def test_two_epochs_lower_the_loss_and_write_checkpoints(trained):
    out_dir, log = trained
    epochs = json_stats(log, "train_epoch")
    assert [e["epoch"] for e in epochs] == ["1/2", "2/2"]
    assert epochs[1]["loss"] < epochs[0]["loss"] < 2.5
    iters = json_stats(log, "train_iter")
    assert iters and all(s["fps"] > 0 and s["mem"] > 0 for s in iters)
    tests = json_stats(log, "test_epoch")
    assert len(tests) == 2 and tests[-1]["top1_err"] < 90.0
    ckpt_dir = os.path.join(out_dir, "checkpoints")
    names = sorted(os.listdir(ckpt_dir))
    assert names == ["model_best.pyth", "model_epoch_0001.pyth", "model_epoch_0002.pyth"]
    ckpt = torch.load(os.path.join(ckpt_dir, "model_epoch_0002.pyth"), weights_only=True)
    assert ckpt["epoch"] == 1 and "s1.b1.dwise.weight" in ckpt["model_state"]
    assert os.path.isfile(os.path.join(out_dir, "config.yaml"))
    assert json_stats(log, "complexity")[0]["params"] > 0


def test_test_net_reproduces_the_last_test_epoch(trained, demo_data, tiny_cfg):
    out_dir, log = trained
    weights = os.path.join(out_dir, "checkpoints", "model_epoch_0002.pyth")
    res = run_tool(
        "test_net", "--cfg", tiny_cfg, "--data_path", demo_data, "TEST.WEIGHTS", weights,
        "OUT_DIR", os.path.join(out_dir, "eval"),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    test = json_stats(res.stdout + res.stderr, "test_epoch")[0]
    last = json_stats(log, "test_epoch")[-1]
    assert (test["top1_err"], test["top5_err"]) == (last["top1_err"], last["top5_err"])


def test_rerun_resumes_at_the_next_epoch(trained, small_data, tiny_cfg, tmp_path):
    out_dir, _ = trained
    resumed = tmp_path / "resumed"
    os.makedirs(resumed / "checkpoints")
    src = os.path.join(out_dir, "checkpoints", "model_epoch_0001.pyth")
    os.link(src, resumed / "checkpoints" / "model_epoch_0001.pyth")
    res = run_tool("train_net", "--cfg", tiny_cfg, "--data_path", small_data, "OUT_DIR", resumed)
    assert res.returncode == 0, res.stderr[-2000:]
    log = res.stdout + res.stderr
    assert "Resumed from" in log and "model_epoch_0001.pyth" in log
    assert [e["epoch"] for e in json_stats(log, "train_epoch")] == ["2/2"]
    assert sorted(os.listdir(resumed / "checkpoints"))[-1] == "model_epoch_0002.pyth"


def test_time_net_reports_iteration_times(small_data, tiny_cfg, tmp_path):
    opts = ["PREC_TIME.NUM_ITER", "2", "PREC_TIME.WARMUP_ITER", "1", "OUT_DIR", tmp_path]
    res = run_tool("time_net", "--cfg", tiny_cfg, "--data_path", small_data, *opts)
    assert res.returncode == 0, res.stderr[-2000:]
    times = json_stats(res.stdout + res.stderr, "iter_times")[0]
    assert times["train_fw_bw_time"] > 0 and times["test_fw_time"] > 0


def test_profperf_writes_a_chrome_trace(small_data, tiny_cfg, tmp_path):
    opts = ["OPTIM.MAX_EPOCH", "1", "PROFILE.NUM_STEPS", "2", "OUT_DIR", tmp_path]
    res = run_tool(
        "train_net", "--cfg", tiny_cfg, "--data_path", small_data, "--profperf", "1", *opts
    )
    assert res.returncode == 0, res.stderr[-2000:]
    trace = tmp_path / "profile_rank0.json"
    assert trace.is_file() and b"traceEvents" in trace.read_bytes()[:4096]


@pytest.mark.slow
def test_a_long_run_holds_its_memory(small_data, tiny_cfg, tmp_path):
    # 40 epochs with what repeats each epoch (loader workers, precise BN, the test epoch on a
    # BN-folded copy, a checkpoint and its pruning): the process's peak RSS, which json_stats
    # reports as mem on the CPU, may not keep growing after the first epochs have warmed up
    args = ["--cfg", tiny_cfg, "--data_path", small_data, "OUT_DIR", tmp_path]
    args += ["OPTIM.MAX_EPOCH", "40", "BN.USE_PRECISE_STATS", "True", "BN.NUM_SAMPLES_PRECISE"]
    args += ["64", "DATA_LOADER.NUM_WORKERS", "2", "TRAIN.BATCH_SIZE", "50", "LOG_PERIOD", "100"]
    res = run_tool("train_net", *args)
    assert res.returncode == 0, res.stderr[-2000:]
    mem = [e["mem"] for e in json_stats(res.stdout + res.stderr, "train_epoch")]
    assert len(mem) == 40
    assert mem[-1] <= 1.1 * mem[4], "peak RSS grew from {} MB (epoch 5) to {} MB".format(
        mem[4], mem[-1]
    )
