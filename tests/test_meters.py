"""Tests of pycls.core.meters and pycls.core.timer (with a fake clock)."""

import math
import re

import pytest
import torch
from conftest import json_stats

import pycls.core.distributed as dist
import pycls.core.meters as meters
import pycls.core.timer as timer
from pycls.core.config import cfg


class FakeClock:
    """A perf_counter that moves only when told to."""

    def __init__(self):
        self.now = 100.0

    def perf_counter(self):
        return self.now


@pytest.fixture(autouse=True)
def ten_epochs(fresh_cfg):
    """The default config (OUT_DIR in tmp_path) of a 10-epoch run."""
    cfg.OPTIM.MAX_EPOCH = 10


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(timer, "time", fake)
    return fake


def _t(value):
    return torch.tensor(float(value))


def _run_train_iters(meter, clock, iters, cur_epoch=0):
    """Runs (seconds, top1, top5, loss, mb_size) iterations through a train meter."""
    for cur_iter, (seconds, top1, top5, loss, mb_size) in enumerate(iters):
        meter.iter_tic()
        clock.now += seconds
        meter.iter_toc()
        meter.update_stats(_t(top1), _t(top5), _t(loss), 0.1, mb_size)
        meter.log_iter_stats(cur_epoch, cur_iter)


def _json_lines(caplog, data_type):
    """Returns the json_stats of a type that the test logged."""
    return json_stats("\n".join(caplog.messages), data_type)


def test_timer_with_fake_clock(clock):
    t = timer.Timer()
    for seconds in (1.0, 3.0):
        t.tic()
        clock.now += seconds
        t.toc()
    assert (t.calls, t.diff, t.total_time, t.average_time) == (2, 3.0, 4.0, 2.0)
    t.reset()
    assert (t.calls, t.total_time, t.average_time) == (0, 0.0, 0.0)


def test_topk_errors_are_percent_tensors():
    preds = torch.tensor(
        [
            [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],  # label 0: top-1 right
            [0.1, 0.9, 0.5, 0.4, 0.3, 0.2],  # label 2: top-5 right
            [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # label 5: both wrong
            [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],  # label 5: top-1 right
        ]
    )
    labels = torch.tensor([0, 2, 5, 5])
    top1, top5 = meters.topk_errors(preds, labels, [1, 5])
    assert torch.is_tensor(top1) and top1.dim() == 0
    assert top1.item() == pytest.approx(50.0) and top5.item() == pytest.approx(25.0)


def test_topk_errors_with_fewer_classes_than_k():
    preds = torch.tensor([[0.2, 0.8], [0.9, 0.1]])
    top1, top5 = meters.topk_errors(preds, torch.tensor([0, 0]), [1, 5])
    assert top1.item() == pytest.approx(50.0) and top5.item() == pytest.approx(0.0)


def test_train_epoch_stats_are_batch_weighted_and_fps_skips_warmup(clock, monkeypatch):
    cfg.PREC_TIME.WARMUP_ITER = 2
    cfg.LOG_PERIOD = 4
    meter = meters.TrainMeter(epoch_iters=6)
    iters = [
        (5.0, 10.0, 0.0, 1.0, 4),  # warm-up iterations: slow
        (5.0, 10.0, 0.0, 1.0, 4),
        (1.0, 40.0, 20.0, 2.0, 2),
        (1.0, 40.0, 20.0, 2.0, 2),
        (1.0, 10.0, 0.0, 1.0, 4),
        (1.0, 10.0, 0.0, 1.0, 4),
    ]
    _run_train_iters(meter, clock, iters)
    stats = meter.get_epoch_stats(0, {"bad_files": 2, "ema_top1": torch.tensor(7.0)})
    images = 4 + 4 + 2 + 2 + 4 + 4
    assert stats["top1_err"] == pytest.approx((10 * 16 + 40 * 4) / images)
    assert stats["top5_err"] == pytest.approx(20 * 4 / images)
    assert stats["loss"] == pytest.approx((1 * 16 + 2 * 4) / images)
    assert stats["fps"] == pytest.approx((2 + 2 + 4 + 4) / 4.0)
    assert stats["time_epoch"] == pytest.approx(14.0)
    assert stats["time_avg"] == pytest.approx(14.0 / 6)
    assert stats["lr"] == pytest.approx(0.1)
    assert stats["epoch"] == "1/10"
    assert stats["bad_files"] == 2 and stats["ema_top1"] == 7.0
    assert isinstance(stats["mem"], int) and stats["mem"] > 0
    assert re.fullmatch(r"\d+:\d\d:\d\d", stats["eta"])
    # eta: average iteration time times the 54 iterations left
    assert stats["eta"] == meters.time_string(14.0 / 6 * 54)
    monkeypatch.setattr(dist, "get_world_size", lambda: 8)
    assert meter.fps() == pytest.approx(8 * 12 / 4.0)


def test_fps_of_an_epoch_shorter_than_warmup_uses_all_iterations(clock):
    cfg.PREC_TIME.WARMUP_ITER = 5
    meter = meters.TrainMeter(epoch_iters=2)
    _run_train_iters(meter, clock, [(2.0, 0, 0, 1, 4), (2.0, 0, 0, 1, 4)])
    assert meter.get_epoch_stats(0)["fps"] == pytest.approx(8 / 4.0)


def test_iter_stats_logged_only_every_log_period(clock, caplog):
    caplog.set_level("INFO")
    cfg.LOG_PERIOD = 2
    meter = meters.TrainMeter(epoch_iters=5)
    iters = [(1.0, 10.0, 5.0, 1.0, 2), (1.0, 30.0, 5.0, 3.0, 2), (1.0, 0.0, 0.0, 0.5, 2)]
    results = []
    for cur_iter, (seconds, top1, top5, loss, mb_size) in enumerate(iters):
        meter.iter_tic()
        clock.now += seconds
        meter.iter_toc()
        meter.update_stats(_t(top1), _t(top5), _t(loss), 0.05, mb_size)
        results.append(meter.log_iter_stats(2, cur_iter))
    assert results[0] is None and results[2] is None
    lines = _json_lines(caplog, "train_iter")
    assert len(lines) == 1
    line = lines[0]
    assert line["epoch"] == "3/10" and line["iter"] == "2/5"
    assert line["top1_err"] == pytest.approx(20.0) and line["loss"] == pytest.approx(2.0)
    assert line["lr"] == pytest.approx(0.05)
    expected = {"top5_err", "time_avg", "time_diff", "eta", "mem", "fps"}
    assert expected <= set(line)
    assert results[1]["top1_err"] == pytest.approx(20.0)


def test_stats_are_summed_over_ranks_with_one_all_reduce(clock, monkeypatch):
    calls = []

    def fake_all_reduce_sum(tensor):
        calls.append(tensor.clone())
        return tensor.mul_(2)  # two ranks with the same stats

    monkeypatch.setattr(dist, "all_reduce_sum", fake_all_reduce_sum)
    cfg.LOG_PERIOD = 2
    meter = meters.TrainMeter(epoch_iters=3)
    _run_train_iters(meter, clock, [(1.0, 10.0, 0.0, 1.0, 4)] * 3)
    assert len(calls) == 1
    assert calls[0].tolist() == pytest.approx([80.0, 0.0, 8.0, 8.0])
    stats = meter.get_epoch_stats(0)
    assert len(calls) == 2
    assert stats["top1_err"] == pytest.approx(10.0) and stats["loss"] == pytest.approx(1.0)
    assert meter.stats.count == 24


def test_update_stats_never_reads_tensors(clock, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("host-device sync in update_stats")

    meter = meters.TrainMeter(epoch_iters=100)
    test_meter = meters.TestMeter(epoch_iters=100)
    for name in ("item", "tolist", "cpu", "__float__", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    for _ in range(3):
        meter.iter_tic()
        meter.iter_toc()
        meter.update_stats(_t(1.0), _t(2.0), _t(3.0), 0.1, 8)
        test_meter.iter_tic()
        test_meter.iter_toc()
        test_meter.update_stats(_t(1.0), _t(2.0), 8)
    monkeypatch.undo()
    assert meter.get_epoch_stats(0)["top5_err"] == pytest.approx(2.0)


def test_non_finite_loss_is_logged_as_nan(clock, caplog):
    caplog.set_level("INFO")
    meter = meters.TrainMeter(epoch_iters=2)
    _run_train_iters(meter, clock, [(1.0, 10.0, 0.0, 1.0, 4), (1.0, 10.0, 0.0, math.nan, 4)])
    stats = meter.log_epoch_stats(0)
    assert math.isnan(stats["loss"])
    (line,) = _json_lines(caplog, "train_epoch")
    assert math.isnan(line["loss"]) and line["top1_err"] == pytest.approx(10.0)


def test_test_meter_tracks_min_errors(clock, caplog):
    caplog.set_level("INFO")
    meter = meters.TestMeter(epoch_iters=1, phase="test_ema")
    for cur_epoch, err in enumerate([30.0, 20.0, 25.0]):
        meter.reset()
        meter.iter_tic()
        clock.now += 1.0
        meter.iter_toc()
        meter.update_stats(_t(err), _t(err / 2), 10)
        meter.log_iter_stats(cur_epoch, 0)
        stats = meter.log_epoch_stats(cur_epoch, {"bad_files": 0})
    assert stats["top1_err"] == pytest.approx(25.0)
    assert stats["min_top1_err"] == pytest.approx(20.0)
    assert stats["min_top5_err"] == pytest.approx(10.0)
    lines = _json_lines(caplog, "test_ema_epoch")
    assert [d["epoch"] for d in lines] == ["1/10", "2/10", "3/10"]
    assert lines[-1]["bad_files"] == 0 and lines[-1]["fps"] == pytest.approx(10.0)
    assert len(_json_lines(caplog, "test_ema_iter")) == 0  # LOG_PERIOD 10 > 1 iteration
