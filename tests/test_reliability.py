"""Reliability: kills, crashed ranks, non-finite losses and bad checkpoints lose at most an epoch.

The runs are real (tools/train_net.py, torchrun with 2 gloo processes) on a tiny EfficientNet and
a tiny image folder, in deterministic mode, so a resumed run must end bit for bit where an
uninterrupted one does. Failures are injected by HOOKED_TRAIN, a copy of tools/train_net.py with
test hooks, so the production code holds no test hooks.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from _data_utils import make_image_folder
from conftest import REPO, TINY_EN_OPTS, child_env, free_port, json_stats, last_line

CFG = os.path.join(REPO, "configs", "dds_baselines", "effnet", "EN-B0_dds_8gpu.yaml")
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
TEST_NET = os.path.join(REPO, "tools", "test_net.py")

# A tiny EfficientNet on 16px images of 3 classes, with dropout, drop connect and mixup on, so
# that a resume which got the RNG streams wrong ends elsewhere
TINY = dict(
    TINY_EN_OPTS,
    **{
        "EN.DROPOUT_RATIO": "0.3",
        "EN.DC_RATIO": "0.2",
        "TRAIN.MIXUP_ALPHA": "0.2",
        "OPTIM.BASE_LR": "0.05",
        "OPTIM.MAX_EPOCH": "3",
        "DETERMINISTIC": "True",
    },
)

# Two loader workers per process: persistent workers must reseed per epoch for a resume to match
WORKERS = {"DATA_LOADER.NUM_WORKERS": "2"}

# tools/train_net.py with test hooks. PYCLS_TEST_HOOK=ACTION:EPOCH:ITER:RANK (epochs and
# iterations counted from 1, RANK a number or "all") acts once per rank (a marker file):
#   exit      os._exit(1) before the step: a crash with no error message
#   raise     a PyclsError before the step
#   pause     writes MARKER.rank<r>.paused and sleeps (for the test to kill something)
#   killsave  writes half of the epoch's checkpoint, then os._exit(137): a kill mid-save
#   none      nothing
# Each rank also saves its own model state at each checkpoint to OUT_DIR/rank<r>_last.pyth.
HOOKED_TRAIN = """
import inspect
import io
import os
import sys
import time

sys.path.insert(0, os.environ["PYCLS_REPO"])
from pycls.core.errors import PyclsError
from pycls.launch.cli import run_cli


def main():
    import torch

    import pycls.core.distributed as dist
    from pycls.core import trainer

    action, epoch, it, rank = os.environ["PYCLS_TEST_HOOK"].split(":")
    state = {"epoch": 0, "iter": 0}
    train_epoch, train_step, save = trainer.train_epoch, trainer.train_step, torch.save
    save_checkpoint = trainer.cp.save_checkpoint

    def arguments(fun, args, kwargs):
        # A hooked call's arguments by name, so the hooks outlive changes of argument order
        return inspect.signature(fun).bind(*args, **kwargs).arguments

    def marker():
        return os.environ["PYCLS_TEST_MARKER"] + ".rank{}".format(dist.get_rank())

    def armed():
        mine = rank == "all" or int(rank) == dist.get_rank()
        return mine and state["epoch"] == int(epoch) and not os.path.exists(marker())

    def hooked_epoch(*args, **kwargs):
        state["epoch"], state["iter"] = arguments(train_epoch, args, kwargs)["cur_epoch"] + 1, 0
        return train_epoch(*args, **kwargs)

    def hooked_step(*args, **kwargs):
        state["iter"] += 1
        if action in ("exit", "raise", "pause") and armed() and state["iter"] == int(it):
            open(marker(), "w").close()
            if action == "exit":
                os._exit(1)
            if action == "raise":
                raise PyclsError("injected failure on rank {}".format(dist.get_rank()))
            open(marker() + ".paused", "w").close()
            time.sleep(300)
        return train_step(*args, **kwargs)

    def hooked_save(*args, **kwargs):
        call = arguments(save, args, kwargs)
        obj, f = call["obj"], call["f"]
        if action == "killsave" and armed() and isinstance(obj, dict) and "model_state" in obj:
            buf = io.BytesIO()
            save(**dict(call, f=buf))
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            open(marker(), "w").close()
            os._exit(137)
        return save(*args, **kwargs)

    def hooked_checkpoint(*args, **kwargs):
        model = arguments(save_checkpoint, args, kwargs)["model"]
        weights = trainer.net.unwrap_model(model).state_dict()
        path = "{}/rank{}_last.pyth".format(trainer.cfg.OUT_DIR, dist.get_rank())
        save({k: v.clone() for k, v in weights.items()}, path)
        return save_checkpoint(*args, **kwargs)

    trainer.train_epoch, trainer.train_step, torch.save = hooked_epoch, hooked_step, hooked_save
    trainer.cp.save_checkpoint = hooked_checkpoint
    from pycls.launch import ranks

    ranks.run_job(trainer.train_model, sys.argv[1:], "train_net.py with test hooks")


if __name__ == "__main__":
    run_cli(main)
"""

# Runs tools/train_net.py with shutil.disk_usage reporting a full disk
FULL_DISK_TRAIN = """
import collections
import os
import runpy
import shutil
import sys

usage = collections.namedtuple("usage", "total used free")
shutil.disk_usage = lambda path: usage(10**9, 10**9 - 4096, 4096)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny image folder: 3 classes, 8 train and 4 val images each, 16x16."""
    root = tmp_path_factory.mktemp("data")
    return str(make_image_folder(str(root), ("a", "b", "c"), {"train": 8, "val": 4}, (16, 16)))


@pytest.fixture(scope="module")
def hooked(tmp_path_factory):
    """Writes HOOKED_TRAIN and returns its path."""
    path = tmp_path_factory.mktemp("hooks") / "hooked_train.py"
    path.write_text(HOOKED_TRAIN)
    return str(path)


def env_for(**extra):
    """Returns the environment of a run (conftest's child_env) with PYCLS_REPO for HOOKED_TRAIN."""
    return child_env(PYCLS_REPO=REPO, **extra)


def opts(out_dir, data, **changes):
    """Returns the CLI arguments of a tiny run: --cfg, --data_path and KEY VALUE overrides."""
    values = dict(TINY, OUT_DIR=str(out_dir), **changes)
    pairs = [x for kv in values.items() for x in kv]
    return ["--cfg", CFG, "--data_path", data, "--device", "cpu"] + pairs


def train(out_dir, data, script=TRAIN_NET, env=None, **changes):
    """Runs a 1-process training to its end; returns the CompletedProcess."""
    cmd = [sys.executable, script] + opts(out_dir, data, **changes)
    return subprocess.run(cmd, env=env or env_for(), capture_output=True, text=True)


def torchrun_cmd(script, out_dir, data, restarts=0, module="pycls.launch.ranks", **changes):
    """Returns the command of a 2-process gloo run through torchrun (or pycls's wrapper)."""
    cmd = [sys.executable, "-m", module, "--nproc_per_node=2", "--max-restarts={}".format(restarts)]
    cmd += ["--master_addr=127.0.0.1", "--master_port={}".format(free_port()), script]
    return cmd + opts(out_dir, data, **dict({"NUM_GPUS": "2"}, **changes))


def checkpoint_path(out_dir, epoch):
    """Returns the path of the checkpoint of an epoch (counted from 1)."""
    return os.path.join(str(out_dir), "checkpoints", "model_epoch_{:04d}.pyth".format(epoch))


def checkpoint(out_dir, epoch):
    """Loads the checkpoint of an epoch (counted from 1)."""
    return torch.load(checkpoint_path(out_dir, epoch), map_location="cpu", weights_only=True)


def assert_same_end(out_a, log_a, out_b, log_b, epoch=3):
    """Checks that two runs end with the same weights and the same final test stats."""
    a, b = checkpoint(out_a, epoch), checkpoint(out_b, epoch)
    assert a["model_state"].keys() == b["model_state"].keys()
    for key, value in a["model_state"].items():
        assert torch.equal(value, b["model_state"][key]), key
    test_a, test_b = json_stats(log_a, "test_epoch")[-1], json_stats(log_b, "test_epoch")[-1]
    assert test_a["epoch"] == test_b["epoch"] == "{}/{}".format(epoch, epoch)
    for key in ("top1_err", "top5_err"):
        assert test_a[key] == test_b[key]
    assert (
        json_stats(log_a, "train_epoch")[-1]["loss"] == json_stats(log_b, "train_epoch")[-1]["loss"]
    )


def wait_for(path, proc):
    """Waits until a file exists; fails if the process ends first."""
    while not os.path.exists(path):
        assert proc.poll() is None, "the run ended before {} appeared".format(path)
        time.sleep(0.02)


def resumed_from(text):
    """Returns the epoch a run says it resumed from, or None."""
    match = re.search(r"Resumed from \S*model_epoch_(\d+)\.pyth", text)
    return int(match.group(1)) if match else None


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    """An uninterrupted 3-epoch 1-process run with 2 loader workers: (out_dir, stdout)."""
    out_dir = tmp_path_factory.mktemp("uninterrupted")
    result = train(out_dir, data, **WORKERS)
    assert result.returncode == 0, result.stderr
    return out_dir, result.stdout


# ---------------------------------- kill and rerun ---------------------------------- #


def test_sigkill_and_rerun_ends_as_an_uninterrupted_run(data, uninterrupted, tmp_path):
    out_dir = tmp_path / "run"
    cmd = [sys.executable, TRAIN_NET] + opts(out_dir, data, **WORKERS)
    proc = subprocess.Popen(cmd, env=env_for(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(str(out_dir / "checkpoints" / "model_epoch_0001.pyth"), proc)
    proc.send_signal(signal.SIGKILL)  # in epoch 2 (or later): its work since is lost
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    done = max(int(f[12:16]) for f in os.listdir(out_dir / "checkpoints") if f[12:16].isdigit())
    result = train(out_dir, data, **WORKERS)
    assert result.returncode == 0, result.stderr
    assert resumed_from(result.stdout) == done < 3
    assert_same_end(*uninterrupted, out_dir, result.stdout)


def test_kill_while_saving_resumes_from_the_last_complete_checkpoint(
    data, hooked, uninterrupted, tmp_path
):
    out_dir = tmp_path / "run"
    marker = str(tmp_path / "hook")
    hook_env = env_for(PYCLS_TEST_HOOK="killsave:2:0:0", PYCLS_TEST_MARKER=marker)
    killed = train(out_dir, data, script=hooked, env=hook_env, **WORKERS)
    assert killed.returncode == 137 and os.path.exists(marker + ".rank0")
    names = sorted(os.listdir(out_dir / "checkpoints"))
    assert [n for n in names if not n.startswith(".tmp_")] == [
        "model_best.pyth",
        "model_epoch_0001.pyth",
    ]
    assert any(n.startswith(".tmp_model_epoch_0002.pyth") for n in names)  # the partial file
    result = train(out_dir, data, script=hooked, env=hook_env, **WORKERS)
    assert result.returncode == 0, result.stderr
    assert resumed_from(result.stdout) == 1 and "Skipping unreadable" not in result.stdout
    assert_same_end(*uninterrupted, out_dir, result.stdout)


@pytest.mark.slow
def test_kills_at_any_moment_lose_at_most_the_current_epoch(data, tmp_path):
    reference_dir = tmp_path / "reference"
    start = time.monotonic()
    reference = train(reference_dir, data, **{"OPTIM.MAX_EPOCH": "4"})
    duration = time.monotonic() - start
    assert reference.returncode == 0, reference.stderr
    out_dir = tmp_path / "run"
    cmd = [sys.executable, TRAIN_NET] + opts(out_dir, data, **{"OPTIM.MAX_EPOCH": "4"})
    done, log = 0, open(tmp_path / "runs.log", "w+")
    for fraction in (0.3, 0.5, 0.65, 0.8, 0.9, 0.95):  # from start-up to saving
        proc = subprocess.Popen(cmd, env=env_for(), stdout=log, stderr=subprocess.DEVNULL)
        time.sleep(duration * fraction)
        proc.kill()
        proc.wait()
        now = cp_epochs(out_dir)
        assert now >= done  # a kill never costs a finished epoch
        done = now
    result = subprocess.run(cmd, env=env_for(), stdout=log, stderr=subprocess.PIPE, text=True)
    assert result.returncode == 0, result.stderr
    log.seek(0)
    assert_same_end(reference_dir, reference.stdout, out_dir, log.read(), epoch=4)


def cp_epochs(out_dir):
    """Returns the newest epoch with a loadable checkpoint (0 without one)."""
    folder = os.path.join(str(out_dir), "checkpoints")
    names = os.listdir(folder) if os.path.isdir(folder) else []
    epochs = sorted((int(n[12:16]) for n in names if re.match(r"model_epoch_\d{4}\.pyth$", n)))
    for epoch in reversed(epochs):
        try:
            checkpoint(out_dir, epoch)
        except Exception:
            continue
        return epoch
    return 0


# ---------------------------------- multi-process ----------------------------------- #


@pytest.fixture(scope="module")
def uninterrupted_2p(data, hooked, tmp_path_factory):
    """An uninterrupted 3-epoch run of 2 gloo processes: (out_dir, stdout)."""
    out_dir = tmp_path_factory.mktemp("uninterrupted_2p")
    cmd = torchrun_cmd(hooked, out_dir, data)
    hook_env = env_for(PYCLS_TEST_HOOK="none:0:0:0", PYCLS_TEST_MARKER=str(out_dir / "hook"))
    result = subprocess.run(cmd, env=hook_env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return out_dir, result.stdout


def assert_same_ranks(out_a, out_b):
    """Checks that every rank of two 2-process runs ends with the same state, all ranks alike."""
    states = [
        [
            torch.load(os.path.join(str(out), "rank{}_last.pyth".format(r)), weights_only=True)
            for r in range(2)
        ]
        for out in (out_a, out_b)
    ]
    for run in states:
        for key, value in run[0].items():
            assert torch.equal(value, run[1][key]), key  # buffers too: no rank-local state
    for key, value in states[0][1].items():
        assert torch.equal(value, states[1][1][key]), key


def _children(pid):
    """Returns the pids of a process's children (Linux /proc)."""
    kids = []
    for entry in os.listdir("/proc"):
        try:
            with open("/proc/{}/stat".format(entry)) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


def _alive(pid):
    """Tells whether a process exists and is not a zombie."""
    try:
        with open("/proc/{}/stat".format(pid)) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_of_torchrun_stops_its_ranks_and_rerun_matches(
    data, hooked, uninterrupted_2p, tmp_path
):
    out_dir, marker = tmp_path / "run", str(tmp_path / "hook")
    hook_env = env_for(PYCLS_TEST_HOOK="pause:2:2:all", PYCLS_TEST_MARKER=marker)
    cmd = torchrun_cmd(hooked, out_dir, data, module="torch.distributed.run")
    log = open(tmp_path / "killed.log", "w+")
    proc = subprocess.Popen(cmd, env=hook_env, stdout=log, stderr=subprocess.STDOUT)
    for rank in range(2):  # both ranks sit in epoch 2 with checkpoint 1 written
        wait_for(marker + ".rank{}.paused".format(rank), proc)
    ranks = _children(proc.pid)
    assert len(ranks) == 2
    proc.send_signal(signal.SIGKILL)  # the launcher only: its ranks are orphaned
    proc.wait()
    while any(_alive(pid) for pid in ranks):
        time.sleep(0.1)
    log.seek(0)
    text = log.read()
    assert (
        text.count("its launcher (pid {}) has died, so this rank stops too".format(proc.pid)) == 2
    )
    assert sorted(os.listdir(out_dir / "checkpoints")) == [
        "model_best.pyth",
        "model_epoch_0001.pyth",
    ]
    cmd = torchrun_cmd(hooked, out_dir, data)
    result = subprocess.run(cmd, env=hook_env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert resumed_from(result.stdout) == 1
    assert_same_end(*uninterrupted_2p, out_dir, result.stdout)
    assert_same_ranks(uninterrupted_2p[0], out_dir)


@pytest.mark.slow
def test_crashed_rank_restarts_the_job_from_the_checkpoint(
    data, hooked, uninterrupted_2p, tmp_path
):
    out_dir, marker = tmp_path / "run", str(tmp_path / "hook")
    hook_env = env_for(PYCLS_TEST_HOOK="exit:2:2:1", PYCLS_TEST_MARKER=marker)
    cmd = torchrun_cmd(hooked, out_dir, data, restarts=1, module="torch.distributed.run")
    result = subprocess.run(cmd, env=hook_env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert os.path.exists(marker + ".rank1")  # rank 1 did crash in epoch 2
    assert "torchrun restarted the job after a failure (restart 1 of 1)" in result.stdout
    assert resumed_from(result.stdout) == 1
    assert_same_end(*uninterrupted_2p, out_dir, result.stdout)
    assert_same_ranks(uninterrupted_2p[0], out_dir)


@pytest.mark.parametrize("module", ["pycls.launch.ranks", "torch.distributed.run"])
def test_failed_rank_ends_the_job_with_its_error(data, hooked, module, tmp_path):
    marker = str(tmp_path / "hook")
    hook_env = env_for(PYCLS_TEST_HOOK="raise:1:3:1", PYCLS_TEST_MARKER=marker)
    cmd = torchrun_cmd(hooked, tmp_path / "run", data, module=module)
    result = subprocess.run(cmd, env=hook_env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "error: injected failure on rank 1" in result.stderr.splitlines()
    if module == "pycls.launch.ranks":  # one last line naming the rank and its error
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert re.fullmatch(
            r"error: rank 1 \(pid \d+\) failed: injected failure on rank 1; the job stopped",
            last_line(result.stderr),
        )


def test_crashed_rank_without_restarts_is_named(data, hooked, tmp_path):
    marker = str(tmp_path / "hook")
    hook_env = env_for(PYCLS_TEST_HOOK="exit:1:3:1", PYCLS_TEST_MARKER=marker)
    cmd = torchrun_cmd(hooked, tmp_path / "run", data)
    result = subprocess.run(cmd, env=hook_env, capture_output=True, text=True)
    assert result.returncode == 1
    assert re.fullmatch(
        r"error: rank 1 \(pid \d+\) exited with code 1 and no error message; see its output "
        r"above; the job stopped",
        last_line(result.stderr),
    )
    assert "Traceback" not in result.stderr


# ------------------------------------ non-finite ------------------------------------ #


def test_nan_loss_stops_naming_epoch_and_iter_without_a_checkpoint(data, uninterrupted, tmp_path):
    out_dir = tmp_path / "run"
    os.makedirs(out_dir / "checkpoints")
    shutil.copy(checkpoint_path(uninterrupted[0], 1), out_dir / "checkpoints")
    before = checkpoint(out_dir, 1)
    result = train(out_dir, data, **{"OPTIM.BASE_LR": "1e6"})
    assert result.returncode == 2
    assert resumed_from(result.stdout) == 1
    assert re.fullmatch(
        r"error: loss is (nan|inf) at epoch 2 iter \d+, so this epoch gets no checkpoint; "
        r"lower OPTIM\.BASE_LR, .*",
        result.stderr.strip(),
    )
    assert os.listdir(out_dir / "checkpoints") == ["model_epoch_0001.pyth"]
    after = checkpoint(out_dir, 1)
    assert all(torch.equal(v, after["model_state"][k]) for k, v in before["model_state"].items())


@pytest.mark.slow
def test_nan_loss_stops_every_rank_at_the_same_iteration(data, tmp_path):
    out_dir = tmp_path / "run"
    cmd = torchrun_cmd(TRAIN_NET, out_dir, data, **{"OPTIM.BASE_LR": "1e6"})
    result = subprocess.run(cmd, env=env_for(), capture_output=True, text=True)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: loss is")]
    assert len(errors) == 2 and errors[0] == errors[1]  # both ranks, the same place
    assert re.fullmatch(r"error: rank \d \(pid \d+\) failed: loss is .*", last_line(result.stderr))
    assert not os.path.exists(out_dir / "checkpoints" / "model_epoch_0001.pyth")


# ------------------------------------ checkpoints ----------------------------------- #


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(data, tmp_path):
    out_dir = tmp_path / "run"
    first = train(out_dir, data)
    assert first.returncode == 0, first.stderr
    newest = out_dir / "checkpoints" / "model_epoch_0003.pyth"
    content = newest.read_bytes()
    newest.write_bytes(content[: len(content) // 3])
    result = train(out_dir, data)
    assert result.returncode == 0, result.stderr
    log = result.stdout
    assert re.search(
        r"Skipping unreadable checkpoint: checkpoint \S*model_epoch_0003\.pyth is trun", log
    )
    assert re.search(r"Resuming from \S*model_epoch_0002\.pyth instead of the unreadable", log)
    assert resumed_from(log) == 2
    assert [row["epoch"] for row in json_stats(log, "train_epoch")] == ["3/3"]
    assert checkpoint(out_dir, 3)["epoch"] == 2  # rewritten, whole
    assert_same_end(out_dir, first.stdout, out_dir, log)


def test_checkpoint_of_another_architecture_lists_the_keys(data, uninterrupted, tmp_path):
    weights = checkpoint_path(uninterrupted[0], 1)
    args = opts(
        tmp_path / "eval", data, **{"EN.DEPTHS": "[1,2,1,1,1,1,1]", "TEST.WEIGHTS": weights}
    )
    result = subprocess.run([sys.executable, TEST_NET] + args, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip()
    assert "\n" not in line
    assert line.startswith("error: checkpoint {} does not fit the model".format(weights))
    assert "missing keys: s2.b2." in line and "check --cfg / MODEL settings" in line


@pytest.mark.parametrize("how", ["under_a_file", "read_only"])
def test_unwritable_out_dir_is_found_before_training(data, tmp_path, how):
    if how == "under_a_file":
        blocker = tmp_path / "file.txt"
        blocker.write_text("a user's file")
        out_dir = blocker / "sub"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        os.chmod(tmp_path, 0o500)
        out_dir = tmp_path / "sub"
    try:
        result = train(out_dir, data)
    finally:
        os.chmod(tmp_path, 0o700)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert re.fullmatch(
        r"error: output folder \S+ is not writable \(.+\); set OUT_DIR to a folder you can write",
        result.stderr.strip(),
    )
    assert "train_iter" not in result.stdout and "train_epoch" not in result.stdout
    if how == "under_a_file":
        assert blocker.read_text() == "a user's file"


def test_full_disk_is_found_before_training(data, tmp_path):
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK_TRAIN)
    cmd = [sys.executable, str(script), TRAIN_NET] + opts(tmp_path / "run", data)
    result = subprocess.run(cmd, env=env_for(), capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert re.fullmatch(
        r"error: only 0 MiB free in \S+, checkpoints need about \d+ MiB; free space or set "
        r"OUT_DIR to a folder you can write",
        result.stderr.strip(),
    )
    assert "train_iter" not in result.stdout


# ------------------------------------- security ------------------------------------- #


def _torch_load_calls(path):
    """Returns the torch.load(...) calls of a Python file as (line number, call text)."""
    with open(path) as f:
        text = f.read()
    calls = []
    for match in re.finditer(r"\btorch\.load\(", text):
        depth, end = 0, match.end() - 1
        for end in range(match.end() - 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                break
        calls.append((text.count("\n", 0, match.start()) + 1, text[match.start() : end + 1]))
    return calls


def test_every_torch_load_is_weights_only():
    found = []
    for top in ("pycls", "tools"):
        for root, _, files in os.walk(os.path.join(REPO, top)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(root, name)
                    found += [(path, n, call) for n, call in _torch_load_calls(path)]
    assert found  # the checkpoint loader at least
    unsafe = [(p, n) for p, n, call in found if not re.search(r"weights_only\s*=\s*True", call)]
    assert unsafe == []


def _snapshot(root):
    """Returns {path: (size, mtime)} of the files under a folder (bytecode caches left out)."""
    files = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in names:
            if not name.endswith(".pyc"):
                path = os.path.join(folder, name)
                st = os.stat(path)
                files[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
    return files


def _copy_repo(dest):
    """Copies the code, configs and launchers of the repo to dest (a private tree to watch)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "output")
    for part in ("pycls", "tools", "configs", "test"):
        shutil.copytree(os.path.join(REPO, part), os.path.join(dest, part), ignore=ignore)
    return dest


def test_a_run_writes_only_into_out_dir(data, tmp_path):
    repo = _copy_repo(str(tmp_path / "repo"))
    out_dir = tmp_path / "out"
    before = _snapshot(repo)
    # import torchvision makes torch's compile cache folder, by default $TMPDIR/torchinductor_<user>
    # (torch's, not the run's): it goes elsewhere, as it did when this process's own imports had
    # set TORCHINDUCTOR_CACHE_DIR for the run to inherit
    cache = str(tmp_path / "torch_cache")
    env = env_for(PYTHONPATH=repo, TMPDIR=str(tmp_path / "tmp"), TORCHINDUCTOR_CACHE_DIR=cache)
    os.makedirs(env["TMPDIR"])
    cmd = [sys.executable, os.path.join(repo, "tools", "train_net.py")]
    cmd += opts(out_dir, data, **{"OPTIM.MAX_EPOCH": "1"})
    result = subprocess.run(cmd, env=env, cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert _snapshot(repo) == before
    assert os.listdir(env["TMPDIR"]) == []
    assert sorted(os.listdir(out_dir)) == ["checkpoints", "config.yaml"]


def test_launcher_quotes_paths_and_never_runs_input(data, tmp_path):
    repo = _copy_repo(str(tmp_path / "re po"))  # a space in every path of the launcher
    pwned = tmp_path / "pwned"
    odd = tmp_path / "my data $(touch {}) `touch {}`".format(pwned, pwned)
    shutil.copytree(data, str(odd))
    before = _snapshot(repo)
    args = ["--data_path={}".format(odd), "--device=cpu", "--cfg={}".format(CFG)]
    args += [x for kv in TINY.items() for x in kv] + ["OPTIM.MAX_EPOCH", "1"]
    args += ["DESC", "$(touch {}); `touch {}`".format(pwned, pwned)]
    env = env_for(PYTHON=sys.executable, ASCEND_DEVICE_ID="0")
    cmd = ["bash", os.path.join(repo, "test", "train_full_1p.sh")] + args
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert not pwned.exists()
    assert "Final result" in result.stdout or "FPS" in result.stdout
    changed = {p for p, v in _snapshot(repo).items() if before.get(p) != v}
    assert changed and all(p.startswith(os.path.join("test", "output") + os.sep) for p in changed)
    bad = "/tmp/x $(touch {})/missing".format(pwned)
    result = subprocess.run(
        ["bash", os.path.join(repo, "test", "train_full_1p.sh"), "--data_path=" + bad],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and not pwned.exists()
    assert "error: data path {} does not exist".format(bad) in result.stdout + result.stderr
