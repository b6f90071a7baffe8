"""Tests of pycls.core.checkpoint: atomic saves, resume fallback, pruning and safe loads."""

import os
import pickle
import re

import pytest
import torch
import yaml

import pycls.core.checkpoint as cp
import pycls.core.distributed as dist
from pycls.core.config import cfg
from pycls.core.errors import PyclsError


class TinyNet(torch.nn.Module):
    """conv -> bn -> fc, small enough to save in milliseconds."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, bias=False)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


class OtherNet(torch.nn.Module):
    """Another architecture: other key names."""

    def __init__(self, layers=2):
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(layers)])


class Payload:
    """An arbitrary Python object: weights_only loading must refuse it."""


@pytest.fixture(autouse=True)
def effnet_cfg(fresh_cfg):
    """The default config (OUT_DIR in tmp_path) of an EfficientNet."""
    cfg.MODEL.TYPE = "effnet"


def _trained(model):
    """Returns an SGD optimizer after one step (so it holds momentum buffers)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    return optimizer


def _save(model, epoch, test_err, optimizer=None, ema=None, ema_err=None, extra=None):
    """Saves like the trainer, passing the lowest error of the checkpoints saved before."""
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.1)
    best_err = _BEST.get(cfg.OUT_DIR)
    args = (model, ema, optimizer, epoch, test_err, ema_err, extra, best_err)
    path = cp.save_checkpoint(*args)
    _BEST[cfg.OUT_DIR] = cp.lowest_err(best_err, test_err, ema_err)
    return path


# The lowest error saved so far in each OUT_DIR (the trainer's best_err)
_BEST = {}


def _files():
    return sorted(os.listdir(cp.get_checkpoint_dir()))


def _truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def test_paths():
    assert cp.get_checkpoint(7) == os.path.join(cfg.OUT_DIR, "checkpoints", "model_epoch_0007.pyth")
    assert cp.get_last_checkpoint() is None
    assert cp.find_resume_checkpoint() == (None, None)


def test_save_writes_pycls_format_atomically():
    model = TinyNet()
    path = _save(model, 0, 40.0, extra={"amp_state": {"scale": 128.0}})
    assert path == cp.get_checkpoint(1)
    assert _files() == ["model_best.pyth", "model_epoch_0001.pyth"]  # no temp file left
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("epoch", "model_state", "optimizer_state", "cfg", "ema_state"):
        assert key in checkpoint
    assert checkpoint["epoch"] == 0 and checkpoint["test_err"] == 40.0
    assert checkpoint["amp_state"] == {"scale": 128.0} and checkpoint["ema_state"] is None
    assert yaml.safe_load(checkpoint["cfg"])["MODEL"]["TYPE"] == "effnet"
    assert set(checkpoint["model_state"]) == set(model.state_dict())
    assert os.path.samefile(path, os.path.join(cp.get_checkpoint_dir(), "model_best.pyth"))
    assert cp.get_last_checkpoint() == path


def test_resume_without_best_err_takes_the_best_files():
    """A checkpoint written before checkpoints held best_err (or by pycls) resumes with the
    lowest error of itself and the model_best.pyth beside it, so a worse epoch does not
    replace the best one."""
    model = TinyNet()
    _save(model, 0, 10.0)
    _save(model, 1, 40.0)
    path = cp.get_checkpoint(2)  # epochs counted from 1 in the names
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["best_err"]
    os.remove(path)  # model_best.pyth may be a hard link to it: never write through one
    torch.save(checkpoint, path)
    _, extra = cp.load_checkpoint(cp.get_checkpoint(2), TinyNet())
    assert extra["best_err"] == 10.0
    os.remove(os.path.join(cp.get_checkpoint_dir(), "model_best.pyth"))
    _, extra = cp.load_checkpoint(cp.get_checkpoint(2), TinyNet())
    assert extra["best_err"] == 40.0


def test_round_trip_resume():
    model, ema = TinyNet(), TinyNet()
    optimizer = _trained(model)
    _save(model, 4, 30.0, optimizer, ema, 25.0, {"amp_state": {"scale": 64.0}})
    new_model, new_ema = TinyNet(), TinyNet()
    new_optimizer = torch.optim.SGD(new_model.parameters(), lr=0.1, momentum=0.9)
    path, checkpoint = cp.find_resume_checkpoint()
    epoch, extra = cp.load_checkpoint(path, new_model, new_ema, new_optimizer, checkpoint)
    assert epoch == 5  # epochs done = the next epoch index to run
    assert (extra["test_err"], extra["ema_err"], extra["best_err"]) == (30.0, 25.0, 25.0)
    assert extra["amp_state"] == {"scale": 64.0}
    for key, value in model.state_dict().items():
        assert torch.equal(new_model.state_dict()[key], value)
    for key, value in ema.state_dict().items():
        assert torch.equal(new_ema.state_dict()[key], value)
    old_buf = optimizer.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(new_optimizer.state_dict()["state"][0]["momentum_buffer"], old_buf)


def test_interrupted_save_keeps_the_previous_checkpoint(monkeypatch):
    model = TinyNet()
    path = _save(model, 0, 40.0)
    before = open(path, "rb").read()

    def killed(src, dst):
        raise KeyboardInterrupt  # the process dies between the temp write and the rename

    monkeypatch.setattr(cp.os, "replace", killed)
    with torch.no_grad():
        model.fc.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        _save(model, 0, 40.0)
    monkeypatch.undo()
    assert open(path, "rb").read() == before
    assert _files() == ["model_best.pyth", "model_epoch_0001.pyth"]


def test_leftover_temp_files_are_ignored():
    path = _save(TinyNet(), 0, 40.0)
    leftover = os.path.join(cp.get_checkpoint_dir(), ".tmp_model_epoch_0002.pyth.123.abcd")
    with open(path, "rb") as f, open(leftover, "wb") as out:
        out.write(f.read()[:100])  # a kill during the temp write
    assert cp.get_last_checkpoint() == path
    assert cp.find_resume_checkpoint()[0] == path


def test_disk_error_while_saving_is_a_pyclserror(monkeypatch):
    path = _save(TinyNet(), 0, 40.0)

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cp.torch, "save", disk_full)
    with pytest.raises(PyclsError, match="model_epoch_0002.pyth.*No space left"):
        _save(TinyNet(), 1, 30.0)
    monkeypatch.undo()
    assert _files() == ["model_best.pyth", "model_epoch_0001.pyth"]
    assert cp.find_resume_checkpoint()[0] == path


def test_truncated_newest_checkpoint_falls_back_with_a_warning(caplog):
    model = TinyNet()
    first = _save(model, 0, 40.0)
    newest = _save(model, 1, 30.0)
    _truncate(newest)
    assert cp.find_resume_checkpoint()[0] == first
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "model_epoch_0002.pyth" in warnings and "model_epoch_0001.pyth" in warnings
    epoch, _ = cp.load_checkpoint(first, TinyNet())
    assert epoch == 1


def test_no_loadable_checkpoint_is_an_error():
    _truncate(_save(TinyNet(), 0, 40.0))
    with pytest.raises(PyclsError, match="no checkpoint in .* loads"):
        cp.find_resume_checkpoint()


def test_keep_newest_prunes_but_keeps_the_best():
    cfg.TRAIN.CHECKPOINT_KEEP = 2
    model = TinyNet()
    for epoch, err in enumerate([50.0, 10.0, 40.0, 30.0, 20.0]):
        _save(model, epoch, err)
    assert _files() == ["model_best.pyth", "model_epoch_0004.pyth", "model_epoch_0005.pyth"]
    best = torch.load(
        os.path.join(cp.get_checkpoint_dir(), "model_best.pyth"),
        map_location="cpu",
        weights_only=True,
    )
    assert (best["epoch"], best["test_err"]) == (1, 10.0)
    last = torch.load(cp.get_checkpoint(5), map_location="cpu", weights_only=True)
    assert last["best_err"] == 10.0


def test_keep_zero_keeps_all():
    model = TinyNet()
    for epoch in range(3):
        _save(model, epoch, 50.0 - epoch)
    assert len([f for f in _files() if f.startswith("model_epoch_")]) == 3


def test_best_uses_the_lower_of_model_and_ema_errors():
    model, ema = TinyNet(), TinyNet()
    _save(model, 0, 30.0, ema=ema, ema_err=20.0)
    _save(model, 1, 25.0, ema=ema, ema_err=26.0)  # 25 > 20: not a new best
    best = torch.load(
        os.path.join(cp.get_checkpoint_dir(), "model_best.pyth"),
        map_location="cpu",
        weights_only=True,
    )
    assert best["epoch"] == 0


@pytest.mark.parametrize("where", ["model", "ema"])
def test_non_finite_weights_are_never_written(where):
    model, ema = TinyNet(), TinyNet()
    path = _save(model, 0, 40.0, ema=ema, ema_err=40.0)
    with torch.no_grad():
        (model if where == "model" else ema).fc.weight[0, 0] = float("nan")
    with pytest.raises(PyclsError, match="not finite.*fc.weight"):
        _save(model, 1, 30.0, ema=ema, ema_err=30.0)
    assert _files() == ["model_best.pyth", "model_epoch_0001.pyth"]
    assert cp.find_resume_checkpoint()[0] == path


def test_only_the_main_process_writes(monkeypatch):
    monkeypatch.setattr(dist, "is_main_proc", lambda: False)
    assert _save(TinyNet(), 0, 40.0) is None
    assert not os.path.exists(cp.get_checkpoint_dir())


def test_architecture_mismatch_lists_keys():
    path = _save(TinyNet(), 0, 40.0)
    with pytest.raises(PyclsError) as info:
        cp.load_checkpoint(path, OtherNet())
    msg = str(info.value)
    assert "missing keys: layers.0.weight" in msg and "unexpected keys: conv.weight" in msg
    assert "MODEL.TYPE effnet" in msg and path in msg and "\n" not in msg


def test_mismatch_lists_at_most_ten_names():
    torch.save({"model_state": OtherNet(layers=8).state_dict()}, cfg.OUT_DIR + "/other.pyth")
    with pytest.raises(PyclsError, match=r"and 6 more"):
        cp.load_weights(cfg.OUT_DIR + "/other.pyth", TinyNet())


def test_shape_mismatch_and_head_skipping(caplog):
    source = TinyNet(num_classes=1000)
    path = _save(source, 0, 40.0)
    with pytest.raises(PyclsError, match=r"fc.weight \(file \[1000, 4\], model \[10, 4\]\)"):
        cp.load_weights(path, TinyNet(num_classes=10))
    target = TinyNet(num_classes=10)
    head = target.fc.weight.clone()
    skipped = cp.load_weights(path, target, skip_mismatched_head=True)
    assert skipped == ["fc.weight", "fc.bias"]
    assert torch.equal(target.conv.weight, source.conv.weight)
    assert torch.equal(target.fc.weight, head)
    assert any("fc.weight" in r.getMessage() for r in caplog.records)


def test_wrapper_prefixes_are_stripped():
    model = TinyNet()
    state = model.state_dict()
    for prefix in ("module.", "_orig_mod.", "_orig_mod.module."):
        path = os.path.join(cfg.OUT_DIR, "w.pyth")
        torch.save({prefix + k: v for k, v in state.items()}, path)  # a raw state dict
        target = TinyNet()
        assert cp.load_weights(path, target) == []
        assert torch.equal(target.fc.weight, model.fc.weight)
    # Saving from a wrapped model writes bare keys; loading into a wrapped model works
    path = _save(torch.nn.DataParallel(model), 0, 40.0)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in checkpoint["model_state"])
    cp.load_checkpoint(path, torch.nn.DataParallel(TinyNet()))


def test_pycls_model_zoo_file_loads_unchanged():
    model = TinyNet()
    path = os.path.join(cfg.OUT_DIR, "zoo.pyth")
    zoo = {
        "epoch": 99,
        "model_state": model.state_dict(),
        "optimizer_state": torch.optim.SGD(model.parameters(), lr=0.1).state_dict(),
        "cfg": "MODEL:\n  TYPE: effnet\n  NUM_CLASSES: 10\n",
    }
    torch.save(zoo, path)
    target = TinyNet()
    cp.load_weights(path, target)
    assert torch.equal(target.fc.weight, model.fc.weight)
    epoch, extra = cp.load_checkpoint(path, TinyNet())
    assert epoch == 100 and extra["test_err"] is None
    # Old files have no BN batch counters
    del zoo["model_state"]["bn.num_batches_tracked"]
    torch.save(zoo, path)
    cp.load_weights(path, TinyNet())


def test_arbitrary_python_objects_are_refused():
    path = os.path.join(cfg.OUT_DIR, "evil.pyth")
    torch.save({"model_state": TinyNet().state_dict(), "x": Payload()}, path)
    with pytest.raises(PyclsError, match=r"evil.pyth holds a Python object \(.*Payload\)"):
        cp.load_weights(path, TinyNet())
    with open(path, "wb") as f:
        pickle.dump({"model_state": os.system}, f)
    with pytest.raises(PyclsError, match="evil.pyth"):
        cp.load_checkpoint(path, TinyNet())


@pytest.mark.parametrize("content", [None, b"", b"hello, not a checkpoint\n", "truncated"])
def test_bad_files_name_the_path(content):
    path = os.path.join(cfg.OUT_DIR, "bad.pyth")
    if content == "truncated":
        torch.save({"model_state": TinyNet().state_dict(), "epoch": 0}, path)
        _truncate(path)
    elif content is not None:
        with open(path, "wb") as f:
            f.write(content)
    with pytest.raises(PyclsError, match="bad.pyth") as info:
        cp.load_checkpoint(path, TinyNet())
    assert "\n" not in str(info.value)


def test_not_a_checkpoint_dict():
    path = os.path.join(cfg.OUT_DIR, "list.pyth")
    torch.save([torch.ones(1)], path)
    with pytest.raises(PyclsError, match="not a dict"):
        cp.load_weights(path, TinyNet())
    torch.save({"weights": [1, 2]}, path)
    with pytest.raises(PyclsError, match="no model_state"):
        cp.load_weights(path, TinyNet())
    with pytest.raises(PyclsError, match="its epoch is None"):
        cp.load_checkpoint(path, TinyNet())


# ------------------ round two: structure, Python objects, full disk, lock ------------------ #


@pytest.mark.parametrize(
    "data, words",
    [
        ({"epoch": "3", "model_state": {}}, "its epoch is '3', not a whole number"),
        ({"epoch": True, "model_state": {}}, "its epoch is True"),
        ({"epoch": 1, "model_state": [1, 2]}, "its model_state is a list"),
        ({"epoch": 1, "model_state": {"w": 3}}, "its model_state holds a int at key 'w'"),
    ],
)
def test_structurally_wrong_checkpoints_are_named_and_skipped_on_resume(data, words, caplog):
    path = _save(TinyNet(), 0, 50.0)
    os.makedirs(cp.get_checkpoint_dir(), exist_ok=True)
    torch.save(data, cp.get_checkpoint(2))
    with pytest.raises(PyclsError, match="is not a pycls checkpoint: " + re.escape(words)):
        cp.load_checkpoint(cp.get_checkpoint(2), TinyNet())
    assert cp.find_resume_checkpoint()[0] == path  # skipped like a truncated one
    assert any(words in r.getMessage() for r in caplog.records)


def test_model_state_of_wrong_type_is_refused_by_load_weights():
    path = os.path.join(cfg.OUT_DIR, "w.pyth")
    torch.save({"model_state": {"conv.weight": [1.0]}}, path)
    with pytest.raises(PyclsError, match=r"its model_state holds a list at key 'conv.weight'"):
        cp.load_weights(path, TinyNet())


@pytest.mark.parametrize("protocol", [2, 4])
def test_python_objects_named_from_the_pickle_for_any_protocol(protocol):
    path = os.path.join(cfg.OUT_DIR, "obj.pyth")
    torch.save({"epoch": 0, "model_state": {}, "p": Payload()}, path, pickle_protocol=protocol)
    with pytest.raises(PyclsError, match=r"holds a Python object \(test_checkpoint\.Payload\)"):
        cp.load_weights(path, TinyNet())


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("[enforce fail at inline_container.cc:1] . PytorchStreamWriter failed"),
        OSError(28, "No space left on device"),
    ],
)
def test_a_failed_save_names_the_folder_and_keeps_older_checkpoints(error, monkeypatch):
    model = TinyNet()
    first = _save(model, 0, 50.0)
    before = _files()
    with open(first, "rb") as f:
        content = f.read()

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"x" * 100)  # part of the file, then the disk is full
        raise error

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(PyclsError) as info:
        _save(model, 1, 40.0)
    msg = str(info.value)
    assert cp.get_checkpoint(2) in msg and "MiB free in " + cp.get_checkpoint_dir() in msg
    assert "\n" not in msg and "free disk space" in msg
    assert _files() == before  # no temporary file left, nothing older removed
    with open(first, "rb") as f:
        assert f.read() == content


class WideNet(TinyNet):
    """TinyNet with a wider body (conv 8 channels): only the head may differ in fine-tuning."""

    def __init__(self, num_classes=10, width=4):
        super().__init__(num_classes)
        self.conv = torch.nn.Conv2d(3, width, 3, bias=False)
        self.bn = torch.nn.BatchNorm2d(width)
        self.fc = torch.nn.Linear(width, num_classes)


def test_pretrained_skips_only_the_head_unless_partial():
    path = _save(WideNet(num_classes=1000, width=8), 0, 40.0)
    with pytest.raises(PyclsError) as info:
        cp.load_weights(path, WideNet(num_classes=10), skip_mismatched_head=True)
    msg = str(info.value)
    assert "differ from the model beyond its head" in msg and "conv.weight (file [8" in msg
    assert "TRAIN.PRETRAINED_PARTIAL True" in msg and "fc.weight" not in msg
    cfg.TRAIN.PRETRAINED_PARTIAL = True
    target = WideNet(num_classes=10)
    skipped = cp.load_weights(path, target, skip_mismatched_head=True)
    assert "conv.weight" in skipped and "fc.weight" in skipped


def test_a_resume_reads_its_checkpoint_once(monkeypatch):
    model = TinyNet()
    _save(model, 0, 40.0, ema=TinyNet(), ema_err=30.0)
    _save(model, 1, 35.0, ema=TinyNet(), ema_err=30.0)
    reads = []
    load = torch.load
    monkeypatch.setattr(cp.torch, "load", lambda f, *a, **k: reads.append(f) or load(f, *a, **k))
    path, checkpoint = cp.find_resume_checkpoint()
    new_model = TinyNet()
    optimizer = torch.optim.SGD(new_model.parameters(), lr=0.1)
    cp.load_checkpoint(path, new_model, TinyNet(), optimizer, checkpoint)
    assert reads == [cp.get_checkpoint(2)]


@pytest.mark.parametrize(
    "other, words",
    [
        (TinyNet(num_classes=3), r"shape mismatches: fc.weight \(file \[10, 4\], model \[3, 4\]\)"),
        (WideNet(width=8), r"shape mismatches: conv.weight \(file \[4, 3, 3, 3\], model \[8, 3"),
    ],
)
def test_a_checkpoint_of_another_model_names_file_and_difference(other, words):
    path = _save(TinyNet(), 0, 40.0)
    with pytest.raises(PyclsError) as info:
        cp.load_checkpoint(path, other, optimizer=torch.optim.SGD(other.parameters(), lr=0.1))
    msg = str(info.value)
    assert msg.startswith("checkpoint {} does not fit the model (it was made with".format(path))
    assert re.search(words, msg) and "\n" not in msg


def test_weights_folders_named_like_files_and_empty_checkpoints_folders(tmp_path):
    named = tmp_path / "model.pyth"
    named.mkdir()
    with pytest.raises(PyclsError, match=r"folder \S*model.pyth holds no checkpoint"):
        cp.find_weights(str(named))
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(PyclsError, match=r"folder \S*run/checkpoints holds no checkpoint"):
        cp.find_weights(str(tmp_path / "run"))
    with pytest.raises(PyclsError, match=r"model.pyth is a folder, not a file"):
        cp.load_weights(str(named), TinyNet())
