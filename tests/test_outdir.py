"""Tests of pycls.core.outdir: a writable OUT_DIR with room for the checkpoints, and its lock."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

import pycls.core.checkpoint as cp
import pycls.core.outdir as outdir
from pycls.core.config import cfg
from pycls.core.errors import PyclsError


@pytest.fixture(autouse=True)
def default_cfg(fresh_cfg):
    """The default config, OUT_DIR in tmp_path."""


def test_check_out_dir(tmp_path):
    checkpoint_dir = outdir.check_out_dir(cp.get_checkpoint_dir())
    assert os.path.isdir(checkpoint_dir) and os.listdir(checkpoint_dir) == []
    with pytest.raises(PyclsError, match="MiB free"):
        outdir.check_out_dir(cp.get_checkpoint_dir(), min_free_bytes=2**62)
    model_bytes = cp.estimate_checkpoint_bytes(torch.nn.Linear(4, 10))
    assert (
        outdir.check_out_dir(cp.get_checkpoint_dir(), min_free_bytes=2 * model_bytes)
        == checkpoint_dir
    )
    blocker = tmp_path / "file"
    blocker.write_text("a user's file")
    cfg.OUT_DIR = str(blocker)
    with pytest.raises(PyclsError, match="not writable"):
        outdir.check_out_dir(cp.get_checkpoint_dir())
    assert blocker.read_text() == "a user's file"


def test_space_check_counts_the_checkpoints_kept(monkeypatch, caplog):
    free = shutil.disk_usage(cfg.OUT_DIR).free
    cfg.OPTIM.MAX_EPOCH, cfg.TRAIN.CHECKPOINT_KEEP = 10, 0
    one = free // 4  # a run keeping 10 of these cannot fit, one save can
    outdir.check_out_dir(cp.get_checkpoint_dir(), min_free_bytes=2 * one)
    assert any("keeps 10 more checkpoints" in r.getMessage() for r in caplog.records)
    caplog.clear()
    cfg.TRAIN.CHECKPOINT_KEEP = 1
    outdir.check_out_dir(cp.get_checkpoint_dir(), min_free_bytes=2 * one)
    assert not any("CHECKPOINT_KEEP" in r.getMessage() for r in caplog.records)


def test_out_dir_lock_refuses_a_second_run_and_takes_over_a_stale_one(tmp_path, caplog):
    code = (
        "import sys, time; import pycls.core.outdir as outdir; from pycls.core.config import cfg\n"
        "cfg.OUT_DIR = sys.argv[1]; outdir.lock_out_dir(); print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    other = subprocess.Popen(
        [sys.executable, "-c", code, cfg.OUT_DIR], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert other.stdout.readline().strip() == "locked"
        with pytest.raises(PyclsError) as info:
            outdir.lock_out_dir()
        msg = str(info.value)
        assert "is in use by another run (pid {} on host ".format(other.pid) in msg
    finally:
        other.kill()  # a killed run leaves its lock file behind
        other.wait()
    outdir.lock_out_dir()  # stale: taken over
    assert any("Taking over OUT_DIR" in r.getMessage() for r in caplog.records)
    outdir._release_lock()
    assert not os.path.exists(os.path.join(cfg.OUT_DIR, ".lock"))
