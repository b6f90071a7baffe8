"""What the tests share: the config reset around every test, the repo's paths, a free port,
loading a tool as a module, reading a run's output, the digits demo data and a tiny EfficientNet.

Test files import the helpers (`from conftest import REPO, free_port, ...`); data-making helpers
live in _data_utils.py.
"""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The environment a launcher or torchrun sets for its ranks, and the node facts a user sets for
# a launcher; tests remove it from their children (tests/test_slurm.py removes SLURM's itself)
LAUNCH_VARS = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "RANK_SIZE", "MASTER_ADDR", "MASTER_PORT"]
LAUNCH_VARS += ["NNODES", "NODE_RANK", "MAX_RESTARTS", "RDZV_TIMEOUT"]

# KEY VALUE changes that make a dds EN config a tiny EfficientNet on 16px images of 3 classes.
# Precise BN (on by default, as pycls) is off: it adds a forward pass over the train set to each
# epoch, and these runs test other things (test_net.py and test_train_e2e.py test it).
TINY_EN_OPTS = {
    "BN.USE_PRECISE_STATS": "False",
    "MODEL.NUM_CLASSES": "3",
    "EN.STEM_W": "8",
    "EN.DEPTHS": "[1,1,1,1,1,1,1]",
    "EN.WIDTHS": "[8,8,16,16,24,24,32]",
    "EN.HEAD_W": "64",
    "TRAIN.IM_SIZE": "16",
    "TEST.IM_SIZE": "16",
    "TRAIN.BATCH_SIZE": "4",
    "TEST.BATCH_SIZE": "6",
    "OPTIM.MAX_EPOCH": "1",
    "DATA_LOADER.NUM_WORKERS": "0",
    "LOG_PERIOD": "2",
    "VERBOSE": "False",
    "NUM_GPUS": "1",  # the dds configs say 8: a CLI started alone would start 8 ranks
}

# A small EfficientNet (the real EffNet code, fewer and narrower blocks) for fast CPU runs.
# Precise BN is off for speed as in TINY_EN_OPTS; test_train_e2e.py's run turns it on.
TINY_EN = """\
BN:
  USE_PRECISE_STATS: false
MODEL:
  TYPE: effnet
  NUM_CLASSES: 10
  ACTIVATION_FUN: silu
EN:
  STEM_W: 8
  STRIDES: [1, 2, 2, 2, 1, 2, 1]
  DEPTHS: [1, 1, 1, 2, 1, 1, 1]
  WIDTHS: [8, 8, 16, 16, 24, 24, 32]
  EXP_RATIOS: [1, 4, 4, 4, 4, 4, 4]
  KERNELS: [3, 3, 5, 3, 5, 5, 3]
  HEAD_W: 64
OPTIM:
  BASE_LR: 0.2
  MAX_EPOCH: 2
  WEIGHT_DECAY: 5e-5
TRAIN:
  DATASET: imagenet
  IM_SIZE: 16
  BATCH_SIZE: 64
  PCA_STD: 0.0
TEST:
  DATASET: imagenet
  IM_SIZE: 16
  BATCH_SIZE: 100
DATA_LOADER:
  NUM_WORKERS: 0
DEVICE: cpu
LOG_PERIOD: 5
VERBOSE: false
"""


def output_id(base):
    """A launcher output id (the launchers write test/output/<id>/) of one test file, and of this
    pytest-xdist worker: tests of one file run on both workers at once, each removing its own."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:]
    return str(int(base) + 10000 * int(worker))


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """The digits demo data set at 16x16, written once per test session."""
    out = tmp_path_factory.mktemp("digits") / "data"
    tool = os.path.join(REPO, "tools", "make_demo_data.py")
    subprocess.run([sys.executable, tool, str(out), "--size", "16"], check=True)
    return str(out)


@pytest.fixture(scope="session")
def small_data(demo_data, tmp_path_factory):
    """The first 20 train and 6 val digits of each class of demo_data (260 images): for runs
    that test what a run does, not what it learns (a run on them is mostly start-up)."""
    out = tmp_path_factory.mktemp("small_digits") / "data"
    for split, count in (("train", 20), ("val", 6)):
        for name in sorted(os.listdir(os.path.join(demo_data, split))):
            src, dst = os.path.join(demo_data, split, name), out / split / name
            dst.mkdir(parents=True)
            for image in sorted(os.listdir(src))[:count]:
                shutil.copy(os.path.join(src, image), dst / image)
    return str(out)


@pytest.fixture(scope="session", autouse=True)
def one_thread_children():
    """Gives every child process one intra-op thread (this process keeps its own, set when it
    imported torch). Tests start several processes at once on few cores, and with a thread
    per core each, torch's spinning threads slowed a tiny run's epoch 10-fold."""
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    if before is None:
        del os.environ["OMP_NUM_THREADS"]
    else:
        os.environ["OMP_NUM_THREADS"] = before


@pytest.fixture(scope="session")
def tiny_cfg(tmp_path_factory):
    """A YAML config of a tiny EfficientNet on the demo data."""
    path = tmp_path_factory.mktemp("cfg") / "tiny_en.yaml"
    path.write_text(TINY_EN)
    return str(path)


@pytest.fixture(autouse=True)
def clean_cfg():
    """Gives every test the default config and leaves it behind (the one config reset)."""
    from pycls.core import config

    config.reset_cfg()
    yield
    config.reset_cfg()


@pytest.fixture
def fresh_cfg(clean_cfg, tmp_path):
    """The default config with OUT_DIR in the test's tmp_path."""
    from pycls.core import config

    config.cfg.OUT_DIR = str(tmp_path)


def run_tool(tool, *args, env=None, cwd=REPO):
    """Runs tools/<tool>.py with args; returns the CompletedProcess (output captured)."""
    cmd = [sys.executable, os.path.join(REPO, "tools", tool + ".py")] + [str(a) for a in args]
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=cwd)


def child_env(**extra):
    """Returns the environment of a child run: no launcher variables, one thread, the repo
    importable, then extra."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def free_port():
    """Returns a TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load_tool(name):
    """Imports tools/<name>.py as a module (tools are scripts, not a package)."""
    path = os.path.join(REPO, "tools", name + ".py")
    spec = importlib.util.spec_from_file_location("tool_" + name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def last_line(text):
    """Returns the last non-empty line of a text ("" if none)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def json_stats(text, data_type):
    """Returns the json_stats dicts of one _type in a log text (or caplog.messages joined),
    oldest first. Lines cut off by a killed process (or mixed with another) are left out."""
    prefix = "json_stats: "
    found = []
    for line in text.splitlines():
        if prefix not in line:
            continue
        try:
            stats = json.loads(line.split(prefix, 1)[1])  # NaN and Infinity included
        except ValueError:
            continue
        if isinstance(stats, dict) and stats.get("_type") == data_type:
            found.append(stats)
    return found
