"""Tests of pycls.core.trainer's parts in one process: epoch seeds, amp steps in an epoch."""

import random

import numpy as np
import torch
from conftest import REPO, TINY_EN_OPTS, json_stats

from pycls.core import amp as amp_module
from pycls.core import trainer
from pycls.core.config import cfg, load_cfg


def test_epoch_seeds_depend_on_seed_epoch_and_rank(fresh_cfg, monkeypatch):
    def draws(epoch):
        trainer.seed_epoch(epoch)
        return torch.rand(2).tolist(), float(np.random.rand()), random.random()

    assert draws(3) == draws(3) and draws(3) != draws(4)
    main = draws(3)
    monkeypatch.setattr(trainer.dist, "get_rank", lambda: 1)
    assert draws(3) != main
    cfg.RNG_SEED = 2
    monkeypatch.setattr(trainer.dist, "get_rank", lambda: 0)
    assert draws(3) != main


def test_amp_overflow_steps_are_counted_not_fatal(fresh_cfg, caplog):
    cfg.MODEL.NUM_CLASSES, cfg.LOG_PERIOD = 3, 1
    cfg.AMP.OPT_LEVEL, cfg.AMP.DTYPE, cfg.AMP.LOSS_SCALE = "O1", "float16", "dynamic"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    cpu = torch.device("cpu")
    amp = amp_module.Amp(cpu)
    steps = {"n": 0}

    def overflow_once(grad):  # the 2nd backward overflows (inf gradients)
        steps["n"] += 1
        return grad * float("inf") if steps["n"] == 2 else grad

    model[1].weight.register_hook(overflow_once)
    dataset = torch.utils.data.TensorDataset(torch.randn(16, 3, 2, 2), torch.randint(3, (16,)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    loss_fun = torch.nn.CrossEntropyLoss()
    meter = trainer.meters.TrainMeter(len(loader))
    with caplog.at_level("INFO"):
        trainer.train_epoch(loader, model, None, loss_fun, optimizer, amp, meter, 0, cpu)
    epoch = json_stats("\n".join(caplog.messages), "train_epoch")
    assert epoch[0]["amp_skipped"] == 1 and steps["n"] == 4
    assert amp.skipped_steps == 1 and amp.state_dict()["skipped_steps"] == 1


def test_precise_bn_runs_only_before_a_test_epoch(tmp_path, clean_cfg, monkeypatch):
    # Its stats are read only by the test epoch and the checkpoint: epochs 2 and 3 of 3 here
    opts = dict(TINY_EN_OPTS, **{"BN.USE_PRECISE_STATS": "True", "TRAIN.EVAL_PERIOD": "2"})
    opts.update({"OPTIM.MAX_EPOCH": "3", "TRAIN.DATASET": "synthetic", "TEST.DATASET": "synthetic"})
    opts.update({"DATA_LOADER.SYNTHETIC_LENGTH": "8", "OUT_DIR": str(tmp_path), "DEVICE": "cpu"})
    base = "{}/configs/dds_baselines/effnet/EN-B0_dds_8gpu.yaml".format(REPO)
    load_cfg(base, [x for kv in opts.items() for x in kv])
    calls, tests = [], []  # per precise BN call, the test epochs run before it
    precise_bn, test_epoch = trainer.net.compute_precise_bn_stats, trainer.test_epoch
    monkeypatch.setattr(trainer, "test_epoch", lambda *a: tests.append(a[4]) or test_epoch(*a))
    pbn = lambda *a: calls.append(len(tests)) or precise_bn(*a)  # noqa: E731
    monkeypatch.setattr(trainer.net, "compute_precise_bn_stats", pbn)
    trainer.train_model()
    assert tests == [1, 2] and calls == [0, 1]  # each run just before its test epoch
