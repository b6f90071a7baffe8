"""Smoke tests of the benchmarks: they run with tiny settings and print their tables.

Nothing about time is asserted: only that the scripts run, print what they promise and fail
when they should.
"""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO

_BENCH = os.path.join(REPO, "benchmarks", "train_throughput.py")
_GPU_SH = os.path.join(REPO, "benchmarks", "gpu.sh")
_TINY = ["--batch", "2", "--im-size", "32", "--rounds", "1", "--steps", "1", "--warmup", "1"]
_TINY += ["--threads", "1"]


def _run(cmd, env=None):
    """Runs a command in the repository root; returns the CompletedProcess (output captured)."""
    full_env = dict(os.environ, PYTHONPATH=REPO, **(env or {}))
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=full_env)


def test_train_throughput_prints_table():
    args = ["--models", "pycls,torchvision", "--formats", "channels_last", "--lr", "0.001"]
    proc = _run([sys.executable, _BENCH, *_TINY, *args])
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "train img/s" in out and "eval img/s" in out and "tr/peer" in out
    rows = [ln.split() for ln in out.splitlines() if ln.startswith(("pycls[", "torchvision "))]
    assert [r[0] for r in rows] == ["pycls[default]", "torchvision"]
    for row in rows:
        assert row[1] == "channels_last" and row[2] == "12.23M"
        assert float(row[3]) > 0 and float(row[6]) > 0  # train and eval images/s
        assert float(row[10]) > 0 and float(row[11]) > 0  # peak RSS of the child processes
    assert rows[1][13] == "1.00"  # the only peer is the best peer


def test_check_loss_falls_fails_when_loss_does_not_fall():
    # With an lr far below fp32's resolution of the weights (the config refuses 0) on a fixed
    # batch (BN in train mode uses batch stats) the weights, and so the loss, cannot change
    args = ["--models", "pycls", "--phases", "train", "--no-memory", "--lr", "1e-30"]
    proc = _run([sys.executable, _BENCH, *_TINY, *args, "--check-loss-falls"])
    assert proc.returncode == 1
    assert "the loss did not fall for: pycls[default] channels_last" in proc.stderr


def test_bad_argument_names_the_choices():
    proc = _run([sys.executable, _BENCH, "--models", "resnet"])
    assert proc.returncode != 0
    assert "--models takes a comma list of pycls, torchvision, timm" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_sh_fails_clearly_without_gpu(tmp_path):
    proc = _run(["bash", _GPU_SH], env={"OUT_DIR": str(tmp_path)})
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ")
    assert "no NVIDIA GPU visible" in proc.stderr or "missing Python modules" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_sh_dry_run(tmp_path):
    proc = _run(["bash", _GPU_SH, "--dry-run"], env={"OUT_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.count("loss fell for every setting") == 2
    assert sorted(os.listdir(tmp_path)) == ["gpu_bf16.log", "gpu_fp16.log"]


# A stand-in for timm's train.py (not in timm's wheel): its flags, its train log lines and its
# summary.csv, as timm 1.0 writes them
_FAKE_TIMM_TRAIN = """\
import argparse, csv, os
p = argparse.ArgumentParser()
p.add_argument("data")
p.add_argument("--output")
p.add_argument("--experiment")
p.add_argument("--epochs", type=int)
args, _ = p.parse_known_args()
assert os.path.isdir(os.path.join(args.data, "train"))
os.makedirs(os.path.join(args.output, args.experiment))
with open(os.path.join(args.output, args.experiment, "summary.csv"), "w", newline="") as f:
    out = csv.writer(f)
    out.writerow(["epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr"])
    for e in range(args.epochs):
        for i, t in ((0, "0.500s,   64.00/s  (0.500s,   64.00/s)"), (8, "0.400s,   80.00/s  "
                     "(0.450s,   71.11/s)")):
            print("Train: %d [%4d/9 (100%%)]  Loss: 1.00 (1.50)  Time: %s  LR: 2.000e-03  "
                  "Data: 0.010 (0.010)" % (e, i, t))
        out.writerow([e, 1.5, 1.2, 50.0 + e, 90.0, 0.002])
"""


@pytest.mark.slow
def test_e2e_timm_prints_both_runs_and_where_our_time_goes(small_data, tmp_path):
    fake = tmp_path / "train.py"
    fake.write_text(_FAKE_TIMM_TRAIN)
    script = os.path.join(REPO, "benchmarks", "e2e_timm.py")
    args = ["--data", small_data, "--epochs", "2", "--im-size", "16", "--workers", "0"]
    args += ["--runs", "ours_pbn,timm", "--timm-train", str(fake), "--work", str(tmp_path / "w")]
    proc = _run([sys.executable, script, *args])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    table = [ln.split() for ln in proc.stdout.splitlines()]
    rows = {r[0]: r[1:] for r in table if len(r) == 6 and r[0] in ("ours_pbn", "timm")}
    assert sorted(rows) == ["ours_pbn", "timm"]
    assert float(rows["ours_pbn"][0]) > 0 and float(rows["ours_pbn"][1]) > 0
    # timm's figures come from its log and summary.csv: 9 steps of 0.45 s at batch 32, top-1 51
    assert rows["timm"][1] == "71.1" and rows["timm"][3:] == ["51.00", "51.00"]
    assert "ours_pbn outside the steps, s in all: start-up " in proc.stdout
    assert "precise BN" in proc.stdout and "ours_pbn/timm wall time: " in proc.stdout


def test_e2e_timm_names_a_missing_train_py_and_a_bad_run(tmp_path):
    script = os.path.join(REPO, "benchmarks", "e2e_timm.py")
    proc = _run([sys.executable, script, "--runs", "timm", "--timm-train", str(tmp_path / "no")])
    assert proc.returncode != 0 and "is not a file; pass timm's train.py" in proc.stderr
    proc = _run([sys.executable, script, "--runs", "ours,tim"])
    assert proc.returncode == 2 and "unknown run tim" in proc.stderr
