"""Functions for manipulating networks: complexity, labels, mixup, precise BN and EMA."""

import collections
import copy
import itertools

import numpy as np
import torch

import pycls.core.device as devices
import pycls.core.distributed as dist
from pycls.core.config import cfg

# Attributes holding the model a wrapper wraps (DDP / DataParallel, torch.compile); a wrapped
# model's state dict keys start with them ("module.", "_orig_mod.")
WRAPPER_ATTRS = ("module", "_orig_mod")


def unwrap_model(model):
    """Strips DistributedDataParallel / DataParallel and torch.compile wrappers."""
    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    parallel_attr, compiled_attr = WRAPPER_ATTRS
    while True:
        if isinstance(model, wrappers):
            model = getattr(model, parallel_attr)
        elif isinstance(model, torch.nn.Module) and hasattr(model, compiled_attr):
            model = getattr(model, compiled_attr)
        else:
            return model


@torch.no_grad()
def fold_bn(model, im_size=64):
    """Returns an eval copy of the model with each BatchNorm that reads a conv's output folded
    into that conv (faster eval, predict and export); the model itself keeps its BN."""
    model = copy.deepcopy(unwrap_model(model)).eval()
    outputs, pairs = {}, []

    def keep_output(conv, _inputs, out):
        outputs[id(out)] = (out, conv)  # kept alive, so an id names one tensor

    def pair(bn, inputs):
        if id(inputs[0]) in outputs and bn.running_mean is not None:
            pairs.append((outputs[id(inputs[0])][1], bn))

    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    hooks = [m.register_forward_hook(keep_output) for m in convs]
    hooks += [m.register_forward_pre_hook(pair) for m in bns]
    param = next(model.parameters())
    try:  # a probe forward finds which conv each BN reads
        model(torch.zeros(1, 3, im_size, im_size, device=param.device, dtype=param.dtype))
    finally:
        for hook in hooks:
            hook.remove()
    names, uses = {m: n for n, m in model.named_modules()}, collections.Counter(sum(pairs, ()))
    for conv, bn in (p for p in pairs if uses[p[0]] == uses[p[1]] == 1):
        model.set_submodule(names[conv], torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn))
        model.set_submodule(names[bn], torch.nn.Identity())
    return model


def complexity(model):
    """Computes {flops, params, acts} of a model instance or class at TRAIN.IM_SIZE."""
    size = cfg.TRAIN.IM_SIZE
    cx = {"h": size, "w": size, "flops": 0, "params": 0, "acts": 0}
    model = unwrap_model(model)
    params = getattr(model, "params", None) if isinstance(model, torch.nn.Module) else None
    cx = model.complexity(cx, params) if isinstance(params, dict) else model.complexity(cx)
    return {"flops": cx["flops"], "params": cx["params"], "acts": cx["acts"]}


def smooth_one_hot_labels(labels):
    """Converts int labels to one-hot vectors smoothed by TRAIN.LABEL_SMOOTHING."""
    n_classes, label_smooth = cfg.MODEL.NUM_CLASSES, cfg.TRAIN.LABEL_SMOOTHING
    if labels.ndim != 1:
        raise ValueError("smooth_one_hot_labels takes a 1-D tensor of class indices")
    neg_val = label_smooth / n_classes
    pos_val = 1.0 - label_smooth + neg_val
    shape = (labels.shape[0], n_classes)
    one_hot = torch.full(shape, neg_val, dtype=torch.float32, device=labels.device)
    return one_hot.scatter_(1, labels.long().view(-1, 1), pos_val)


class SoftCrossEntropyLoss(torch.nn.Module):
    """Cross entropy with soft targets (label smoothing, mixup); equals
    torch.nn.CrossEntropyLoss for one-hot targets. Int class targets also work."""

    def forward(self, x, y):
        if y.ndim == 1:
            return torch.nn.functional.cross_entropy(x, y)
        loss = -y * torch.nn.functional.log_softmax(x, -1)
        return torch.sum(loss) / x.shape[0]


def _cutmix_box(h, w, lam):
    """Draws a cutmix box of area about (1 - lam) * h * w; returns (y0, y1, x0, x1)."""
    w_b, h_b = int(w * np.sqrt(1.0 - lam)), int(h * np.sqrt(1.0 - lam))
    x_c, y_c = np.random.randint(w), np.random.randint(h)
    x_0, y_0 = int(np.clip(x_c - w_b // 2, 0, w)), int(np.clip(y_c - h_b // 2, 0, h))
    x_1, y_1 = int(np.clip(x_c + w_b // 2, 0, w)), int(np.clip(y_c + h_b // 2, 0, h))
    return y_0, y_1, x_0, x_1


def mixup(inputs, labels):
    """Applies mixup or cutmix (TRAIN.MIXUP_ALPHA, TRAIN.CUTMIX_ALPHA) to a batch;
    returns (inputs, mixed labels, labels for the error meters)."""
    if labels.ndim != 2 or labels.shape[1] != cfg.MODEL.NUM_CLASSES:
        raise ValueError("mixup takes one-hot labels of shape (N, MODEL.NUM_CLASSES)")
    mixup_alpha, cutmix_alpha = cfg.TRAIN.MIXUP_ALPHA, cfg.TRAIN.CUTMIX_ALPHA
    # When both are on, each batch gets one of them at random (50-50)
    mixup_alpha = mixup_alpha if (cutmix_alpha == 0 or np.random.rand() < 0.5) else 0
    if mixup_alpha > 0:
        lam = float(np.random.beta(mixup_alpha, mixup_alpha))
        perm = torch.randperm(labels.shape[0], device=labels.device)
        inputs = lam * inputs + (1.0 - lam) * inputs[perm]
        labels = lam * labels + (1.0 - lam) * labels[perm]
    elif cutmix_alpha > 0:
        lam = float(np.random.beta(cutmix_alpha, cutmix_alpha))
        perm = torch.randperm(labels.shape[0], device=labels.device)
        h, w = inputs.shape[2], inputs.shape[3]
        y_0, y_1, x_0, x_1 = _cutmix_box(h, w, lam)
        # The label weight of the pasted image is its exact (clipped) area fraction
        lam = 1.0 - ((x_1 - x_0) * (y_1 - y_0) / (h * w))
        inputs = inputs.clone()
        inputs[:, :, y_0:y_1, x_0:x_1] = inputs[perm, :, y_0:y_1, x_0:x_1]
        labels = lam * labels + (1.0 - lam) * labels[perm]
    return inputs, labels, labels.argmax(1)


def precise_bn_iters(loader):
    """Returns the batches each process reads for precise BN: BN.NUM_SAMPLES_PRECISE images
    over all processes together (at least one batch, at most one epoch)."""
    batch_size = getattr(loader, "batch_size", None) or len(next(iter(loader))[0])
    num_iter = int(cfg.BN.NUM_SAMPLES_PRECISE / batch_size / dist.get_world_size())
    return max(1, min(num_iter, len(loader)))


@torch.no_grad()
def compute_precise_bn_stats(model, loader, device):
    """Recomputes BN running stats as the average of batch stats over BN.NUM_SAMPLES_PRECISE
    training images of all processes (as pycls): each averages its own batches, then the
    averages are averaged (equal batch counts), as if one process read them all. Each forward
    pass takes BN.PRECISE_BATCH_SIZE / TRAIN.BATCH_SIZE loader batches (one by default, as
    pycls); a pass's stats weigh by its images."""
    num_iter = precise_bn_iters(loader)
    per_pass = max(1, cfg.BN.PRECISE_BATCH_SIZE // cfg.TRAIN.BATCH_SIZE)
    bn_type = torch.nn.modules.batchnorm._BatchNorm
    bns = [m for m in model.modules() if isinstance(m, bn_type) and m.track_running_stats]
    means = [torch.zeros_like(bn.running_mean) for bn in bns]
    variances = [torch.zeros_like(bn.running_var) for bn in bns]
    # With momentum 1.0 the running stats hold the stats of the last batch only
    momentums = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = 1.0
    was_training = model.training
    model.train()
    dtype, memory_format = next(model.parameters()).dtype, devices.memory_format(device)
    batches, seen = itertools.islice(loader, num_iter), 0
    while group := [inputs for inputs, _labels in itertools.islice(batches, per_pass)]:
        inputs = torch.cat(group) if len(group) > 1 else group[0]
        inputs = inputs.to(device, dtype=dtype, non_blocking=True, memory_format=memory_format)
        model(inputs)
        seen += len(inputs)
        for i, bn in enumerate(bns):
            means[i] += bn.running_mean * len(inputs)
            variances[i] += bn.running_var * len(inputs)
    for stats in means + variances:
        stats /= seen
    dist.scaled_all_reduce(means + variances)
    for i, bn in enumerate(bns):
        bn.running_mean.copy_(means[i])
        bn.running_var.copy_(variances[i])
        bn.momentum = momentums[i]
    model.train(was_training)


@torch.no_grad()
def update_model_ema(model, model_ema, cur_epoch, cur_iter):
    """Updates the exponential moving average (EMA) of the model weights every
    OPTIM.EMA_UPDATE_PERIOD iterations (a no-op when OPTIM.EMA_ALPHA is 0)."""
    update_period = cfg.OPTIM.EMA_UPDATE_PERIOD
    off = model_ema is None or cfg.OPTIM.EMA_ALPHA <= 0 or update_period == 0
    if off or cur_iter % update_period != 0:
        return
    # Adjust alpha to be fairly independent of the batch size and update period
    adjust = cfg.TRAIN.BATCH_SIZE / cfg.OPTIM.MAX_EPOCH * update_period
    alpha = min(1.0, cfg.OPTIM.EMA_ALPHA * adjust)
    # During warmup simply copy over the weights instead of averaging
    alpha = 1.0 if cur_epoch < cfg.OPTIM.WARMUP_EPOCHS else alpha
    # Average all state (BN buffers too), not just the parameters
    params = unwrap_model(model).state_dict()
    for name, ema in unwrap_model(model_ema).state_dict().items():
        src = params[name]
        if ema.is_floating_point():
            ema.lerp_(src.to(ema.dtype), alpha)
        else:
            ema.copy_(src)
