"""Tests of the net helpers: labels, loss, mixup/cutmix, precise BN, EMA, complexity."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import pycls.core.net as net
from pycls.core.config import cfg, merge_from_list, reset_cfg
from pycls.models.effnet import EffNet


def _set(**values):
    """Sets config keys given as SECTION__KEY=value."""
    opts = []
    for key, value in values.items():
        opts += [key.replace("__", "."), str(value)]
    merge_from_list(opts)


def test_smooth_one_hot_labels():
    _set(MODEL__NUM_CLASSES=5, TRAIN__LABEL_SMOOTHING=0.1)
    labels = torch.tensor([0, 3, 4])
    out = net.smooth_one_hot_labels(labels)
    assert out.shape == (3, 5) and out.dtype == torch.float32
    assert torch.allclose(out.sum(1), torch.ones(3))
    assert torch.allclose(out[1, 3], torch.tensor(0.9 + 0.02))
    assert torch.allclose(out[1, 0], torch.tensor(0.02))
    assert torch.equal(out.argmax(1), labels)
    _set(TRAIN__LABEL_SMOOTHING=0.0)
    assert torch.equal(net.smooth_one_hot_labels(labels), nn.functional.one_hot(labels, 5).float())


def test_soft_cross_entropy_matches_torch():
    _set(MODEL__NUM_CLASSES=7, TRAIN__LABEL_SMOOTHING=0.2)
    torch.manual_seed(0)
    preds, labels = torch.randn(6, 7), torch.randint(0, 7, (6,))
    loss_fun = net.SoftCrossEntropyLoss()
    expected = nn.functional.cross_entropy(preds, labels, label_smoothing=0.2)
    assert torch.allclose(loss_fun(preds, net.smooth_one_hot_labels(labels)), expected)
    one_hot = nn.functional.one_hot(labels, 7).float()
    assert torch.allclose(loss_fun(preds, one_hot), nn.functional.cross_entropy(preds, labels))
    assert torch.allclose(loss_fun(preds, labels), nn.functional.cross_entropy(preds, labels))


def _batch(n=8, size=16):
    """Random images and one-hot labels of n distinct classes."""
    inputs = torch.rand(n, 3, size, size)
    return inputs, nn.functional.one_hot(torch.arange(n), n).float()


def test_mixup_with_zero_alphas_is_identity():
    _set(MODEL__NUM_CLASSES=8)
    inputs, labels = _batch()
    out_inputs, out_labels, err_labels = net.mixup(inputs, labels)
    assert torch.equal(out_inputs, inputs) and torch.equal(out_labels, labels)
    assert torch.equal(err_labels, torch.arange(8))


def _partners(labels):
    """For mixed one-hot labels of classes 0..n-1, returns each row's (own weight, partner)."""
    own = labels.diagonal()
    rest = labels - torch.diag(own)
    partner = torch.where(rest.sum(1) > 0, rest.argmax(1), torch.arange(len(labels)))
    return own, partner


def test_mixup_is_one_convex_combination():
    _set(MODEL__NUM_CLASSES=8, TRAIN__MIXUP_ALPHA=0.4)
    np.random.seed(3)
    torch.manual_seed(3)
    inputs, labels = _batch()
    out_inputs, out_labels, _ = net.mixup(inputs, labels)
    own, partner = _partners(out_labels)
    moved = partner != torch.arange(8)
    assert bool(moved.any())
    lam = float(own[moved][0])
    assert 0.0 < lam < 1.0
    assert torch.allclose(own[moved], torch.full_like(own[moved], lam))
    assert torch.allclose(out_labels.sum(1), torch.ones(8))
    expected = lam * inputs + (1.0 - lam) * inputs[partner]
    assert torch.allclose(out_inputs[moved], expected[moved], atol=1e-6)


def test_cutmix_label_weight_is_pasted_area():
    _set(MODEL__NUM_CLASSES=8, TRAIN__CUTMIX_ALPHA=1.0)
    checked = 0
    for seed in range(6):
        np.random.seed(seed)
        torch.manual_seed(seed)
        inputs, labels = _batch()
        before = inputs.clone()
        out_inputs, out_labels, err_labels = net.mixup(inputs, labels)
        assert torch.equal(inputs, before)  # the caller's batch is left alone
        own, partner = _partners(out_labels)
        for i in range(8):
            j = int(partner[i])
            if j == i:
                continue
            pasted = (out_inputs[i] != inputs[i]).any(0)
            assert torch.equal(out_inputs[i][:, pasted], inputs[j][:, pasted])
            area = float(pasted.float().mean())
            assert abs((1.0 - float(own[i])) - area) < 1e-6
            checked += area > 0
        assert torch.equal(err_labels, out_labels.argmax(1))
    assert checked > 0


def test_mixup_and_cutmix_both_on_picks_one_per_batch():
    _set(MODEL__NUM_CLASSES=8, TRAIN__MIXUP_ALPHA=1.0, TRAIN__CUTMIX_ALPHA=1.0)
    np.random.seed(0)
    torch.manual_seed(0)
    kinds = set()
    for _ in range(30):
        inputs, labels = _batch()
        out_inputs, out_labels, _ = net.mixup(inputs, labels)
        own, partner = _partners(out_labels)
        moved = partner != torch.arange(8)
        if not bool(moved.any()) or float(own[moved][0]) in (0.0, 1.0):
            continue
        i = int(torch.nonzero(moved)[0])
        unchanged = (out_inputs[i] == inputs[i]).all(0)
        kinds.add("cutmix" if bool(unchanged.any()) else "mixup")
    assert kinds == {"mixup", "cutmix"}


def _ema_setup(**values):
    """A model, its EMA copy with other weights, and the config for EMA."""
    _set(OPTIM__EMA_ALPHA=1.0, OPTIM__EMA_UPDATE_PERIOD=4, TRAIN__BATCH_SIZE=25)
    _set(OPTIM__MAX_EPOCH=200, **values)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    model_ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in model_ema.parameters():
            p.add_(1.0)
    return model, model_ema


def _distance(model, model_ema):
    """Largest difference between the float state of two models."""
    a, b = model.state_dict(), model_ema.state_dict()
    return max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())


def test_ema_converges_toward_the_model():
    model, model_ema = _ema_setup()
    # alpha = EMA_ALPHA * BATCH_SIZE / MAX_EPOCH * EMA_UPDATE_PERIOD = 0.5
    start = _distance(model, model_ema)
    net.update_model_ema(model, model_ema, cur_epoch=0, cur_iter=1)
    assert _distance(model, model_ema) == start  # not an update iteration
    for step in range(1, 6):
        net.update_model_ema(model, model_ema, cur_epoch=0, cur_iter=4 * step)
        assert abs(_distance(model, model_ema) - start * 0.5**step) < 1e-5
    assert model_ema[1].num_batches_tracked.dtype == torch.int64


def test_ema_copies_during_warmup_and_is_off_at_zero_alpha():
    model, model_ema = _ema_setup(OPTIM__WARMUP_EPOCHS=2)
    net.update_model_ema(model, model_ema, cur_epoch=1, cur_iter=0)
    assert _distance(model, model_ema) == 0.0
    model, model_ema = _ema_setup(OPTIM__EMA_ALPHA=0.0)
    start = _distance(model, model_ema)
    net.update_model_ema(model, model_ema, cur_epoch=5, cur_iter=0)
    assert _distance(model, model_ema) == start
    net.update_model_ema(model, None, cur_epoch=5, cur_iter=0)


def _bn_loader(num_batches=4, batch_size=8):
    """A loader of images whose channels have different means and scales."""
    torch.manual_seed(0)
    n = num_batches * batch_size
    images = torch.randn(n, 3, 5, 5) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    images = images + torch.tensor([3.0, -1.0, 0.25]).view(1, 3, 1, 1)
    data = torch.utils.data.TensorDataset(images, torch.zeros(n, dtype=torch.long))
    return images, torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)


def test_precise_bn_sets_stats_to_data_stats():
    _set(BN__NUM_SAMPLES_PRECISE=32)
    images, loader = _bn_loader()
    model = nn.Sequential(nn.BatchNorm2d(3, momentum=0.1)).eval()
    net.compute_precise_bn_stats(model, loader, torch.device("cpu"))
    bn = model[0]
    assert torch.allclose(bn.running_mean, images.mean((0, 2, 3)), atol=1e-5)
    batch_vars = [b.transpose(0, 1).reshape(3, -1).var(1) for b in images.split(8)]
    assert torch.allclose(bn.running_var, torch.stack(batch_vars).mean(0), atol=1e-5)
    assert bn.momentum == 0.1 and not model.training


def test_precise_bn_uses_num_samples_precise():
    _set(BN__NUM_SAMPLES_PRECISE=16)
    images, loader = _bn_loader()
    model = nn.Sequential(nn.BatchNorm2d(3))
    net.compute_precise_bn_stats(model, loader, torch.device("cpu"))
    assert torch.allclose(model[0].running_mean, images[:16].mean((0, 2, 3)), atol=1e-5)
    assert model.training


def test_precise_bn_passes_join_train_batches():
    # BN.PRECISE_BATCH_SIZE 16 with train batches of 8: each pass's stats come from 16 images
    _set(BN__NUM_SAMPLES_PRECISE=32, TRAIN__BATCH_SIZE=8, BN__PRECISE_BATCH_SIZE=16)
    images, loader = _bn_loader()
    model = nn.Sequential(nn.BatchNorm2d(3))
    net.compute_precise_bn_stats(model, loader, torch.device("cpu"))
    pass_vars = [b.transpose(0, 1).reshape(3, -1).var(1) for b in images.split(16)]
    batch_vars = [b.transpose(0, 1).reshape(3, -1).var(1) for b in images.split(8)]
    assert torch.allclose(model[0].running_mean, images.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(model[0].running_var, torch.stack(pass_vars).mean(0), atol=1e-5)
    assert not torch.allclose(model[0].running_var, torch.stack(batch_vars).mean(0), atol=1e-3)


def test_precise_bn_feeds_the_model_its_memory_format():
    _set(BN__NUM_SAMPLES_PRECISE=8)
    _, loader = _bn_loader()
    seen = []
    model = nn.Sequential(nn.BatchNorm2d(3)).to(memory_format=torch.channels_last)
    model.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    net.compute_precise_bn_stats(model, loader, torch.device("cpu"))
    assert seen and seen[0].is_contiguous(memory_format=torch.channels_last)


def test_unwrap_model():
    model = nn.Linear(2, 2)
    assert net.unwrap_model(model) is model
    assert net.unwrap_model(nn.DataParallel(model)) is model
    assert net.unwrap_model(torch.compile(nn.DataParallel(model))) is model


def test_complexity_of_class_and_instance():
    _set(MODEL__NUM_CLASSES=1000)
    params = EffNet.get_params()
    params.update(sw=32, ds=[1, 2, 2, 3, 3, 4, 1], ws=[16, 24, 40, 80, 112, 192, 320])
    params.update(exp_rs=[1, 6, 6, 6, 6, 6, 6], ss=[1, 2, 2, 2, 1, 2, 1], hw=1280)
    params.update(ks=[3, 3, 5, 3, 5, 5, 3], activation="silu")
    model = EffNet(params)
    reset_cfg()  # an instance keeps its own params; IM_SIZE is 224 by default
    expected = {"flops": 385825092, "params": 5288548, "acts": 6748036}  # pycls EN-B0
    assert net.complexity(model) == expected
    assert net.complexity(nn.DataParallel(model)) == expected
    assert sum(p.numel() for p in model.parameters()) == expected["params"]
    assert cfg.EN.DEPTHS == []


# ------------------------- precise BN over two processes (gloo) ------------------------ #


def _pbn_images():
    """48 images whose channel means and scales change from batch to batch (of 4)."""
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(48, 3, 6, 6, generator=generator)
    batch = torch.arange(48).div(4, rounding_mode="floor").float().view(48, 1, 1, 1)
    return images * (1.0 + 0.2 * batch) + batch * torch.tensor([0.3, -0.2, 0.1]).view(1, 3, 1, 1)


def _pbn_model():
    """Two conv + BN layers: the second BN sees the first's output."""
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1)]
    return nn.Sequential(*layers, nn.BatchNorm2d(3))


def _pbn_stats(model):
    """Returns the running stats of a model's BN layers."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    return [t.clone() for bn in bns for t in (bn.running_mean, bn.running_var)]


_PBN_WORKER = """
import sys
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import pycls.core.distributed as du
import pycls.core.net as net
from pycls.core.config import cfg

{helpers}

device = du.init("cpu")
rank, world_size = du.get_rank(), du.get_world_size()
cfg.BN.NUM_SAMPLES_PRECISE = 24  # 3 batches of 4 on each of 2 processes, of 6 each has
data = TensorDataset(_pbn_images(), torch.zeros(48, dtype=torch.long))
sampler = DistributedSampler(data, num_replicas=world_size, rank=rank, shuffle=False)
model = _pbn_model()
net.compute_precise_bn_stats(model, DataLoader(data, batch_size=4, sampler=sampler), device)
torch.save(_pbn_stats(model), "{{}}/rank{{}}.pyth".format(sys.argv[1], rank))
du.cleanup()
"""


def _run_pbn_ranks(tmp_path):
    """Runs _PBN_WORKER as 2 gloo processes; returns each rank's BN stats."""
    import inspect
    import subprocess
    import sys

    from conftest import REPO, child_env, free_port

    helpers = "\n\n".join(inspect.getsource(f) for f in (_pbn_images, _pbn_model, _pbn_stats))
    script = tmp_path / "pbn_worker.py"
    script.write_text(_PBN_WORKER.format(helpers=helpers))
    env = child_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path)],
            env=dict(env, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2"),
            cwd=REPO,
            stderr=subprocess.PIPE,
        )
        for r in range(2)
    ]
    errors = [proc.communicate(timeout=120)[1].decode() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], "\n".join(errors)
    return [torch.load(tmp_path / "rank{}.pyth".format(r), weights_only=True) for r in range(2)]


def _one_process_stats(batches):
    """Precise BN stats of one process that reads the given batches of 4 images (indices)."""
    _set(BN__NUM_SAMPLES_PRECISE=4 * len(batches))
    data = torch.utils.data.TensorDataset(_pbn_images(), torch.zeros(48, dtype=torch.long))
    loader = torch.utils.data.DataLoader(data, batch_sampler=batches)
    model = _pbn_model()
    net.compute_precise_bn_stats(model, loader, torch.device("cpu"))
    return _pbn_stats(model)


@pytest.mark.parametrize("run", range(3))  # multi-process: several times in a row
def test_precise_bn_over_two_processes_equals_one_process(tmp_path, run):
    ranks = _run_pbn_ranks(tmp_path)
    # DistributedSampler: rank r holds images r, r + 2, ...; each rank reads 3 batches of 4
    batches = [[r + 2 * (4 * b + i) for i in range(4)] for b in range(3) for r in range(2)]
    expected = _one_process_stats(batches)
    rank0_only = _one_process_stats(batches[0::2])
    for got0, got1, want, local in zip(ranks[0], ranks[1], expected, rank0_only):
        assert torch.equal(got0, got1)  # every rank holds the same stats
        torch.testing.assert_close(got0, want, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(local, want, rtol=1e-3, atol=1e-3)  # rank 0 alone differs
