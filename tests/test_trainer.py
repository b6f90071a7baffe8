"""Tests of pycls.core.trainer's parts in one process: epoch seeds, amp steps in an epoch."""

import random

import numpy as np
import torch
from conftest import json_stats

from pycls.core import amp as amp_module
from pycls.core import trainer
from pycls.core.config import cfg


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
