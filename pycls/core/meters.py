"""Meters: top-k errors and the train/test stats behind the json_stats log lines.

Per-iteration stats stay on the device (no host sync); they are read, and summed over all
processes, only every LOG_PERIOD iterations and at the end of an epoch.
"""

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


def _ratio(num, den):
    """Returns num / den, or NaN when den is 0."""
    return num / den if den else float("nan")


class MeterStats:
    """Batch-weighted sums of named stats: a device tensor for the window, host sums after."""

    def __init__(self, names):
        self.names = tuple(names)
        self.device = None
        self.reset()

    def reset(self):
        """Clears the window and the totals."""
        self.window = None
        self.window_count = 0
        self.totals = [0.0] * len(self.names)
        self.count = 0

    def add(self, values, mb_size):
        """Adds one mini-batch's stats (tensors, one per name); no host sync."""
        stacked = torch.stack([v.detach().float().reshape(()) for v in values]) * mb_size
        if self.window is None:
            self.window, self.device = stacked, stacked.device
        else:
            self.window.add_(stacked)
        self.window_count += mb_size

    def flush(self):
        """Sums the window over all processes (one sync), adds it to the totals, returns it."""
        device = self.device if self.device is not None else torch.device("cpu")
        window = self.window
        if window is None:
            window = torch.zeros(len(self.names), device=device)
        count = torch.tensor([self.window_count], dtype=torch.float32, device=device)
        sums = dist.all_reduce_sum(torch.cat([window, count])).tolist()
        sums, count = sums[:-1], int(round(sums[-1]))
        self.totals = [t + s for t, s in zip(self.totals, sums)]
        self.count += count
        self.window, self.window_count = None, 0
        return {n: _ratio(s, count) for n, s in zip(self.names, sums)}

    def averages(self):
        """Returns the batch-weighted averages of the totals (call flush first)."""
        return {n: _ratio(t, self.count) for n, t in zip(self.names, self.totals)}


class Throughput:
    """Images and seconds of an epoch's iterations, with the warm-up iterations apart."""

    def __init__(self, warmup_iters):
        self.warmup_iters = warmup_iters
        self.reset()

    def reset(self):
        """Clears the counts."""
        self.images, self.seconds, self.image_calls, self.time_calls = 0, 0.0, 0, 0
        self.timed_images, self.timed_seconds = 0, 0.0

    def add_time(self, seconds):
        """Adds the time of one iteration."""
        self.time_calls += 1
        self.seconds += seconds
        if self.time_calls > self.warmup_iters:
            self.timed_seconds += seconds

    def add_images(self, mb_size):
        """Adds the images of one iteration."""
        self.image_calls += 1
        self.images += mb_size
        if self.image_calls > self.warmup_iters:
            self.timed_images += mb_size

    def fps(self):
        """Images/s across all processes, warm-up left out (unless nothing else was timed)."""
        images, seconds = self.timed_images, self.timed_seconds
        if images == 0 or seconds <= 0:
            images, seconds = self.images, self.seconds
        return images * dist.get_world_size() / seconds if seconds > 0 else 0.0


def _host_values(extra):
    """Returns a copy of extra with 0-dim tensors read into Python numbers."""
    extra = extra or {}
    return {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in extra.items()}


class _Meter:
    """What train and test meters share: timer, stats sums, throughput, log lines."""

    _stat_names = ("top1_err", "top5_err")

    def __init__(self, epoch_iters, phase):
        self.epoch_iters = epoch_iters
        self.max_iter = cfg.OPTIM.MAX_EPOCH * epoch_iters
        self.phase = phase
        self.iter_timer = Timer()
        self.stats = MeterStats(self._stat_names)
        self.speed = Throughput(cfg.PREC_TIME.WARMUP_ITER)

    def reset(self, timer=False):
        """Clears the epoch's stats (and the iteration timer if timer)."""
        if timer:
            self.iter_timer.reset()
        self.stats.reset()
        self.speed.reset()

    def iter_tic(self):
        """Starts timing an iteration."""
        self.iter_timer.tic()

    def iter_toc(self):
        """Stops timing an iteration."""
        self.iter_timer.toc()
        self.speed.add_time(self.iter_timer.diff)

    def _mem(self):
        """Returns the peak memory (MB, rounded up) of the device the stats live on."""
        device = self.stats.device if self.stats.device is not None else torch.device("cpu")
        return int(math.ceil(devices.max_memory_mb(device)))

    def _common_stats(self, cur_epoch):
        """Returns the stats every line carries."""
        return {
            "epoch": "{}/{}".format(cur_epoch + 1, cfg.OPTIM.MAX_EPOCH),
            "time_avg": self.iter_timer.average_time,
            "mem": self._mem(),
            "fps": self.speed.fps(),
        }

    def log_iter_stats(self, cur_epoch, cur_iter):
        """Logs the window's stats every LOG_PERIOD iterations; returns them (else None)."""
        if (cur_iter + 1) % cfg.LOG_PERIOD != 0:
            return None
        stats = self.get_iter_stats(cur_epoch, cur_iter)
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

    def __init__(self, epoch_iters, phase="train"):
        super().__init__(epoch_iters, phase)
        self.lr = None

    def update_stats(self, top1_err, top5_err, loss, lr, mb_size):
        """Adds one mini-batch's errors and loss (device tensors) and the LR."""
        self.stats.add([top1_err, top5_err, loss], mb_size)
        self.speed.add_images(mb_size)
        self.lr = lr

    def _eta(self, iters_done):
        """Returns the estimated time left for the remaining iterations."""
        return time_string(self.iter_timer.average_time * (self.max_iter - iters_done))

    def _lr(self):
        """Returns the last LR as a float (None before any update)."""
        return None if self.lr is None else float(self.lr)

    def get_iter_stats(self, cur_epoch, cur_iter):
        """Returns the stats of the window since the last log line."""
        stats = self._common_stats(cur_epoch)
        stats.update(self.stats.flush())
        stats["iter"] = "{}/{}".format(cur_iter + 1, self.epoch_iters)
        stats["time_diff"] = self.iter_timer.diff
        stats["eta"] = self._eta(cur_epoch * self.epoch_iters + cur_iter + 1)
        stats["lr"] = self._lr()
        return stats

    def get_epoch_stats(self, cur_epoch, extra=None):
        """Returns the epoch's stats, plus the extra dict."""
        stats = self._common_stats(cur_epoch)
        self.stats.flush()
        stats.update(self.stats.averages())
        stats["time_epoch"] = self.speed.seconds
        stats["eta"] = self._eta((cur_epoch + 1) * self.epoch_iters)
        stats["lr"] = self._lr()
        stats.update(_host_values(extra))
        return stats


class TestMeter(_Meter):
    """Measures testing stats (and the lowest errors so far)."""

    def __init__(self, epoch_iters, phase="test"):
        super().__init__(epoch_iters, phase)
        self.min_top1_err = 100.0
        self.min_top5_err = 100.0

    def reset(self, min_errs=False, timer=False):
        """Clears the epoch's stats (and the lowest errors if min_errs)."""
        super().reset(timer)
        if min_errs:
            self.min_top1_err = 100.0
            self.min_top5_err = 100.0

    def update_stats(self, top1_err, top5_err, mb_size):
        """Adds one mini-batch's errors (device tensors)."""
        self.stats.add([top1_err, top5_err], mb_size)
        self.speed.add_images(mb_size)

    def get_iter_stats(self, cur_epoch, cur_iter):
        """Returns the stats of the window since the last log line."""
        stats = self._common_stats(cur_epoch)
        stats.update(self.stats.flush())
        stats["iter"] = "{}/{}".format(cur_iter + 1, self.epoch_iters)
        stats["time_diff"] = self.iter_timer.diff
        return stats

    def get_epoch_stats(self, cur_epoch, extra=None):
        """Returns the epoch's stats and lowest errors so far, plus the extra dict."""
        stats = self._common_stats(cur_epoch)
        self.stats.flush()
        errs = self.stats.averages()
        if self.stats.count:
            self.min_top1_err = min(self.min_top1_err, errs["top1_err"])
            self.min_top5_err = min(self.min_top5_err, errs["top5_err"])
        stats.update(errs)
        stats["time_epoch"] = self.speed.seconds
        stats["min_top1_err"] = self.min_top1_err
        stats["min_top5_err"] = self.min_top5_err
        stats.update(_host_values(extra))
        return stats
