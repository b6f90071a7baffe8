"""Loaders: batches, samplers, batch division, workers, seeding, bad files, synthetic data."""

import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as torch_dist
from _data_utils import make_image_folder, write_bad_file
from torch.utils.data.distributed import DistributedSampler

from pycls.core.config import cfg
from pycls.core.errors import PyclsError
from pycls.datasets import loader, synthetic


@pytest.fixture
def data(tmp_path):
    """A tiny two-class data set (11 train and 6 val images) set in cfg."""
    make_image_folder(tmp_path, ["a", "b"], {"train": 6, "val": 3})
    os.remove(str(tmp_path / "train" / "b" / "5.jpg"))
    cfg.TRAIN.DATASET = cfg.TEST.DATASET = "imagenet"
    cfg.DATA_LOADER.DATA_PATH = str(tmp_path)
    cfg.DATA_LOADER.NUM_WORKERS = 0
    cfg.TRAIN.IM_SIZE, cfg.TEST.IM_SIZE = 8, 10
    cfg.TRAIN.BATCH_SIZE, cfg.TEST.BATCH_SIZE = 4, 4
    cfg.MODEL.NUM_CLASSES = 2
    return tmp_path


@pytest.fixture
def data_3_classes(tmp_path):
    """A tiny image folder: 3 classes, 8 train and 4 val images each, 16x16."""
    return str(make_image_folder(str(tmp_path), ("a", "b", "c"), {"train": 8, "val": 4}, (16, 16)))


def _batches(data_loader):
    return [(x.clone(), y.clone()) for x, y in data_loader]


def _error_of(fn):
    """Returns the PyclsError message of fn() without keeping its traceback alive.

    pytest.raises would keep a reference cycle through the traceback to the loader's
    workers; collected by the GC later, the workers' queues are closed first and each
    shutdown then waits 5 s for its workers.
    """
    try:
        fn()
    except PyclsError as e:
        return str(e)
    raise AssertionError("no PyclsError raised")


def test_train_and_test_batches(data):
    train = _batches(loader.construct_train_loader(device="cpu"))
    assert [x.shape for x, _ in train] == [(4, 3, 8, 8)] * 2  # 11 images: last 3 dropped
    assert train[0][0].dtype == torch.float32 and train[0][1].dtype == torch.int64
    test = _batches(loader.construct_test_loader(device="cpu"))
    assert [x.shape[0] for x, _ in test] == [4, 2]  # nothing dropped
    assert torch.cat([y for _, y in test]).tolist() == [0, 0, 0, 1, 1, 1]  # in order


def test_each_split_is_checked_and_listed_once_for_both_loaders(data, monkeypatch):
    from pycls.datasets import imagenet

    calls = []
    for name in ("split_path", "find_classes"):
        real = getattr(imagenet, name)

        def spy(*args, _real=real, _name=name):
            calls.append((_name, os.path.basename(args[-1])))  # the split's name
            return _real(*args)

        monkeypatch.setattr(imagenet, name, spy)
    once = [(f, s) for f in ("find_classes", "split_path") for s in ("train", "val")]
    train, test = loader.construct_loaders(device="cpu")
    assert sorted(calls) == once
    assert (train.dataset.split, train.dataset.classes, len(train.dataset)) == (
        "train",
        ["a", "b"],
        11,
    )
    assert (test.dataset.split, test.dataset.classes, len(test.dataset)) == ("val", ["a", "b"], 6)
    assert test.dataset.root == str(data / "val") and not train.pin_memory
    del calls[:]
    assert len(loader.construct_test_loader(device="cpu").dataset) == 6  # alone: each once too
    assert sorted(calls) == once
    os.rename(data / "val" / "b", data / "val" / "c")
    msg = "the classes of {0}/train and {0}/val differ (only in train: b; only in val: c)"
    assert msg.format(data) in _error_of(lambda: loader.construct_loaders(device="cpu"))


def test_dataset_name_must_be_known(data):
    cfg.TRAIN.DATASET = "cifar10"
    with pytest.raises(
        PyclsError, match="TRAIN.DATASET is 'cifar10'; choose one of imagenet, synthetic"
    ):
        loader.construct_train_loader()
    cfg.TEST.DATASET = ""
    with pytest.raises(PyclsError, match="TEST.DATASET is ''"):
        loader.construct_test_loader()


def test_loader_checks_classes_against_the_other_split(data):
    os.rename(str(data / "val" / "b"), str(data / "val" / "c"))
    for construct in (loader.construct_train_loader, loader.construct_test_loader):
        with pytest.raises(PyclsError, match="only in train: b; only in val: c"):
            construct()


def test_missing_val_split_only_stops_the_test_loader(data, tmp_path):
    os.rename(str(data / "val"), str(tmp_path / "elsewhere"))
    loader.construct_train_loader()
    with pytest.raises(PyclsError, match="has no val/ folder"):
        loader.construct_test_loader()


def test_more_classes_than_the_model_has(data):
    cfg.MODEL.NUM_CLASSES = 1
    with pytest.raises(
        PyclsError, match="2 classes but MODEL.NUM_CLASSES is 1; set MODEL.NUM_CLASSES 2"
    ):
        loader.construct_train_loader()


def test_batch_size_must_divide_by_world_size(data):
    with pytest.raises(PyclsError, match="TRAIN.BATCH_SIZE 4 does not divide by the 3 processes"):
        loader.construct_train_loader(rank=0, world_size=3)
    cfg.TEST.BATCH_SIZE = 5
    with pytest.raises(PyclsError, match="TEST.BATCH_SIZE 5 .* 2 processes"):
        loader.construct_test_loader(rank=1, world_size=2)


def test_train_batch_larger_than_the_data(data):
    cfg.TRAIN.BATCH_SIZE = 24
    with pytest.raises(PyclsError, match="TRAIN.BATCH_SIZE 24 gives batches of 12 per process"):
        loader.construct_train_loader(rank=0, world_size=2)


def test_distributed_sampler_per_rank_batches_and_epochs(data):
    loaders = [loader.construct_train_loader(rank=r, world_size=2) for r in range(2)]
    assert all(isinstance(dl.sampler, DistributedSampler) for dl in loaders)
    assert [dl.batch_size for dl in loaders] == [2, 2]
    orders = [list(dl.sampler) for dl in loaders]
    assert len(set(orders[0]) | set(orders[1])) == 11  # the ranks share out the images
    assert len(set(orders[0]) & set(orders[1])) == 1  # and pad 11 to 12 with one repeat
    loader.shuffle(loaders[0], 3)
    assert loaders[0].sampler.epoch == 3 and list(loaders[0].sampler) != orders[0]
    test = loader.construct_test_loader(rank=1, world_size=2)
    assert test.batch_size == 2 and not test.drop_last and not test.sampler.shuffle


def test_workers_capped_persistent_and_pinning(data, caplog):
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cfg.DATA_LOADER.NUM_WORKERS = cpus + 5
    with caplog.at_level(logging.WARNING, logger="pycls.datasets.loader"):
        dl = loader.construct_train_loader(device="cpu")
    assert dl.num_workers == cpus and dl.persistent_workers
    assert "NUM_WORKERS {} is more than the {} CPUs".format(cpus + 5, cpus) in caplog.text
    assert not dl.pin_memory
    assert loader.construct_test_loader(device="cuda:0").pin_memory
    assert loader.construct_test_loader(device=torch.device("cuda")).pin_memory
    assert loader.construct_test_loader(device="npu").pin_memory
    assert loader.construct_test_loader().pin_memory == torch.cuda.is_available()
    cfg.DATA_LOADER.PIN_MEMORY = False
    cfg.DATA_LOADER.NUM_WORKERS = 0
    dl = loader.construct_test_loader(device="cuda")
    assert not dl.pin_memory and not dl.persistent_workers


@pytest.mark.parametrize("workers", [0, 2])
def test_same_seed_same_batches_other_rank_or_seed_differs(data, workers):
    cfg.DATA_LOADER.NUM_WORKERS = workers

    def first(**kwargs):
        return next(iter(loader.construct_train_loader(**kwargs)))

    x0, y0 = first()
    x1, y1 = first()
    assert torch.equal(x0, x1) and torch.equal(y0, y1)
    assert not torch.equal(first(rank=1)[0], x0)
    cfg.RNG_SEED = 7
    assert not torch.equal(first()[0], x0)


def test_loading_leaves_the_global_rng_alone(data):
    dl = loader.construct_train_loader()
    torch.manual_seed(0)
    want = torch.rand(3)
    torch.manual_seed(0)
    _batches(dl)
    assert torch.equal(torch.rand(3), want)


def test_epochs_differ_and_repeat_after_shuffle(data):
    dl = loader.construct_train_loader()
    loader.shuffle(dl, 0)
    epoch0 = _batches(dl)
    loader.shuffle(dl, 1)
    epoch1 = _batches(dl)
    assert not torch.equal(epoch0[0][0], epoch1[0][0])
    loader.shuffle(dl, 1)
    assert torch.equal(_batches(dl)[0][0], epoch1[0][0])


def _add_bad_files(root):
    write_bad_file(str(root / "train" / "a" / "1.jpg"), "truncated")
    write_bad_file(str(root / "train" / "a" / "3.jpg"), "text")
    write_bad_file(str(root / "train" / "b" / "0.jpg"), "empty")


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_files_counted_per_epoch_across_workers(data, workers, caplog):
    _add_bad_files(data)
    cfg.DATA_LOADER.NUM_WORKERS = workers
    cfg.DATA_LOADER.MAX_BAD_FRACTION = 0.5
    cfg.TRAIN.BATCH_SIZE = 1  # no image is dropped: every bad file is met each epoch
    dl = loader.construct_train_loader()
    for epoch in range(3):
        loader.shuffle(dl, epoch)
        assert loader.bad_file_count(dl) == 0
        batches = _batches(dl)
        assert len(batches) == 11 and all(x.shape == (1, 3, 8, 8) for x, _ in batches)
        assert loader.bad_file_count(dl) == 3
    assert int(dl.dataset.bad_files.logged.sum()) == 3
    if workers == 0:  # worker processes log in their own process
        assert caplog.text.count("unreadable image") == 3


@pytest.mark.parametrize("workers", [0, 2])
def test_too_many_bad_files_stop_the_epoch(data, workers):
    _add_bad_files(data)
    cfg.DATA_LOADER.NUM_WORKERS = workers
    cfg.DATA_LOADER.MAX_BAD_FRACTION = 0.1  # one bad image of the 8 loaded is allowed
    msg = _error_of(lambda: _batches(loader.construct_train_loader()))
    assert "of the 8 images of this epoch" in msg and "are unreadable (" in msg
    assert "more than DATA_LOADER.MAX_BAD_FRACTION 0.1" in msg
    assert "raise DATA_LOADER.MAX_BAD_FRACTION" in msg and "\n" not in msg


def test_test_loader_counts_each_pass_afresh(data):
    write_bad_file(str(data / "val" / "b" / "1.jpg"), "truncated")
    cfg.DATA_LOADER.MAX_BAD_FRACTION = 0.2  # one of the 6 val images: 0.17
    dl = loader.construct_test_loader()
    for _ in range(3):
        assert sum(len(y) for _, y in _batches(dl)) == 6
        assert loader.bad_file_count(dl) == 1


def test_no_bad_file_is_allowed_at_zero_fraction(data):
    write_bad_file(str(data / "val" / "a" / "0.jpg"), "text")
    cfg.DATA_LOADER.MAX_BAD_FRACTION = 0.0
    with pytest.raises(PyclsError, match="1 of the 6 images"):
        _batches(loader.construct_test_loader())


def test_error_in_a_worker_comes_back_as_one_line(data):
    for split in ("train", "val"):
        for cls in ("a", "b"):
            for name in os.listdir(str(data / split / cls)):
                write_bad_file(str(data / split / cls / name), "text")
    cfg.DATA_LOADER.NUM_WORKERS = 1
    cfg.DATA_LOADER.MAX_BAD_FRACTION = 1.0
    msg = _error_of(lambda: _batches(loader.construct_test_loader()))
    assert msg.startswith("50 images in a row from ") and "\n" not in msg


def test_synthetic_loaders(monkeypatch):
    monkeypatch.setattr(synthetic, "TRAIN_LENGTH", 10)
    monkeypatch.setattr(synthetic, "TEST_LENGTH", 5)
    cfg.TRAIN.DATASET = cfg.TEST.DATASET = "synthetic"
    cfg.TRAIN.IM_SIZE, cfg.TEST.IM_SIZE = 12, 99
    cfg.TRAIN.BATCH_SIZE, cfg.TEST.BATCH_SIZE = 4, 4
    cfg.MODEL.NUM_CLASSES = 3
    cfg.DATA_LOADER.NUM_WORKERS = 0
    train = _batches(loader.construct_train_loader())
    assert [x.shape for x, _ in train] == [(4, 3, 12, 12)] * 2
    assert all(((y >= 0) & (y < 3)).all() and y.dtype == torch.int64 for _, y in train)
    test = _batches(loader.construct_test_loader())
    assert [x.shape for x, _ in test] == [(4, 3, 12, 12), (1, 3, 12, 12)]
    assert loader.bad_file_count(loader.construct_test_loader()) == 0


def test_synthetic_default_length_is_imagenet_sized():
    cfg.TRAIN.DATASET = cfg.TEST.DATASET = "synthetic"
    cfg.TRAIN.IM_SIZE = 8
    cfg.DATA_LOADER.NUM_WORKERS = 0
    assert len(loader.construct_train_loader().dataset) == 1281167
    assert len(loader.construct_test_loader().dataset) == 50000


def test_rank_and_world_size_come_from_torch_distributed(data, tmp_path):
    init = "file://" + str(tmp_path / "store")
    torch_dist.init_process_group("gloo", init_method=init, rank=0, world_size=1)
    try:
        dl = loader.construct_train_loader()
        assert dl.batch_size == 4 and dl.sampler.__class__.__name__ == "RandomSampler"
        assert dl.rank == 0
        dl = loader.construct_train_loader(rank=1, world_size=2)  # given: these win
        assert (dl.rank, dl.sampler.rank, dl.sampler.num_replicas) == (1, 1, 2)
    finally:
        torch_dist.destroy_process_group()


@pytest.mark.parametrize("order", ["bgr", "rgb", None])
def test_solid_red_image_arrives_in_the_configured_channel_order(tmp_path, order):
    from PIL import Image

    for split in ("train", "val"):
        for name in ("a", "b"):
            os.makedirs(tmp_path / split / name)
            Image.new("RGB", (12, 10), (255, 0, 0)).save(tmp_path / split / name / "red.png")
    cfg.TRAIN.DATASET = cfg.TEST.DATASET = "imagenet"
    cfg.DATA_LOADER.DATA_PATH, cfg.DATA_LOADER.NUM_WORKERS = str(tmp_path), 0
    cfg.TRAIN.IM_SIZE, cfg.TEST.IM_SIZE, cfg.TRAIN.PCA_STD = 8, 10, 0.0
    cfg.TRAIN.BATCH_SIZE, cfg.TEST.BATCH_SIZE, cfg.MODEL.NUM_CLASSES = 2, 2, 2
    if order is not None:  # None: the default, pycls's BGR
        cfg.INPUT.CHANNEL_ORDER = order
    red, blue = (1.0 - 0.485) / 0.229, (0.0 - 0.406) / 0.225  # pycls's mean / std
    first, last = (red, blue) if order == "rgb" else (blue, red)
    for build in (loader.construct_test_loader, loader.construct_train_loader):
        images = next(iter(build(device="cpu")))[0]
        torch.testing.assert_close(images[:, 0], torch.full_like(images[:, 0], first))
        torch.testing.assert_close(images[:, 2], torch.full_like(images[:, 2], last))


class _Stalling(torch.utils.data.Dataset):
    """A data set whose worker stalls (sleeps) or dies (SIGKILL) at its first item."""

    def __init__(self, how):
        self.how = how

    def __len__(self):
        return 4

    def __getitem__(self, index):
        if self.how == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(5)
        return torch.zeros(1)


def _stalling_loader(how):
    """A test loader with one worker over _Stalling(how), waiting at most 1 s for a batch."""
    kwargs = {"batch_size": 2, "num_workers": 1, "timeout": 1}
    context = loader.mp_context()
    return loader.Loader(
        _Stalling(how), 0, 0.0, "test", 3, multiprocessing_context=context, **kwargs
    )


def test_workers_start_in_a_fresh_process_not_a_fork_of_the_rank(data):
    cfg.DATA_LOADER.NUM_WORKERS = 2
    dl = loader.construct_train_loader(device="cpu")
    safe = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    assert dl.multiprocessing_context.get_start_method() == safe
    assert dl.timeout == cfg.DATA_LOADER.TIMEOUT == 600
    it = iter(dl)
    next(it)
    for worker in dl._iterator._workers:
        with open("/proc/{}/stat".format(worker.pid)) as f:
            parent = int(f.read().rsplit(")", 1)[1].split()[1])
        # A forkserver's child has the server as parent; a forked worker would have us
        assert (parent != os.getpid()) == (safe == "forkserver")
    del it
    cfg.DATA_LOADER.MP_CONTEXT = "fork"
    dl = loader.construct_train_loader(device="cpu")
    assert dl.multiprocessing_context.get_start_method() == "fork"
    cfg.DATA_LOADER.NUM_WORKERS = 0
    dl = loader.construct_test_loader(device="cpu")
    assert dl.multiprocessing_context is None and dl.timeout == 0


def test_a_stalled_worker_ends_in_one_line_naming_rank_and_loader():
    msg = _error_of(lambda: next(iter(_stalling_loader("sleep"))))
    assert msg.startswith("rank 3 waited 1 s for a batch from the test loader's workers; ")
    assert "raise DATA_LOADER.TIMEOUT" in msg


def test_a_killed_worker_ends_in_one_line():
    msg = _error_of(lambda: next(iter(_stalling_loader("die"))))
    assert msg.startswith("rank 3 lost one of the test loader's workers: worker (pid(s) ")
    assert "lower DATA_LOADER.NUM_WORKERS" in msg


# A process that starts a train loader's 2 workers, prints their pids and waits
_RANK_WITH_WORKERS = """
import sys, time
from pycls.core.config import cfg
from pycls.datasets import loader
cfg.TRAIN.DATASET, cfg.DATA_LOADER.DATA_PATH = "imagenet", sys.argv[1]
cfg.DATA_LOADER.NUM_WORKERS, cfg.MODEL.NUM_CLASSES = 2, 2
cfg.TRAIN.IM_SIZE, cfg.TRAIN.BATCH_SIZE = 8, 4
dl = loader.construct_train_loader(device="cpu")
next(iter(dl))
print(" ".join(str(w.pid) for w in dl._iterator._workers), flush=True)
time.sleep(600)
"""


def test_workers_end_when_their_rank_is_killed(data):
    cmd = [sys.executable, "-c", _RANK_WITH_WORKERS, str(data)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2
    proc.kill()  # SIGKILL: no clean-up runs in the rank
    proc.wait()
    deadline = time.time() + 60  # a bound on "ever", not a speed figure
    while any(_is_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_is_alive(p) for p in pids)


def _is_alive(pid):
    """Tells whether a process exists (a zombie, ended but not yet reaped, counts as gone)."""
    try:
        with open("/proc/{}/stat".format(pid)) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("workers", [0, 2])
def test_an_epochs_batches_do_not_depend_on_the_epochs_before(fresh_cfg, data_3_classes, workers):
    cfg.TRAIN.DATASET, cfg.DATA_LOADER.DATA_PATH = "imagenet", data_3_classes
    cfg.MODEL.NUM_CLASSES, cfg.TRAIN.IM_SIZE, cfg.TRAIN.BATCH_SIZE = 3, 8, 4
    cfg.DATA_LOADER.NUM_WORKERS = workers

    def last_epoch(epochs):
        train_loader = loader.construct_train_loader()
        for epoch in epochs:
            loader.shuffle(train_loader, epoch)
            batches = [(x.clone(), y.clone()) for x, y in train_loader]
        return batches

    straight, resumed = last_epoch([0, 1, 2]), last_epoch([2])
    assert len(straight) == len(resumed) == 6
    for (x0, y0), (x1, y1) in zip(straight, resumed):
        assert torch.equal(y0, y1) and torch.equal(x0, x1)
    assert not torch.equal(last_epoch([1])[0][0], straight[0][0])


def test_augmentations_do_not_depend_on_the_worker_count(fresh_cfg, data_3_classes):
    cfg.TRAIN.DATASET, cfg.DATA_LOADER.DATA_PATH = "imagenet", data_3_classes
    cfg.MODEL.NUM_CLASSES, cfg.TRAIN.IM_SIZE, cfg.TRAIN.BATCH_SIZE = 3, 8, 4
    cfg.TRAIN.AUGMENT = "RandAugment"
    runs = []
    for workers in (0, 2):
        cfg.DATA_LOADER.NUM_WORKERS = workers
        train_loader = loader.construct_train_loader()
        loader.shuffle(train_loader, 1)
        runs.append(_batches(train_loader))
    for (x0, y0), (x1, y1) in zip(*runs):
        assert torch.equal(y0, y1) and torch.equal(x0, x1)
