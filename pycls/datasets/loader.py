"""Data loaders: datasets from cfg, distributed samplers, seeding, workers and the bad-file budget.

Seeding: shuffle derives an epoch's seed from RNG_SEED + rank and the epoch; it orders the
samples and seeds each sample's augmentations, so they repeat for one RNG_SEED and epoch e is the
same whether the run went through epochs 0..e-1 or resumed at e. Workers start with
DATA_LOADER.MP_CONTEXT (forkserver by default): a rank has threads (gloo, queue feeders, torch's)
and a worker forked from a threaded process can deadlock. A wait for a batch is bounded by
DATA_LOADER.TIMEOUT and ends in one line naming the rank and the loader.
"""

import contextlib
import logging
import multiprocessing
import os
import select
import sys
import threading
import time

import torch
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.data.distributed import DistributedSampler

import pycls.core.device as devices
import pycls.core.distributed as dist
from pycls.core.config import cfg
from pycls.core.errors import PyclsError
from pycls.datasets import synthetic, transforms
from pycls.datasets.imagenet import ImageNet, list_classes

logger = logging.getLogger(__name__)

# Valid values of TRAIN.DATASET and TEST.DATASET; seeds of a rank's epochs are this far apart
DATASETS, _EPOCH_SEED_STRIDE = ("imagenet", "synthetic"), 1 << 20

# Streams derived from an epoch's seed, kept apart from the loader's Generator (which DataLoader
# draws from at times of its own): the sample order and the samples' augmentations
_SAMPLER_STREAM, _AUGMENT_STREAM = 1, 2

# Quiets the resource tracker's "leaked semaphore" warnings of a stopped rank (its stop line last)
_QUIET_TRACKER = "ignore:resource_tracker:UserWarning"


class Loader(DataLoader):
    """A DataLoader with a budget of unreadable images per pass and one-line worker failures."""

    def __init__(self, dataset, seed, max_bad_fraction, name="data", rank=0, **kwargs):
        super().__init__(dataset, **kwargs)
        self.seed, self.max_bad_fraction, self.name, self.rank = seed, max_bad_fraction, name, rank
        self.bad_files = getattr(dataset, "bad_files", None)

    def __iter__(self):
        # A pass left early may leave prefetched batches whose bad files count in the next
        if self.bad_files is not None:
            self.bad_files.reset()
        total = len(self) * self.batch_size if self.drop_last else len(self.sampler)
        try:
            for batch in super().__iter__():
                count = bad_file_count(self)
                if count / total > self.max_bad_fraction:
                    msg = "{} of the {} images of this epoch in {} are unreadable ({:.2%}), more "
                    msg += "than DATA_LOADER.MAX_BAD_FRACTION {}; fix or remove the files named "
                    msg += "in the warnings, or raise DATA_LOADER.MAX_BAD_FRACTION"
                    root, fraction = self.dataset.root, self.max_bad_fraction
                    raise PyclsError(msg.format(count, total, root, count / total, fraction))
                yield batch
        except (PyclsError, RuntimeError) as e:
            # Drop the traceback: DataLoader's reraise frame holds the error, a cycle that
            # would keep the workers alive until the GC finds it
            e.__traceback__ = None
            error = _one_line(e, self)
            if error is None:
                raise
            raise error from None


def _one_line(error, data_loader):
    """Returns the PyclsError for an error met fetching a batch (None: re-raise it as it is)."""
    text = str(error)
    if isinstance(error, PyclsError):  # from a worker it comes wrapped in its traceback
        return PyclsError(text.strip().splitlines()[-1].split("PyclsError: ")[-1])
    where = "rank {} ".format(data_loader.rank)
    what = "the {} loader's workers".format(data_loader.name)
    if text.startswith("DataLoader timed out"):
        msg = "{}waited {} s for a batch from {}; a worker is stuck or too slow (check the "
        msg += "data storage), raise DATA_LOADER.TIMEOUT (0 waits forever) or lower "
        msg += "DATA_LOADER.NUM_WORKERS"
        return PyclsError(msg.format(where, data_loader.timeout, what))
    if text.startswith("DataLoader worker") and "exited unexpectedly" in text:
        detail = text.split(". ")[0].replace("DataLoader worker", "worker")
        msg = "{}lost one of {}: {}; a killed worker is often out of memory, so lower "
        msg += "DATA_LOADER.NUM_WORKERS or TRAIN/TEST.BATCH_SIZE"
        return PyclsError(msg.format(where, what, detail))
    return None


def _stream_seed(epoch_seed, stream):
    """Returns the seed of one of the RNG streams of a loader's epoch."""
    return hash((epoch_seed, stream)) % (1 << 63)  # an int tuple's hash is the same everywhere


def mp_context():
    """Returns the multiprocessing context every loader starts its workers with."""
    method, available = cfg.DATA_LOADER.MP_CONTEXT, multiprocessing.get_all_start_methods()
    if method == "auto":
        method = next(m for m in ("forkserver", "spawn") if m in available)  # safe with threads
    if method not in available:
        msg = "DATA_LOADER.MP_CONTEXT {} does not exist on this platform; choose one of {}"
        raise PyclsError(msg.format(method, ", ".join(["auto"] + available)))
    context = multiprocessing.get_context(method)
    if method != "fork" and _QUIET_TRACKER not in sys.warnoptions:
        sys.warnoptions.append(_QUIET_TRACKER)  # the tracker takes its -W options from here
    if method == "forkserver":  # each worker the server forks starts with these imported
        context.set_forkserver_preload(["__main__", "pycls.datasets.loader"])
    return context


class _WorkerInit:
    """Starts a loader worker: ends it when its rank dies and, where it did not inherit the
    rank's logging (forkserver, spawn), logs where the rank logs."""

    def __init__(self):
        self.rank_pid, handler = os.getpid(), (logging.getLogger().handlers or [None])[0]
        self.log_file = getattr(handler, "baseFilename", None)
        self.log_stream = "stdout" if getattr(handler, "stream", None) is sys.stdout else "stderr"
        self.log_format = getattr(getattr(handler, "formatter", None), "_fmt", None)

    def __call__(self, worker_id):
        if os.getppid() != self.rank_pid:
            # A forkserver's child: torch's watchdog watches the parent (the server, which
            # outlives the rank), so a killed rank would leave its workers running
            threading.Thread(target=_exit_with, args=(self.rank_pid,), daemon=True).start()
        if self.log_format is None or logging.getLogger().handlers:
            return
        stream = logging.StreamHandler(getattr(sys, self.log_stream))
        handler = logging.FileHandler(self.log_file) if self.log_file else stream
        handler.setFormatter(logging.Formatter(self.log_format))
        logging.basicConfig(level=logging.WARNING, handlers=[handler])


def _exit_with(pid):
    """Ends this process (a loader worker) once the process pid has ended."""
    try:
        select.select([os.pidfd_open(pid)], [], [])  # readable once it has ended (even unreaped)
    except (AttributeError, OSError):  # no pidfd_open (not Linux): ask every second
        with contextlib.suppress(OSError):  # ProcessLookupError: it has ended
            while not os.kill(pid, 0):
                time.sleep(1.0)
    os._exit(1)


def _construct_dataset(train, key, num_workers, listed):
    """Builds the dataset named by TRAIN.DATASET / TEST.DATASET (listed: see list_classes)."""
    sec, other = (cfg.TRAIN, cfg.TEST) if train else (cfg.TEST, cfg.TRAIN)
    if sec.DATASET == "synthetic":
        default = synthetic.TRAIN_LENGTH if train else synthetic.TEST_LENGTH
        length = max(cfg.DATA_LOADER.SYNTHETIC_LENGTH, 0) or default
        return synthetic.Synthetic(length, cfg.TRAIN.IM_SIZE, cfg.MODEL.NUM_CLASSES, cfg.RNG_SEED)
    if sec.DATASET != "imagenet":
        msg = "{} is {!r}; choose one of {}".format(key, sec.DATASET, ", ".join(DATASETS))
        raise PyclsError(msg)
    data_path, order = cfg.DATA_LOADER.DATA_PATH, cfg.INPUT.CHANNEL_ORDER
    listed = list_classes(data_path, sec.SPLIT, other.SPLIT, listed)
    # The class count is checked before the (long) listing of the images
    root, found = os.path.join(data_path, sec.SPLIT), len(listed[sec.SPLIT])
    num_classes = cfg.MODEL.NUM_CLASSES
    if found > num_classes:
        msg = "{} has {} classes but MODEL.NUM_CLASSES is {}; set MODEL.NUM_CLASSES {}"
        raise PyclsError(msg.format(root, found, num_classes, found))
    if found < num_classes:
        logger.warning("%s has %d classes; MODEL.NUM_CLASSES is %d", root, found, num_classes)
    if train:
        transform = transforms.train_transform(
            cfg.TRAIN.IM_SIZE, cfg.TRAIN.AUGMENT, cfg.TRAIN.PCA_STD, cfg.TRAIN.CROP_SCALE,
            cfg.TRAIN.HFLIP, order,
        )  # fmt: skip
    else:
        transform = transforms.test_transform(cfg.TEST.IM_SIZE, cfg.TRAIN.IM_SIZE, order)
    return ImageNet(data_path, sec.SPLIT, transform, num_workers, listed[sec.SPLIT])


def _construct_loader(train, device, rank, world_size, listed=None):
    """Builds the train or test loader of this process from cfg."""
    rank = dist.get_rank() if rank is None else rank
    world_size = dist.get_world_size() if world_size is None else world_size
    prefix = "TRAIN" if train else "TEST"
    key, batch = prefix + ".BATCH_SIZE", (cfg.TRAIN if train else cfg.TEST).BATCH_SIZE
    if batch % world_size:
        msg = "{} {} does not divide by the {} processes; set {} to a multiple of {}"
        raise PyclsError(msg.format(key, batch, world_size, key, world_size))
    num_workers, affinity = cfg.DATA_LOADER.NUM_WORKERS, getattr(os, "sched_getaffinity", None)
    cpus = len(affinity(0)) if affinity else os.cpu_count() or 1
    if num_workers > cpus:  # more would only compete for the CPUs
        msg = "DATA_LOADER.NUM_WORKERS %d is more than the %d CPUs available; using %d"
        logger.warning(msg, num_workers, cpus, cpus)
        num_workers = cpus
    dataset = _construct_dataset(train, prefix + ".DATASET", num_workers, listed)
    seed, sampler = cfg.RNG_SEED + rank, None
    if world_size > 1:
        sampler = DistributedSampler(dataset, world_size, rank, shuffle=train, seed=cfg.RNG_SEED)
    elif train:  # a Generator of its own: the order must not depend on DataLoader's draws
        generator = torch.Generator().manual_seed(_stream_seed(seed, _SAMPLER_STREAM))
        sampler = RandomSampler(dataset, generator=generator)
    workers = num_workers > 0
    data_loader = Loader(
        dataset, seed, cfg.DATA_LOADER.MAX_BAD_FRACTION, "train" if train else "test", rank,
        batch_size=batch // world_size, sampler=sampler, num_workers=num_workers,
        pin_memory=devices.pin_memory(device), drop_last=train, persistent_workers=workers,
        worker_init_fn=_WorkerInit(), multiprocessing_context=mp_context() if workers else None,
        timeout=cfg.DATA_LOADER.TIMEOUT if workers else 0,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    if len(data_loader) == 0:  # drop_last with fewer images than one batch
        msg = "{} {} gives batches of {} per process, more than the {} images it gets; lower {}"
        images = len(data_loader.sampler)
        raise PyclsError(msg.format(key, batch, batch // world_size, images, key))
    if train:
        shuffle(data_loader, 0)  # epoch 0 until shuffle says otherwise
    return data_loader


def construct_train_loader(device=None, rank=None, world_size=None):
    """Builds the train loader (shuffled, last incomplete batch dropped)."""
    return _construct_loader(True, device, rank, world_size)


def construct_test_loader(device=None, rank=None, world_size=None):
    """Builds the test loader (in order, every sample kept)."""
    return _construct_loader(False, device, rank, world_size)


def construct_loaders(device=None, rank=None, world_size=None):
    """Builds the train and test loaders; each split folder is checked and listed once."""
    listed = {}
    return tuple(_construct_loader(t, device, rank, world_size, listed) for t in (True, False))


def shuffle(loader, cur_epoch):
    """Starts an epoch: reshuffles the samples (per epoch seed) and resets the bad-file count."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(cur_epoch)
    if not isinstance(loader, Loader):  # a plain DataLoader (tests, tools)
        return
    epoch_seed = loader.seed + cur_epoch * _EPOCH_SEED_STRIDE
    loader.generator.manual_seed(epoch_seed)
    if isinstance(loader.sampler, RandomSampler):
        loader.sampler.generator.manual_seed(_stream_seed(epoch_seed, _SAMPLER_STREAM))
    if hasattr(loader.dataset, "epoch_seed"):
        loader.dataset.epoch_seed.fill_(_stream_seed(epoch_seed, _AUGMENT_STREAM))
    if loader.bad_files is not None:
        loader.bad_files.reset()


def bad_file_count(loader):
    """Returns the number of unreadable images met in the current (or last) pass, all workers."""
    bad_files = getattr(loader, "bad_files", None)
    return 0 if bad_files is None else bad_files.count()
