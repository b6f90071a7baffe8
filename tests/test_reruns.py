"""Reruns and input order: a finished run's rerun changes nothing, bad inputs stop a run before
OUT_DIR is touched, and weights paths may name a folder (TEST.WEIGHTS, --pth_path)."""

import os

import pytest
import torch
from conftest import json_stats, run_tool

import pycls.core.checkpoint as cp
from pycls.core.errors import PyclsError


def save_fake(path, epoch=0):
    """Saves a small file in the checkpoint format."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"epoch": epoch, "model_state": {"w": torch.zeros(1)}}, path)
    return str(path)


def test_find_weights_takes_a_file_an_out_dir_or_its_checkpoints_folder(tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    first = save_fake(ckpts / "model_epoch_0001.pyth")
    newest = save_fake(ckpts / "model_epoch_0002.pyth", epoch=1)
    assert cp.find_weights(first)[0] == first
    assert cp.find_weights(str(tmp_path / "run"))[0] == newest
    assert cp.find_weights(str(ckpts))[0] == newest
    best = save_fake(ckpts / "model_best.pyth")
    assert cp.find_weights(str(tmp_path / "run"))[0] == best == cp.find_weights(str(ckpts))[0]


def test_find_weights_skips_an_incomplete_newest_checkpoint(tmp_path):
    complete = save_fake(tmp_path / "model_epoch_0001.pyth")
    (tmp_path / "model_epoch_0002.pyth").write_bytes(b"PK\x03\x04 cut short")
    (tmp_path / ".tmp_model_epoch_0003.pyth.1.abc").write_bytes(b"")
    assert cp.find_weights(str(tmp_path))[0] == complete


def test_find_weights_in_a_folder_without_checkpoints_is_one_error(tmp_path):
    with pytest.raises(PyclsError, match=r"holds no checkpoint \(model_best.pyth or model_epo"):
        cp.find_weights(str(tmp_path))[0]


def test_checkpoint_epoch_reads_the_name():
    assert cp.checkpoint_epoch("/x/checkpoints/model_epoch_0012.pyth") == 12
    assert cp.checkpoint_epoch("/x/checkpoints/model_best.pyth") is None


def snapshot(out_dir):
    """Returns {name: mtime_ns} of config.yaml and the checkpoints in OUT_DIR."""
    names = ["config.yaml"] + [
        os.path.join("checkpoints", n) for n in os.listdir(out_dir / "checkpoints")
    ]
    return {n: os.stat(out_dir / n).st_mtime_ns for n in names if os.path.exists(out_dir / n)}


@pytest.fixture(scope="module")
def finished(small_data, tiny_cfg, tmp_path_factory):
    """A finished 1-epoch run: (OUT_DIR, its log text)."""
    out_dir = tmp_path_factory.mktemp("finished")
    args = ["--cfg", tiny_cfg, "--data_path", small_data, "OUT_DIR", out_dir, "OPTIM.MAX_EPOCH", 1]
    res = run_tool("train_net", *args)
    assert res.returncode == 0, res.stderr[-2000:]
    return out_dir, res.stdout + res.stderr


def test_rerun_of_a_finished_run_changes_nothing(finished, small_data, tiny_cfg):
    out_dir, first_log = finished
    before = snapshot(out_dir)
    args = ["--cfg", tiny_cfg, "--data_path", small_data, "OUT_DIR", out_dir, "OPTIM.MAX_EPOCH", 1]
    res = run_tool("train_net", *args)
    assert res.returncode == 0, res.stderr[-2000:]
    log = res.stdout + res.stderr
    assert "All 1 epochs (OPTIM.MAX_EPOCH 1) in OUT_DIR {} are done".format(out_dir) in log
    assert not json_stats(log, "train_epoch") and "Resumed from" not in log
    assert snapshot(out_dir) == before
    # test_net still evaluates the run, given its OUT_DIR
    eval_args = ["--cfg", tiny_cfg, "--data_path", small_data, "TEST.WEIGHTS", out_dir]
    res = run_tool("test_net", *eval_args, "OUT_DIR", out_dir / "eval")
    assert res.returncode == 0, res.stderr[-2000:]
    log = res.stdout + res.stderr
    best = os.path.join(str(out_dir), "checkpoints", "model_best.pyth")
    assert "Loaded model weights from: {}".format(best) in log
    trained = json_stats(first_log, "test_epoch")[-1]["top1_err"]
    assert json_stats(log, "test_epoch")[-1]["top1_err"] == trained


def test_rerun_with_a_wrong_data_path_stops_before_reading_checkpoints(
    finished, tiny_cfg, tmp_path
):
    out_dir, _ = finished
    before = snapshot(out_dir)
    missing = tmp_path / "no_such_data"
    res = run_tool("train_net", "--cfg", tiny_cfg, "--data_path", missing, "OUT_DIR", out_dir)
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: data path {} does not exist".format(missing))
    assert "Resumed from" not in res.stdout + res.stderr
    assert snapshot(out_dir) == before


@pytest.mark.parametrize("key", ["TRAIN.WEIGHTS", "TRAIN.PRETRAINED"])
def test_missing_start_weights_stop_a_run_before_out_dir_is_written(
    small_data, tiny_cfg, tmp_path, key
):
    out_dir = tmp_path / "out"
    weights = tmp_path / "missing.pyth"
    args = ["--cfg", tiny_cfg, "--data_path", small_data, "OUT_DIR", out_dir, key, weights]
    res = run_tool("train_net", *args)
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert last == "error: {} {} does not exist; check the path".format(key, weights)
    assert not os.path.exists(out_dir / "config.yaml")
    assert not os.path.exists(out_dir / "checkpoints")


def test_bad_data_leaves_a_new_out_dir_unwritten(tiny_cfg, tmp_path):
    out_dir = tmp_path / "out"
    res = run_tool(
        "train_net", "--cfg", tiny_cfg, "--data_path", tmp_path / "x", "OUT_DIR", out_dir
    )
    assert res.returncode == 2 and "error: data path" in res.stderr
    assert not os.path.exists(out_dir / "config.yaml")
    assert not os.path.exists(out_dir / "checkpoints")
