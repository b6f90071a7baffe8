"""Tools for training and testing a model: the recipe, read top to bottom."""

import copy
import os
import random

import numpy as np
import torch

import pycls.core.benchmark as benchmark
import pycls.core.builders as builders
import pycls.core.checkpoint as cp
import pycls.core.config as config
import pycls.core.device as devices
import pycls.core.distributed as dist
import pycls.core.logging as logging
import pycls.core.meters as meters
import pycls.core.net as net
import pycls.core.optimizer as optim
import pycls.core.outdir as outdir
import pycls.datasets.loader as data_loader
from pycls.core.amp import Amp
from pycls.core.config import cfg
from pycls.core.errors import PyclsError

logger = logging.get_logger(__name__)


def setup_env(rank_id=None, device_id=None):
    """Sets up the process group, device, logging (OUT_DIR is made for LOG_DEST file) and seeds."""
    builders.check_cfg_names()  # before anything starts or is written
    device = dist.init(cfg.DEVICE, rank_id=rank_id, device_id=device_id)
    if dist.is_main_proc() and cfg.LOG_DEST == "file":
        outdir.check_out_dir(cp.get_checkpoint_dir())
    logging.setup_logging()
    version = [torch.__version__, torch.version.cuda, getattr(torch.version, "cann", None)]
    logger.info("PyTorch version: {}".format(version))
    logger.info("Device: {} (world size {})".format(device, dist.get_world_size()))
    if cfg.DEVICE == "auto":
        logger.info("--device auto picked {}".format(device.type))
        if device.type == "cpu" and dist.get_world_size() > 1 and dist.is_main_proc():
            msg = "--device auto found no GPU or NPU, so all {} processes run on the CPU; to "
            msg += "choose, pass --device=cpu with RANK_SIZE=N (or use the 1p launcher), or "
            msg += "--device=gpu|npu"
            logger.warning(msg.format(dist.get_world_size()))
    if cfg.VERBOSE:
        logger.info("Config:\n{}".format(cfg))
    restarts = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if restarts != "0" and dist.is_main_proc():
        msg = "torchrun restarted the job after a failure (restart {} of {}); resuming"
        logger.warning(msg.format(restarts, os.environ.get("TORCHELASTIC_MAX_RESTARTS", "?")))
    _seed_all(cfg.RNG_SEED + dist.get_rank())
    return device


def setup_out_dir(min_free_bytes=0, start_epoch=0):
    """Claims OUT_DIR (writable, room for checkpoints, locked) and dumps the config (main only)."""
    if dist.is_main_proc():
        outdir.check_out_dir(cp.get_checkpoint_dir(), min_free_bytes, start_epoch)
        outdir.lock_out_dir()
        config.dump_cfg()


def _seed_all(seed):
    """Seeds python's, numpy's and torch's RNGs (torch's on every device)."""
    np.random.seed(seed)
    random.seed(seed)
    torch.manual_seed(seed)


def seed_epoch(cur_epoch):
    """Seeds the RNGs from (RNG_SEED, epoch, rank): an epoch draws the same after a resume."""
    entropy = [cfg.RNG_SEED, cur_epoch, dist.get_rank()]
    _seed_all(int(np.random.SeedSequence(entropy).generate_state(1)[0]))


def setup_model(device):
    """Builds the model on the device and logs its complexity."""
    model = builders.build_model()
    if cfg.VERBOSE:
        logger.info("Model:\n{}".format(model))
    logger.info(logging.dump_log_data(net.complexity(model), "complexity"))
    return model.to(device, memory_format=devices.memory_format(device))


def load_start_state(path, checkpoint, model, model_ema, optimizer, amp):
    """Resumes from a checkpoint (read from path) or loads TRAIN.WEIGHTS / TRAIN.PRETRAINED; returns
    the first epoch to run and the lowest error of the run's checkpoints (None for a fresh run)."""
    if path:
        epoch, extra = cp.load_checkpoint(path, model, model_ema, optimizer, checkpoint)
        amp.load_state_dict(extra.get("amp_state"))
        logger.info("Resumed from {} (next epoch {})".format(path, epoch + 1))
        return epoch, extra["best_err"]
    for key, done in (("WEIGHTS", "Loaded initial"), ("PRETRAINED", "Fine-tuning from pretrained")):
        path = cfg.TRAIN[key]
        if path and not os.path.isfile(path):  # an error naming the key
            what = "is a folder, not a file" if os.path.isdir(path) else "does not exist"
            raise PyclsError("TRAIN.{} {} {}; check the path".format(key, path, what))
        if path:
            cp.load_weights(path, model, skip_mismatched_head=key == "PRETRAINED")
            logger.info("{} weights from: {}".format(done, path))
            break
    if model_ema is not None:
        model_ema.load_state_dict(model.state_dict())
    return 0, None


def check_finite(stats, where):
    """Stops the run when a logged loss is not finite (every rank reads the same value)."""
    if stats is not None and not np.isfinite(float(stats["loss"])):
        msg = "loss is {} at {}, so this epoch gets no checkpoint; lower OPTIM.BASE_LR, add "
        msg += "OPTIM.WARMUP_EPOCHS or set OPTIM.GRAD_CLIP, then rerun to resume from the last one"
        raise PyclsError(msg.format(stats["loss"], where))


def train_step(model, loss_fun, optimizer, amp, inputs, labels_one_hot):
    """Runs one optimisation step; returns the detached predictions and loss."""
    with amp.autocast():
        preds = model(inputs)
        loss = loss_fun(preds, labels_one_hot)
    optimizer.zero_grad(set_to_none=True)
    amp.backward_step(loss, optimizer, model, cfg.OPTIM.GRAD_CLIP)
    return preds.detach(), loss.detach()


def train_epoch(loader, model, model_ema, loss_fun, optimizer, amp, meter, cur_epoch, device):
    """Performs one epoch of training."""
    data_loader.shuffle(loader, cur_epoch)
    seed_epoch(cur_epoch)
    lr = optim.get_epoch_lr(cur_epoch)
    optim.set_lr(optimizer, lr)
    model.train()
    if model_ema is not None:
        model_ema.train()
    meter.reset()
    meter.iter_tic()
    for cur_iter, (inputs, labels) in enumerate(loader):
        inputs = inputs.to(device, non_blocking=True, memory_format=devices.memory_format(device))
        labels = net.smooth_one_hot_labels(labels.to(device, non_blocking=True))
        inputs, labels_one_hot, labels = net.mixup(inputs, labels)
        preds, loss = train_step(model, loss_fun, optimizer, amp, inputs, labels_one_hot)
        net.update_model_ema(net.unwrap_model(model), model_ema, cur_epoch, cur_iter)
        top1_err, top5_err = meters.topk_errors(preds, labels, [1, 5])
        meter.iter_toc()
        meter.update_stats(top1_err, top5_err, loss, lr, inputs.size(0))
        stats = meter.log_iter_stats(cur_epoch, cur_iter)
        check_finite(stats, "epoch {} iter {}".format(cur_epoch + 1, cur_iter + 1))
        meter.iter_tic()
    extra = {"bad_files": data_loader.bad_file_count(loader), "amp_skipped": amp.skipped_steps}
    stats = meter.log_epoch_stats(cur_epoch, extra)
    check_finite(stats, "the end of epoch {}".format(cur_epoch + 1))


@torch.no_grad()
def average_buffers(model):
    """Averages the float buffers (BN stats, rank-local in DDP): all ranks test and save one."""
    if model is not None and dist.get_world_size() > 1:
        buffers = net.unwrap_model(model).buffers()
        dist.scaled_all_reduce([b for b in buffers if b.is_floating_point()])


@torch.no_grad()
def test_epoch(loader, model, amp, meter, cur_epoch, device):
    """Evaluates the model on the test set; returns the top-1 error."""
    model = net.fold_bn(model)  # an eval copy with BN folded into the convs: faster
    meter.reset()
    meter.iter_tic()
    for cur_iter, (inputs, labels) in enumerate(loader):
        inputs = inputs.to(device, non_blocking=True, memory_format=devices.memory_format(device))
        labels = labels.to(device, non_blocking=True)
        with amp.autocast():
            preds = model(inputs)
        top1_err, top5_err = meters.topk_errors(preds, labels, [1, 5])
        meter.iter_toc()
        meter.update_stats(top1_err, top5_err, inputs.size(0))
        meter.log_iter_stats(cur_epoch, cur_iter)
        meter.iter_tic()
    stats = meter.log_epoch_stats(cur_epoch, {"bad_files": data_loader.bad_file_count(loader)})
    return float(stats["top1_err"])


def profile_steps(loader, model, loss_fun, optimizer, amp, device):
    """Writes a torch.profiler Chrome trace of a few training steps to OUT_DIR."""
    steps = cfg.PROFILE.NUM_STEPS
    schedule = torch.profiler.schedule(wait=0, warmup=1, active=steps, repeat=1)
    path = os.path.join(cfg.OUT_DIR, "profile_rank{}.json".format(dist.get_rank()))
    model.train()
    with torch.profiler.profile(schedule=schedule, record_shapes=True) as prof:
        for _, (inputs, labels) in zip(range(steps + 1), loader):
            inputs = inputs.to(device, memory_format=devices.memory_format(device))
            labels_one_hot = net.smooth_one_hot_labels(labels.to(device))
            train_step(model, loss_fun, optimizer, amp, inputs, labels_one_hot)
            prof.step()
    devices.synchronize(device)
    prof.export_chrome_trace(path)
    logger.info("Wrote the profiler trace of {} steps to {}".format(steps, path))


def train_model(rank_id=None, device_id=None):
    """Trains the model, evaluating and checkpointing after every epoch."""
    device = setup_env(rank_id, device_id)
    train_loader, test_loader = data_loader.construct_loaders(device)
    resume = cp.find_resume_checkpoint() if cfg.TRAIN.AUTO_RESUME else (None, None)
    done = cp.checkpoint_epoch(resume[0]) if resume[0] else 0
    if done >= cfg.OPTIM.MAX_EPOCH:  # a rerun of a finished run retrains and rewrites nothing
        msg = "All {} epochs (OPTIM.MAX_EPOCH {}) in OUT_DIR {} are done, nothing to train: "
        msg += "newest checkpoint {}; raise OPTIM.MAX_EPOCH to train on, or set another OUT_DIR "
        msg += "to start over"
        logger.info(msg.format(done, cfg.OPTIM.MAX_EPOCH, cfg.OUT_DIR, resume[0]))
        return dist.cleanup()
    model = setup_model(device)
    checkpoint_bytes = 2 * cp.estimate_checkpoint_bytes(model)
    loss_fun = builders.build_loss_fun().to(device)
    optimizer, amp = optim.construct_optimizer(model, device), Amp(device)
    model, optimizer = amp.prepare(model, optimizer)
    logger.info("Mixed precision: {}".format(amp.describe()))
    model_ema = copy.deepcopy(model) if cfg.OPTIM.EMA_ALPHA > 0 else None
    start_epoch, best_err = load_start_state(*resume, model, model_ema, optimizer, amp)
    setup_out_dir(checkpoint_bytes, start_epoch)
    ddp_model = dist.wrap_model(model, device)
    train_model_fn = torch.compile(ddp_model) if cfg.MODEL.COMPILE else ddp_model
    if cfg.PROFILE.ENABLED:
        profile_steps(train_loader, train_model_fn, loss_fun, optimizer, amp, device)
    train_meter = meters.TrainMeter(len(train_loader))
    test_meter = meters.TestMeter(len(test_loader))
    ema_meter = meters.TestMeter(len(test_loader), "test_ema")
    logger.info("Start epoch: {}".format(start_epoch + 1))
    for cur_epoch in range(start_epoch, cfg.OPTIM.MAX_EPOCH):
        params = (train_loader, train_model_fn, model_ema, loss_fun, optimizer, amp, train_meter)
        train_epoch(*params, cur_epoch, device)
        last_epoch = cur_epoch + 1 == cfg.OPTIM.MAX_EPOCH
        if (cur_epoch + 1) % cfg.TRAIN.EVAL_PERIOD != 0 and not last_epoch:
            continue  # BN stats are only read by tests and checkpoints: none this epoch
        for m in (model, model_ema):
            if m is not None and cfg.BN.USE_PRECISE_STATS:
                net.compute_precise_bn_stats(m, train_loader, device)
            average_buffers(m)
        test_err = test_epoch(test_loader, model, amp, test_meter, cur_epoch, device)
        ema_err = None
        if model_ema is not None:
            ema_err = test_epoch(test_loader, model_ema, amp, ema_meter, cur_epoch, device)
        if (cur_epoch + 1) % cfg.TRAIN.CHECKPOINT_PERIOD == 0 or last_epoch:
            args = (model, model_ema, optimizer, cur_epoch, test_err, ema_err)
            path = cp.save_checkpoint(*args, {"amp_state": amp.state_dict()}, best_err)
            best_err = cp.lowest_err(best_err, test_err, ema_err)
            if path:
                logger.info("Wrote checkpoint to: {}".format(path))
    dist.cleanup()


def test_model(rank_id=None, device_id=None):
    """Evaluates TEST.WEIGHTS on the test set."""
    device = setup_env(rank_id, device_id)
    if not cfg.TEST.WEIGHTS:
        raise PyclsError("no weights to test: pass TEST.WEIGHTS /path/to/model.pyth")
    test_loader = data_loader.construct_test_loader(device)
    weights, data = cp.find_weights(cfg.TEST.WEIGHTS)
    model = setup_model(device)
    cp.load_weights(weights, model, data=data)
    logger.info("Loaded model weights from: {}".format(weights))
    setup_out_dir()
    amp = Amp(device)
    model, _ = amp.prepare(model, None)
    test_meter = meters.TestMeter(len(test_loader))
    test_epoch(test_loader, dist.wrap_model(model, device), amp, test_meter, 0, device)
    dist.cleanup()


def time_model(rank_id=None, device_id=None):
    """Times the model's forward and backward passes and the data loaders."""
    device = setup_env(rank_id, device_id)
    model = setup_model(device)
    loss_fun = builders.build_loss_fun().to(device)
    amp = Amp(device)
    model, _ = amp.prepare(model, None)
    logger.info("Mixed precision: {}".format(amp.describe()))
    train_loader, test_loader = data_loader.construct_loaders(device)
    setup_out_dir()
    benchmark.compute_time_full(model, loss_fun, train_loader, test_loader, device, amp)
    dist.cleanup()
