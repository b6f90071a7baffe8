"""tools/final_result.py: the seed's Final result block, the ModelZoo summary, kept files."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, load_tool

from pycls.core.errors import PyclsError

fr = load_tool("final_result")

TOOL = os.path.join(REPO, "tools", "final_result.py")


def stats_line(data_type, **stats):
    """Returns a json_stats log line."""
    return "[meters.py: 1]: json_stats: " + json.dumps(dict(stats, _type=data_type)) + "\n"


def train_log(epochs=2, fps=(100.0, 300.0), top1=(60.0, 40.0), loss=(2.0, 1.5)):
    """Returns the text of a training log of a few epochs (train and test lines)."""
    text = "[trainer.py: 1]: Start epoch: 1\n"
    for e in range(epochs):
        epoch = "{}/{}".format(e + 1, epochs)
        text += stats_line("train_iter", epoch=epoch, fps=1.0, top1_err=99.0, loss=9.0)
        text += stats_line("train_epoch", epoch=epoch, fps=fps[e], top1_err=top1[e], loss=loss[e])
        text += stats_line("test_epoch", epoch=epoch, fps=500.0, top1_err=30.0 - e, top5_err=5.0)
    return text


def write_run(tmp_path, log_text, batch=64, num_gpus=2):
    """Writes a log and an OUT_DIR/config.yaml; returns (log path, OUT_DIR)."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    cfg = "NUM_GPUS: {}\nTRAIN:\n  BATCH_SIZE: {}\nTEST:\n  BATCH_SIZE: 50\n"
    (out_dir / "config.yaml").write_text(cfg.format(num_gpus, batch))
    log = tmp_path / "run.log"
    log.write_text(log_text)
    return str(log), str(out_dir)


def block(text):
    """Parses the 'label : value' lines after 'Final result' into a dict."""
    lines = text.split("Final result", 1)[1].splitlines()
    return dict(ln.rsplit(" : ", 1) for ln in lines if " : " in ln)


def run(*args):
    """Runs tools/final_result.py; returns the CompletedProcess."""
    cmd = [sys.executable, TOOL] + [str(a) for a in args]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_block_has_the_seeds_lines_with_the_seeds_meanings(tmp_path):
    log, out_dir = write_run(tmp_path, train_log())
    res = run(log, "--case", "train_full_8p", "--e2e", 42, "--out_dir", out_dir)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[:4] == [
        "------------------ Final result ------------------",
        "Final Performance images/sec : 200.00",  # mean train_epoch fps
        "Final Train Accuracy : 60.0000",  # 100 - the last train_epoch top1_err
        "E2E Training Duration sec : 42",
    ]
    result = block(res.stdout)
    assert result["Case"] == "train_full_8p"
    assert (result["Test Accuracy top1"], result["Test Accuracy top5"]) == ("71.0000", "95.0000")


def test_eval_accuracy_is_the_test_epochs(tmp_path):
    text = stats_line("test_epoch", epoch="1/1", fps=80.0, top1_err=12.5, top5_err=1.0)
    log, out_dir = write_run(tmp_path, text)
    res = run(log, "--case", "train_eval_8p", "--e2e", 3, "--out_dir", out_dir)
    assert res.returncode == 0, res.stderr
    result = block(res.stdout)
    assert result["Final Train Accuracy"] == result["Test Accuracy top1"] == "87.5000"
    assert result["Final Performance images/sec"] == "80.00"
    assert not os.path.exists(os.path.join(out_dir, fr.SAVED_NAME))  # only training is saved


def test_modelzoo_summary_and_loss_file(tmp_path):
    log, out_dir = write_run(tmp_path, train_log(), batch=64, num_gpus=2)
    summary_dir = tmp_path / "summary"
    summary_dir.mkdir()
    res = run(log, "--case", "train_full_8p", "--e2e", 42, "--out_dir", out_dir,
              "--summary_dir", summary_dir)  # fmt: skip
    assert res.returncode == 0, res.stderr
    name = "EfficientNet-B3_bs64_2p_acc"
    lines = (summary_dir / (name + ".log")).read_text().splitlines()
    pairs = [ln.split(" = ", 1) for ln in lines]
    assert [k for k, _ in pairs] == [
        "Network", "RankSize", "BatchSize", "DeviceType", "CaseName", "ActualFPS",
        "TrainingTime", "TrainAccuracy", "ActualLoss", "E2ETrainingTime",
    ]  # fmt: skip
    values = dict(pairs)
    assert values["Network"] == "EfficientNet-B3" and values["CaseName"] == name
    assert (values["RankSize"], values["BatchSize"]) == ("2", "64")
    assert values["ActualFPS"] == "200.00" and values["TrainingTime"] == "320.00"  # 64/200 s
    assert (values["TrainAccuracy"], values["ActualLoss"]) == ("60.0000", "1.5000")
    assert values["E2ETrainingTime"] == "42"
    loss = summary_dir / "train_{}_loss.txt".format(name)
    assert loss.read_text().split() == ["2.0000", "1.5000"]


def test_performance_cases_are_perf():
    data = {"train_epoch": {"epoch": ["1/1"], "fps": [5.0], "top1_err": [50.0], "loss": [1.0]}}
    cfg_data = {"NUM_GPUS": 8, "TRAIN": {"BATCH_SIZE": 512}}
    result = fr.compute_result(data, "train_performance_8p", "9", cfg_data)
    assert result["case_name"] == "EfficientNet-B3_bs512_8p_perf"


def test_a_finished_runs_rerun_prints_the_saved_result(tmp_path):
    log, out_dir = write_run(tmp_path, train_log())
    first = run(log, "--case", "train_full_8p", "--e2e", 42, "--out_dir", out_dir)
    assert first.returncode == 0, first.stderr
    rerun_log = tmp_path / "rerun.log"
    rerun_log.write_text("[trainer.py: 1]: All 2 epochs ... are done, nothing to train\n")
    again = run(rerun_log, "--case", "train_full_8p", "--e2e", 1, "--out_dir", out_dir)
    assert again.returncode == 0, again.stderr
    assert block(again.stdout) == block(first.stdout)  # same figures, E2E included
    assert "Nothing was trained" in again.stdout


def test_a_log_without_stats_and_nothing_saved_is_an_error(tmp_path):
    log, out_dir = write_run(tmp_path, "[trainer.py: 1]: nothing\n")
    res = run(log, "--out_dir", out_dir)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("error: no train_epoch or test_epoch")


def test_keep_earlier_never_replaces_a_file(tmp_path):
    path = str(tmp_path / "case.log")
    for text in ("first", "second", "third"):
        with open(path, "w") as f:
            f.write(text)
        fr.keep_earlier(path)
    kept = [(tmp_path / "case.log.{}".format(n)).read_text() for n in (1, 2, 3)]
    assert kept == ["first", "second", "third"] and not os.path.exists(path)
    assert fr.keep_earlier(path) is None


def test_write_new_keeps_a_different_earlier_file(tmp_path):
    path = str(tmp_path / "summary.log")
    fr.write_new(path, "a\n")
    fr.write_new(path, "a\n")  # the same text: nothing to keep
    assert sorted(os.listdir(tmp_path)) == ["summary.log"]
    fr.write_new(path, "b\n")
    assert (tmp_path / "summary.log.1").read_text() == "a\n"
    assert (tmp_path / "summary.log").read_text() == "b\n"


def test_unreadable_saved_result_is_ignored(tmp_path):
    (tmp_path / fr.SAVED_NAME).write_text("{not json")
    assert fr.load_saved_result(str(tmp_path)) is None
    with pytest.raises(PyclsError, match="no train_epoch"):
        fr.compute_result({}, "c", "1", {})
