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


def _batch(batch_size, im_size, device):
    """Returns a random batch of inputs and labels on the device."""
    inputs = torch.rand(batch_size, 3, im_size, im_size, device=device)
    labels = torch.randint(0, cfg.MODEL.NUM_CLASSES, (batch_size,), device=device)
    return inputs, labels


def _time(step, device):
    """Returns the mean seconds of step() after PREC_TIME.WARMUP_ITER warm-up calls."""
    timer = Timer()
    for cur_iter in range(cfg.PREC_TIME.NUM_ITER + cfg.PREC_TIME.WARMUP_ITER):
        if cur_iter == cfg.PREC_TIME.WARMUP_ITER:
            timer.reset()
        devices.synchronize(device)
        timer.tic()
        step()
        devices.synchronize(device)
        timer.toc()
    return timer.average_time


@torch.no_grad()
def compute_time_eval(model, device, amp):
    """Returns the mean forward time of the model in eval mode."""
    batch_size = cfg.TEST.BATCH_SIZE // dist.get_world_size()
    inputs, _ = _batch(batch_size, cfg.TRAIN.IM_SIZE, device)
    model.eval()

    def step():
        with amp.autocast():
            model(inputs)

    return _time(step, device)


def compute_time_train(model, loss_fun, device, amp):
    """Returns the mean forward+loss and backward times of the model in train mode."""
    batch_size = cfg.TRAIN.BATCH_SIZE // dist.get_world_size()
    inputs, labels = _batch(batch_size, cfg.TRAIN.IM_SIZE, device)
    labels_one_hot = net.smooth_one_hot_labels(labels)
    bn_state = [(m, m.state_dict()) for m in model.modules() if hasattr(m, "running_mean")]
    model.train()
    fw_timer, bw_timer = Timer(), Timer()
    for cur_iter in range(cfg.PREC_TIME.NUM_ITER + cfg.PREC_TIME.WARMUP_ITER):
        if cur_iter == cfg.PREC_TIME.WARMUP_ITER:
            fw_timer.reset()
            bw_timer.reset()
        devices.synchronize(device)
        fw_timer.tic()
        with amp.autocast():
            loss = loss_fun(model(inputs), labels_one_hot)
        devices.synchronize(device)
        fw_timer.toc()
        bw_timer.tic()
        loss.backward()
        devices.synchronize(device)
        bw_timer.toc()
    model.zero_grad(set_to_none=True)
    for module, state in bn_state:
        module.load_state_dict(state)
    return fw_timer.average_time, bw_timer.average_time


def compute_time_loader(loader):
    """Returns the mean time to fetch a batch from the data loader."""
    data_loader.shuffle(loader, 0)
    timer = Timer()
    num_iter = min(cfg.PREC_TIME.NUM_ITER + cfg.PREC_TIME.WARMUP_ITER, len(loader))
    batches = iter(loader)
    for cur_iter in range(num_iter):
        if cur_iter == cfg.PREC_TIME.WARMUP_ITER:
            timer.reset()
        timer.tic()
        next(batches)
        timer.toc()
    return timer.average_time


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
