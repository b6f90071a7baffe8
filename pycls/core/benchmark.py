"""Times the model's passes and the data loaders (tools/time_net.py)."""

import torch

import pycls.core.device as devices
import pycls.core.distributed as dist
import pycls.core.logging as logging
import pycls.core.net as net
import pycls.datasets.loader as data_loader
from pycls.core.config import cfg
from pycls.core.timer import Timer

logger = logging.get_logger(__name__)


def _batch(batch_size, device):
    """Returns random inputs and one-hot labels of this process's share of a batch."""
    batch_size, im_size = batch_size // dist.get_world_size(), cfg.TRAIN.IM_SIZE
    inputs = torch.rand(batch_size, 3, im_size, im_size, device=device)
    labels = torch.randint(0, cfg.MODEL.NUM_CLASSES, (batch_size,), device=device)
    return inputs, net.smooth_one_hot_labels(labels)


def _time(steps, device, max_iter=float("inf")):
    """Returns the mean seconds of each step (run in turn per iteration) after the warm-up."""
    warmup_iter, timers = cfg.PREC_TIME.WARMUP_ITER, [Timer() for _ in steps]
    for cur_iter in range(min(cfg.PREC_TIME.NUM_ITER + warmup_iter, max_iter)):
        if cur_iter == warmup_iter:
            timers = [Timer() for _ in steps]
        for step, timer in zip(steps, timers):
            devices.synchronize(device)
            timer.tic()
            step()
            devices.synchronize(device)
            timer.toc()
    return [timer.average_time for timer in timers]


@torch.no_grad()
def compute_time_eval(model, device, amp):
    """Returns the mean forward time of the model in eval mode."""
    inputs, _ = _batch(cfg.TEST.BATCH_SIZE, device)
    model.eval()

    def forward():
        with amp.autocast():
            model(inputs)

    return _time([forward], device)[0]


def compute_time_train(model, loss_fun, device, amp):
    """Returns the mean forward+loss and backward times in train mode (BN stats put back)."""
    inputs, labels_one_hot = _batch(cfg.TRAIN.BATCH_SIZE, device)
    bn_state = [(m, m.state_dict()) for m in model.modules() if hasattr(m, "running_mean")]
    model.train()
    losses = []

    def forward():
        with amp.autocast():
            losses.append(loss_fun(model(inputs), labels_one_hot))

    fw_time, bw_time = _time([forward, lambda: losses.pop().backward()], device)
    model.zero_grad(set_to_none=True)
    for module, state in bn_state:
        module.load_state_dict(state)
    return fw_time, bw_time


def compute_time_loader(loader):
    """Returns the mean time to fetch a batch from the data loader."""
    data_loader.shuffle(loader, 0)
    batches = iter(loader)
    return _time([lambda: next(batches)], "cpu", len(loader))[0]


def compute_time_full(model, loss_fun, train_loader, test_loader, device, amp):
    """Times the model and the loaders and logs the results as json_stats."""
    test_fw_time = compute_time_eval(model, device, amp)
    train_fw_time, train_bw_time = compute_time_train(model, loss_fun, device, amp)
    iter_times = {
        "test_fw_time": test_fw_time,
        "train_fw_time": train_fw_time,
        "train_bw_time": train_bw_time,
        "train_fw_bw_time": train_fw_time + train_bw_time,
        "train_loader_time": compute_time_loader(train_loader),
        "test_loader_time": compute_time_loader(test_loader),
    }
    logger.info(logging.dump_log_data(iter_times, "iter_times"))
    return iter_times
