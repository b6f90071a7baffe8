"""Distributed training: one process per device in a torch.distributed process group, placed
by torchrun's env or the seed's --rank_id/--device_id (a world of one makes no group)."""

import contextlib
import datetime
import os
import threading
import time
import warnings

import torch
import torch.distributed as torch_dist

from pycls.core import device as dev
from pycls.core.config import cfg
from pycls.core.errors import PyclsError, write_stderr_line


def _env_int(name):
    """Reads a whole number >= 0 from an environment variable."""
    value = os.environ[name]
    if not value.strip().isdigit():
        raise PyclsError("environment variable {}={!r} must be a whole number".format(name, value))
    return int(value)


def process_info(rank_id=None, device_id=None):
    """Returns (rank, world_size, local_rank) from torchrun's env or the seed's arguments."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world_size = _env_int("RANK"), _env_int("WORLD_SIZE")
        local_rank = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank
    else:
        if rank_id is not None and "RANK_SIZE" not in os.environ:
            msg = "--rank_id {} needs the process count in RANK_SIZE: export RANK_SIZE=N "
            msg += "(as test/train_full_8p.sh does) or launch with torchrun"
            raise PyclsError(msg.format(rank_id))
        rank, world_size = (0, 1) if rank_id is None else (rank_id, _env_int("RANK_SIZE"))
        local_rank = rank if device_id is None else device_id
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        msg = "rank {} (device {}) does not fit a world of {} processes: check RANK/--rank_id, "
        msg += "LOCAL_RANK/--device_id and WORLD_SIZE/RANK_SIZE"
        raise PyclsError(msg.format(rank, local_rank, world_size))
    return rank, world_size, local_rank


def init(device_name="auto", rank_id=None, device_id=None):
    """Sets this process's device and joins the process group; returns the device."""
    rank, world_size, local_rank = process_info(rank_id, device_id)
    device = dev.setup(device_name, local_rank)
    if "TORCHELASTIC_RUN_ID" in os.environ:  # started by torchrun
        _exit_with_launcher(rank)
    if world_size > 1 and not torch_dist.is_initialized():
        # Rendezvous defaults for seed-style launches (torchrun always sets both)
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29688")
        # Bounds the rendezvous and every collective: a stalled peer ends in one error line
        timeout = datetime.timedelta(seconds=cfg.DIST.TIMEOUT)
        store = _restart_store(world_size, timeout)
        kwargs = {"init_method": "env://"} if store is None else {"store": store}
        kwargs.update(rank=rank, world_size=world_size, timeout=timeout)
        torch_dist.init_process_group(dev.dist_backend(device), **kwargs)
    return device


def _restart_store(world_size, timeout=None):
    """Returns the store of a torchrun restart: the launcher's, with keys of this attempt only
    (torchrun keeps its store across restarts; without a prefix the restarted ranks would read
    the addresses the failed attempt left there and fail to connect: pytorch issue 135712)."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if restart == "0" or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    kwargs = {"is_master": False} if timeout is None else {"is_master": False, "timeout": timeout}
    client = torch_dist.TCPStore(addr, port, world_size, **kwargs)
    return torch_dist.PrefixStore("pycls_restart_{}".format(restart), client)


def _exit_with_launcher(rank):
    """Ends this process when the launcher that started it (torchrun) has died, so that a rerun
    never meets orphaned ranks still training into the same OUT_DIR."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        msg = "error: rank {}: its launcher (pid {}) has died, so this rank stops too"
        with contextlib.suppress(OSError):  # the output pipe may have died with the launcher
            write_stderr_line(msg.format(rank, parent))
        os._exit(1)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


def is_initialized():
    """Tells whether a process group is up."""
    return torch_dist.is_available() and torch_dist.is_initialized()


def get_rank():
    """Returns this process's rank (0 without a process group)."""
    return torch_dist.get_rank() if is_initialized() else 0


def get_world_size():
    """Returns the number of processes (1 without a process group)."""
    return torch_dist.get_world_size() if is_initialized() else 1


def is_main_proc():
    """Tells whether this is the main process (rank 0, or the only one)."""
    return get_rank() == 0


def scaled_all_reduce(tensors):
    """Averages tensors over all processes in place and returns them."""
    world_size = get_world_size()
    if world_size > 1:
        for work in [torch_dist.all_reduce(t, async_op=True) for t in tensors]:
            work.wait()
        for t in tensors:
            t.mul_(1.0 / world_size)
    return tensors


def all_reduce_sum(tensor):
    """Sums a tensor over all processes in place and returns it."""
    if get_world_size() > 1:
        torch_dist.all_reduce(tensor)
    return tensor


def wrap_model(model, device):
    """Wraps a model (already on its device) in DDP when there are several processes."""
    if get_world_size() == 1:
        return model
    ids = [torch.device(device).index] if dev.has_accelerator(device) else None
    ddp = torch.nn.parallel.DistributedDataParallel
    with warnings.catch_warnings():
        # Newer torch deprecates broadcast_buffers but says to keep it for rank-local buffers
        warnings.filterwarnings("ignore", ".*broadcast_buffers", FutureWarning)
        return ddp(model, device_ids=ids, output_device=ids and ids[0], broadcast_buffers=False)


def cleanup():
    """Leaves and destroys the process group, if one is up."""
    if is_initialized():
        torch_dist.destroy_process_group()
