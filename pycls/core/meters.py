"""Meters: top-k errors and the train/test stats behind the json_stats log lines.

Per-iteration stats stay on the device (no host sync): they are read and summed over all
processes only every LOG_PERIOD iterations and at the end of an epoch."""

import datetime
import math

import torch

import pycls.core.device as devices
import pycls.core.distributed as dist
import pycls.core.logging as logging
from pycls.core.config import cfg
from pycls.core.timer import Timer

logger = logging.get_logger(__name__)


def topk_errors(preds, labels, ks):
    """Returns the top-k errors (percent, 0-dim tensors on the device) for each k in ks."""
    assert preds.size(0) == labels.size(0), "batch dim of predictions and labels must match"
    max_k = min(max(ks), preds.size(1))
    _, top_inds = torch.topk(preds, max_k, dim=1, largest=True, sorted=True)
    correct = top_inds.eq(labels.view(-1, 1)).float()
    return [(1.0 - correct[:, :k].sum() / preds.size(0)) * 100.0 for k in ks]


def time_string(seconds):
    """Formats seconds as H:MM:SS (as pycls)."""
    return str(datetime.timedelta(seconds=int(seconds)))


def _ratios(names, sums, count):
    """Returns {name: sum / count}, NaN when count is 0."""
    return {n: s / count if count else float("nan") for n, s in zip(names, sums)}


class MeterStats:
    """Batch-weighted sums of named stats: a device tensor for the window, host sums after."""

    def __init__(self, names):
        self.names = tuple(names)
        self.device = None
        self.reset()

    def reset(self):
        """Clears the window and the totals."""
        self.window = None
        self.totals, self.count = [0.0] * len(self.names), 0

    def add(self, values, mb_size):
        """Adds one mini-batch's stats (tensors, one per name); no host sync."""
        # A last entry counts the images, so that one all_reduce sums stats and count
        values = [v.detach().float().reshape(()) for v in values]
        stacked = torch.stack(values + [values[0].new_ones(())]) * mb_size
        self.window = stacked if self.window is None else self.window.add_(stacked)
        self.device = stacked.device

    def flush(self):
        """Sums the window over all processes (one sync), adds it to the totals, returns it."""
        window = self.window
        if window is None:
            window = torch.zeros(len(self.names) + 1, device=self.device)
        *sums, count = dist.all_reduce_sum(window).tolist()
        count = int(round(count))
        self.totals = [t + s for t, s in zip(self.totals, sums)]
        self.count += count
        self.window = None
        return _ratios(self.names, sums, count)

    def averages(self):
        """Flushes the window and returns the batch-weighted averages of the totals."""
        self.flush()
        return _ratios(self.names, self.totals, self.count)


class _Meter:
    """What train and test meters share: timer, stats sums, throughput, log lines."""

    _stat_names = ("top1_err", "top5_err")

    def __init__(self, epoch_iters, phase=None):
        self.epoch_iters = epoch_iters
        self.max_iter = cfg.OPTIM.MAX_EPOCH * epoch_iters
        self.phase = phase or self.phase
        self.iter_timer = Timer()
        self.warmup_iters = cfg.PREC_TIME.WARMUP_ITER
        self.stats = MeterStats(self._stat_names)
        self.reset()

    def reset(self):
        """Clears the epoch's stats (the iteration timer averages over all epochs)."""
        self.stats.reset()
        # Seconds and images of the epoch's iterations, and of those after the warm-up
        self.iters, self.seconds, self.images = 0, 0.0, 0
        self.timed_seconds, self.timed_images = 0.0, 0

    def iter_tic(self):
        """Starts timing an iteration."""
        self.iter_timer.tic()

    def iter_toc(self):
        """Stops timing an iteration (update_stats then adds its images and time)."""
        self.iter_timer.toc()

    def _add(self, values, mb_size):
        """Adds one iteration's stats, images and time."""
        self.stats.add(values, mb_size)
        self.iters += 1
        self.seconds += self.iter_timer.diff
        self.images += mb_size
        if self.iters > self.warmup_iters:
            self.timed_seconds += self.iter_timer.diff
            self.timed_images += mb_size

    def fps(self):
        """Images/s across all processes, warm-up left out (unless nothing else was timed)."""
        images, seconds = self.timed_images, self.timed_seconds
        if images == 0 or seconds <= 0:
            images, seconds = self.images, self.seconds
        return images * dist.get_world_size() / seconds if seconds > 0 else 0.0

    def _common_stats(self, cur_epoch):
        """Returns the stats every line carries (mem: peak MB of the stats' device)."""
        mem = devices.max_memory_mb(self.stats.device or torch.device("cpu"))
        return {
            "epoch": "{}/{}".format(cur_epoch + 1, cfg.OPTIM.MAX_EPOCH),
            "time_avg": self.iter_timer.average_time,
            "mem": int(math.ceil(mem)),
            "fps": self.fps(),
        }

    def get_epoch_stats(self, cur_epoch, extra=None):
        """Returns the epoch's stats (summed over all processes), plus the extra dict."""
        errs = self.stats.averages()
        stats = {**self._common_stats(cur_epoch), **errs, "time_epoch": self.seconds}
        stats.update(self._extra((cur_epoch + 1) * self.epoch_iters, errs))
        # extra may hold 0-dim tensors (EMA errors, skipped AMP steps)
        extra = extra or {}
        return {**stats, **{k: v.item() if torch.is_tensor(v) else v for k, v in extra.items()}}

    def log_iter_stats(self, cur_epoch, cur_iter):
        """Logs and returns the stats since the last line every LOG_PERIOD iterations."""
        if (cur_iter + 1) % cfg.LOG_PERIOD != 0:
            return None
        stats = {**self._common_stats(cur_epoch), **self.stats.flush()}
        stats["iter"] = "{}/{}".format(cur_iter + 1, self.epoch_iters)
        stats["time_diff"] = self.iter_timer.diff
        stats.update(self._extra(cur_epoch * self.epoch_iters + cur_iter + 1))
        logger.info(logging.dump_log_data(stats, self.phase + "_iter"))
        return stats

    def log_epoch_stats(self, cur_epoch, extra=None):
        """Logs the epoch's stats (summed over all processes) and returns them."""
        stats = self.get_epoch_stats(cur_epoch, extra)
        logger.info(logging.dump_log_data(stats, self.phase + "_epoch"))
        return stats


class TrainMeter(_Meter):
    """Measures training stats."""

    _stat_names = ("top1_err", "top5_err", "loss")
    phase = "train"
    lr = None  # the last LR given to update_stats

    def update_stats(self, top1_err, top5_err, loss, lr, mb_size):
        """Adds one mini-batch's errors and loss (device tensors) and the LR."""
        self._add([top1_err, top5_err, loss], mb_size)
        self.lr = lr

    def _extra(self, iters_done, _errs=None):
        """Returns the time left for the remaining iterations and the last LR."""
        eta = time_string(self.iter_timer.average_time * (self.max_iter - iters_done))
        return {"eta": eta, "lr": None if self.lr is None else float(self.lr)}


class TestMeter(_Meter):
    """Measures testing stats (and the lowest errors so far)."""

    phase = "test"
    min_top1_err = min_top5_err = 100.0

    def update_stats(self, top1_err, top5_err, mb_size):
        """Adds one mini-batch's errors (device tensors)."""
        self._add([top1_err, top5_err], mb_size)

    def _extra(self, _iters_done, errs=None):
        """Returns the lowest errors so far at an epoch's end (an empty epoch keeps them)."""
        if errs is None:
            return {}
        if self.stats.count:
            self.min_top1_err = min(self.min_top1_err, errs["top1_err"])
            self.min_top5_err = min(self.min_top5_err, errs["top5_err"])
        return {"min_top1_err": self.min_top1_err, "min_top5_err": self.min_top5_err}
