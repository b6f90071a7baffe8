"""Bad inputs through the real CLIs and launchers: each ends in one error line and an exit code.

Every row runs a real command (tools/*.py, test/*.sh, torchrun) as a subprocess and checks its
exit code, that its last line of error output matches the row's pattern, and that no Python
traceback was printed. The rows run a few at a time in the background; rows that train, start
several processes or repeat a kind of error already shown are marked slow.

    python tests/test_bad_inputs.py > table.md   # runs every row, prints the Markdown table
"""

import collections
import concurrent.futures
import datetime
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest
import torch
from _data_utils import make_image_folder, write_bad_file, write_huge_header_image
from _zygote import Zygote, runs_here
from conftest import LAUNCH_VARS, REPO, TINY_EN_OPTS, free_port, last_line, output_id

import pycls.core.builders as builders
from pycls.core import config
from pycls.core.config import cfg

CFG = os.path.join(REPO, "configs", "dds_baselines", "effnet", "EN-B0_dds_8gpu.yaml")

# Launcher runs write under test/output/<this id>/ (kept apart from other runs, removed after)
DEVICE_ID = output_id(93)

# A tiny EfficientNet on 16px images of 3 classes
TINY = TINY_EN_OPTS

# Rows run at once in the background
PARALLEL = 3

# One bad input: what the user did, the command (a function of the workspace), the expected
# last error line (a regex, matched in full) and exit code. stream "stderr" checks stderr;
# "output" checks stdout and stderr merged (the launchers tee Python's errors to stdout).
# Rows that train or start several processes are marked slow.
Row = collections.namedtuple("Row", "id what cmd error code stream needs slow")


def row(id, what, cmd, error, code=2, stream="stderr", needs=None, slow=False):
    """Builds a Row (needs: a function of the workspace giving a skip reason, or None)."""
    return Row(id, what, cmd, error, code, stream, needs, slow)


def tool(name, *args, env=None):
    """Returns a command builder for tools/<name>.py with arguments (functions of ws allowed)."""

    def build(ws):
        argv = [sys.executable, os.path.join(REPO, "tools", name + ".py")]
        return argv + [a(ws) if callable(a) else a for a in args], env

    return build


def train(*args, data="data", env=None, name="train_net"):
    """Returns a command builder of a tiny training (or name's) run with extra arguments."""

    def build(ws):
        extra = [a(ws) if callable(a) else a for a in args]
        flags = [a for i, a in enumerate(extra) if a.startswith("--") or _is_value(extra, i)]
        device = [] if "--device" in flags else ["--device", "cpu"]
        base = ["--cfg", CFG, "--data_path", ws[data]] + device + flags
        pairs = [x for kv in dict(TINY, OUT_DIR=ws.out()).items() for x in kv]
        argv = [sys.executable, os.path.join(REPO, "tools", name + ".py")]
        return argv + base + pairs + [a for a in extra if a not in flags], env

    return build


def _is_value(args, i):
    """Tells whether args[i] is the value of a --flag."""
    return i > 0 and args[i - 1].startswith("--")


def launcher(script, *args, env=None):
    """Returns a command builder of bash test/<script> with arguments."""

    def build(ws):
        argv = ["bash", os.path.join(REPO, "test", script)]
        extra = {"PYTHON": sys.executable, "ASCEND_DEVICE_ID": DEVICE_ID}
        extra["MASTER_PORT"] = str(free_port())
        return argv + [a(ws) if callable(a) else a for a in args], dict(extra, **(env or {}))

    return build


# A two-node SLURM step as srun sets it for the task on node 1
SLURM_STEP = {
    "SLURM_JOB_ID": "4242",
    "SLURM_NNODES": "2",
    "SLURM_NODEID": "1",
    "SLURM_JOB_NODELIST": "node[07-08]",
    "SLURM_STEP_NUM_NODES": "2",
    "SLURM_STEP_NUM_TASKS": "2",
    "SLURM_STEP_NODELIST": "node[07-08]",
}


def slurm_launcher(changes, slurm=True):
    """Returns a command builder of test/train_full_8p.sh in SLURM_STEP (or outside SLURM) with
    changes to the environment (None removes a variable)."""

    def build(ws):
        argv, env = launcher("train_full_8p.sh", "--data_path=" + ws["data"], "--device=cpu")(ws)
        env.update(SLURM_STEP if slurm else {})
        env.update({k: v for k, v in changes.items() if v is not None})
        # an empty value counts as unset (run_row can only add to its environment)
        env.update({k: "" for k, v in changes.items() if v is None})
        return argv, env

    return build


def wrapped_torchrun(*args, nproc=2):
    """Returns a command builder of `python -m pycls.launch.ranks` (torchrun, one line)."""

    def build(ws):
        argv = [sys.executable, "-m", "pycls.launch.ranks", "--nproc_per_node={}".format(nproc)]
        argv += ["--master_addr=127.0.0.1", "--master_port={}".format(free_port())]
        train_argv, _ = train(*args, "NUM_GPUS", str(nproc))(ws)
        return argv + train_argv[1:], None

    return build


def old_stack(name, *args, torch_version="2.0.1"):
    """Returns a command builder of tools/<name>.py run as if torch were torch_version."""

    def build(ws):
        runner = ws.path("fake_torch_version.py")
        with open(runner, "w") as f:
            f.write(
                "import runpy, sys, torch\ntorch.__version__ = {!r}\nsys.argv = sys.argv[1:]\n"
                "runpy.run_path(sys.argv[0], run_name='__main__')\n".format(torch_version)
            )
        script = os.path.join(REPO, "tools", name + ".py")
        return [sys.executable, runner, script] + [a(ws) if callable(a) else a for a in args], None

    return build


def tiny_pairs(**changes):
    """Returns TINY's KEY VALUE pairs with changes, as a flat list."""
    return [x for kv in dict(TINY, **changes).items() for x in kv]


def no_cuda(ws):
    """Skips where CUDA works (the row expects it missing)."""
    return "CUDA is available here" if torch.cuda.is_available() else None


def no_torch_npu(ws):
    """Skips where torch_npu imports (the row expects it missing)."""
    try:
        import torch_npu  # noqa: F401
    except ImportError:
        return None
    return "torch_npu is installed here"


P = r"\S+"  # a path without spaces
ROWS = [
    # ------------------------------ config files and keys ------------------------------ #
    row(
        "cfg_missing",
        "`--cfg` names a file that does not exist",
        tool("train_net", "--cfg", lambda ws: ws.path("none.yaml")),
        r"error: config file {} does not exist; check --cfg".format(P),
    ),
    row(
        "cfg_py",
        "`--cfg` names a Python file (never run)",
        tool("train_net", "--cfg", lambda ws: ws["evil_py"]),
        r"error: config {} is not a \.yaml file; only YAML configs load".format(P),
    ),
    row(
        "cfg_bad_yaml",
        "the config file is not valid YAML",
        tool("train_net", "--cfg", lambda ws: ws["bad_yaml"]),
        r"error: config {} is not valid YAML at line \d+; fix its syntax".format(P),
    ),
    row(
        "cfg_unknown_key_in_file",
        "the config file has a misspelt key",
        tool("train_net", "--cfg", lambda ws: ws["typo_yaml"]),
        r"error: unknown config key OPTIM\.BASE_LRR in {}: did you mean OPTIM\.BASE_LR\?".format(P),
        slow=True,
    ),
    row(
        "override_unknown_key",
        "an override key that does not exist: `TRAIN.BATCHSIZE 4`",
        train("TRAIN.BATCHSIZE", "4"),
        r"error: unknown config key TRAIN\.BATCHSIZE in the command line: "
        r"did you mean TRAIN\.BATCH_SIZE\?",
    ),
    row(
        "override_bad_type",
        "an override of the wrong type: `TRAIN.BATCH_SIZE abc`",
        train("TRAIN.BATCH_SIZE", "abc"),
        r"error: config key TRAIN\.BATCH_SIZE in the command line takes a int \(like 128\), "
        r"not 'abc'",
    ),
    row(
        "override_odd",
        "an override key without a value",
        tool("train_net", "--cfg", CFG, "OPTIM.BASE_LR"),
        r"error: config overrides must be KEY VALUE pairs; got \['OPTIM\.BASE_LR'\]",
        slow=True,
    ),
    row(
        "bad_choice",
        "a value outside a key's choices: `OPTIM.LR_POLICY linear`",
        train("OPTIM.LR_POLICY", "linear"),
        r"error: config key OPTIM\.LR_POLICY is 'linear'; choose one of cos, exp, lin, steps",
    ),
    row(
        "zero_epochs",
        "`OPTIM.MAX_EPOCH 0`",
        train("OPTIM.MAX_EPOCH", "0"),
        r"error: config key OPTIM\.MAX_EPOCH is 0; it must be above 0",
        slow=True,
    ),
    row(
        "bad_loss_scale",
        "`AMP.LOSS_SCALE -1`",
        train("AMP.LOSS_SCALE", "-1"),
        r"error: config key AMP\.LOSS_SCALE is '-1'; give a number above 0 or dynamic",
        slow=True,
    ),
    row(
        "negative_workers",
        "`DATA_LOADER.NUM_WORKERS -1`",
        train("DATA_LOADER.NUM_WORKERS", "-1"),
        r"error: config key DATA_LOADER\.NUM_WORKERS is -1; it must be 0 or more",
        slow=True,
    ),
    row(
        "negative_seed",
        "`RNG_SEED -1`",
        train("RNG_SEED", "-1"),
        r"error: config key RNG_SEED is -1; it must be in \[0, 2147483647\]",
    ),
    row(
        "unknown_model",
        "`MODEL.TYPE vit` (not a pycls model)",
        train("MODEL.TYPE", "vit"),
        r"error: MODEL\.TYPE 'vit' is not a known model; choose one of .*effnet.*",
    ),
    row(
        "unknown_dataset",
        "`TRAIN.DATASET cifar`",
        train("TRAIN.DATASET", "cifar"),
        r"error: TRAIN\.DATASET is 'cifar'; choose one of imagenet, synthetic",
        slow=True,
    ),
    # ------------------------------------ data ----------------------------------------- #
    row(
        "data_missing",
        "`--data_path` does not exist",
        train(data="missing"),
        r"error: data path {} does not exist; pass --data_path DIR .*".format(P),
    ),
    row(
        "data_is_a_file",
        "`--data_path` is a file",
        train(data="a_file"),
        r"error: data path {} is not a folder; pass --data_path DIR .*".format(P),
        slow=True,
    ),
    row(
        "data_no_train",
        "the data folder has no `train/`",
        train(data="no_train"),
        r"error: data path {} has no train/ folder; put the train images in .*".format(P),
    ),
    row(
        "data_no_classes",
        "`train/` has no class folders",
        train(data="no_classes"),
        r"error: {} has no class folders; put the images in .*".format(P),
        slow=True,
    ),
    row(
        "data_no_images",
        "the class folders hold no images",
        train(data="no_images"),
        r"error: {} holds no images \(jpg, jpeg, png, bmp, webp\); put them in .*".format(P),
    ),
    row(
        "data_classes_differ",
        "`train/` and `val/` have other classes",
        train(data="classes_differ"),
        r"error: the classes of {} and {} differ \(only in train: c\); give both splits the same "
        r"class folders".format(P, P),
    ),
    row(
        "too_few_classes",
        "`MODEL.NUM_CLASSES` below the data's classes",
        train("MODEL.NUM_CLASSES", "2"),
        r"error: {} has 3 classes but MODEL\.NUM_CLASSES is 2; set MODEL\.NUM_CLASSES 3".format(P),
    ),
    row(
        "images_unreadable",
        "more of an epoch's images are corrupt than `DATA_LOADER.MAX_BAD_FRACTION` allows",
        train(data="bad_images"),
        r"error: \d+ of the 24 images of this epoch in {} are unreadable \(\d+\.\d+%\), more than "
        r"DATA_LOADER\.MAX_BAD_FRACTION 0\.01; fix or remove the files named in the warnings, or "
        r"raise DATA_LOADER\.MAX_BAD_FRACTION".format(P),
        slow=True,
    ),
    row(
        "batch_larger_than_data",
        "`TRAIN.BATCH_SIZE` larger than the train set",
        train("TRAIN.BATCH_SIZE", "64"),
        r"error: TRAIN\.BATCH_SIZE 64 gives batches of 64 per process, more than the 24 images it "
        r"gets; lower TRAIN\.BATCH_SIZE",
    ),
    row(
        "loss_not_finite",
        "a learning rate that makes the loss diverge: `OPTIM.BASE_LR 1e6`",
        train("OPTIM.BASE_LR", "1e6"),
        r"error: loss is (nan|inf) at epoch 1 iter \d+, so this epoch gets no checkpoint; lower "
        r"OPTIM\.BASE_LR, add OPTIM\.WARMUP_EPOCHS or set OPTIM\.GRAD_CLIP, then rerun to resume "
        r"from the last one",
        slow=True,
    ),
    # ------------------------------- output and devices -------------------------------- #
    row(
        "out_dir_unwritable",
        "`OUT_DIR` below a file (not writable)",
        train("OUT_DIR", lambda ws: os.path.join(ws["a_file"], "out")),
        r"error: output folder {} is not writable \(Not a directory\); set OUT_DIR to a folder "
        r"you can write".format(P),
    ),
    row(
        "device_gpu_missing",
        "`--device gpu` without CUDA",
        train("--device", "gpu"),
        r"error: --device gpu but CUDA is not available \(torch .*\): install a CUDA build of "
        r"torch and check nvidia-smi, or use --device cpu\|npu",
        needs=no_cuda,
    ),
    row(
        "device_npu_missing",
        "`--device npu` without torch_npu",
        train("--device", "npu"),
        r"error: torch_npu is not installed: install the torch_npu wheel matching your torch and "
        r"CANN \(see README\), or use --device cpu\|gpu",
        needs=no_torch_npu,
    ),
    row(
        "device_unknown",
        "`--device tpu`",
        train("--device", "tpu"),
        r"train_net\.py: error: argument --device: invalid choice: 'tpu' \(choose from .*\)",
    ),
    row(
        "device_key_unknown",
        "`DEVICE tpu` as an override",
        train("DEVICE", "tpu"),
        r"error: config key DEVICE is 'tpu'; choose one of auto, cpu, gpu, npu",
        slow=True,
    ),
    # --------------------------------- checkpoints ------------------------------------- #
    row(
        "test_no_weights",
        "tools/test_net.py without `TEST.WEIGHTS`",
        train(name="test_net"),
        r"error: no weights to test: pass TEST\.WEIGHTS /path/to/model\.pyth",
        slow=True,
    ),
    row(
        "test_weights_missing",
        "`TEST.WEIGHTS` does not exist",
        train("TEST.WEIGHTS", lambda ws: ws.path("none.pyth"), name="test_net"),
        r"error: checkpoint {} does not exist; check the path".format(P),
    ),
    row(
        "test_weights_truncated",
        "`TEST.WEIGHTS` is a truncated file",
        train("TEST.WEIGHTS", lambda ws: ws["truncated_pyth"], name="test_net"),
        r"error: checkpoint {} is truncated, corrupt or not a checkpoint \(.+\); use another "
        r"file".format(P),
    ),
    row(
        "test_weights_text",
        "`TEST.WEIGHTS` is not a checkpoint at all (a text file)",
        train("TEST.WEIGHTS", lambda ws: ws["text_pyth"], name="test_net"),
        r"error: checkpoint {} is truncated, corrupt or not a checkpoint \(.+\); use another "
        r"file".format(P),
        slow=True,
    ),
    row(
        "test_weights_pickle",
        "`TEST.WEIGHTS` holds arbitrary Python objects",
        train("TEST.WEIGHTS", lambda ws: ws["object_pyth"], name="test_net"),
        r"error: checkpoint {} holds a Python object \(datetime\.date\) that safe loading "
        r"\(weights_only\) refuses; use a checkpoint of plain tensors, from a source you "
        r"trust".format(P),
    ),
    row(
        "test_weights_other_model",
        "`TEST.WEIGHTS` of another architecture",
        train("TEST.WEIGHTS", lambda ws: ws["other_pyth"], name="test_net"),
        r"error: checkpoint {} does not fit the model \(it was made with MODEL\.TYPE effnet and "
        r"MODEL\.NUM_CLASSES 3\): unexpected keys: s2\.b2\..*; check --cfg / MODEL settings".format(
            P
        ),
    ),
    row(
        "train_weights_other_model",
        "`TRAIN.WEIGHTS` of another architecture",
        train("TRAIN.WEIGHTS", lambda ws: ws["other_pyth"]),
        r"error: checkpoint {} does not fit the model .*unexpected keys: s2\.b2\..*".format(P),
        slow=True,
    ),
    row(
        "resume_all_corrupt",
        "every checkpoint in `OUT_DIR` is corrupt (auto-resume)",
        train("OUT_DIR", lambda ws: ws["corrupt_out"]),
        r"error: no checkpoint in {} loads \(all 1 are corrupt\); delete them or set OUT_DIR "
        r"elsewhere".format(P),
    ),
    # ------------------ checkpoints that do not fit the model (round three) ------------------ #
    row(
        "test_weights_other_head",
        "`TEST.WEIGHTS` of a model with another head size (10 classes, the model has 3)",
        train("TEST.WEIGHTS", lambda ws: ws["head_pyth"], name="test_net"),
        r"error: checkpoint {} does not fit the model \(it was made with MODEL\.TYPE effnet and "
        r"MODEL\.NUM_CLASSES 10\): shape mismatches: head\.fc\.weight \(file \[10, 64\], model "
        r"\[3, 64\]\), head\.fc\.bias \(file \[10\], model \[3\]\); check --cfg / MODEL "
        r"settings".format(P),
    ),
    row(
        "train_weights_other_widths",
        "`TRAIN.WEIGHTS` of a model of other widths",
        train("TRAIN.WEIGHTS", lambda ws: ws["wide_pyth"]),
        r"error: checkpoint {} does not fit the model \(.*\): shape mismatches: .*; check --cfg / "
        r"MODEL settings".format(P),
        slow=True,
    ),
    row(
        "resume_other_model",
        "a resume onto an `OUT_DIR` whose checkpoint came from a model of other widths",
        train("OUT_DIR", lambda ws: ws["other_model_out"], "OPTIM.MAX_EPOCH", "2"),
        r"error: checkpoint {}model_epoch_0001\.pyth does not fit the model \(it was made with "
        r"MODEL\.TYPE effnet and MODEL\.NUM_CLASSES 3\): shape mismatches: .*; check --cfg / "
        r"MODEL settings".format(P),
    ),
    row(
        "test_weights_folder_named_like_a_file",
        "`TEST.WEIGHTS model.pyth` that is a folder",
        train("TEST.WEIGHTS", lambda ws: ws["pyth_folder"], name="test_net"),
        r"error: folder {}model\.pyth holds no checkpoint \(model_best\.pyth or "
        r"model_epoch_XXXX\.pyth\); pass a checkpoint file, or an OUT_DIR or checkpoints folder "
        r"that holds one".format(P),
    ),
    row(
        "test_weights_empty_checkpoints_folder",
        "`TEST.WEIGHTS` an `OUT_DIR` whose checkpoints folder is empty",
        train("TEST.WEIGHTS", lambda ws: ws["empty_ckpt_out"], name="test_net"),
        r"error: folder {}/checkpoints holds no checkpoint \(model_best\.pyth or "
        r"model_epoch_XXXX\.pyth\); pass a checkpoint file, or an OUT_DIR or checkpoints folder "
        r"that holds one".format(P),
        slow=True,
    ),
    # ------------------------------- processes --------------------------------------- #
    row(
        "rank_env_not_a_number",
        "torchrun variables that are not numbers (`RANK=x`)",
        train(env={"RANK": "x", "WORLD_SIZE": "2"}),
        r"error: environment variable RANK='x' must be a whole number",
        slow=True,
    ),
    row(
        "rank_id_without_rank_size",
        "`--rank_id 1` without `RANK_SIZE`",
        train("--rank_id", "1"),
        r"error: --rank_id 1 needs the process count in RANK_SIZE: export RANK_SIZE=N .*",
    ),
    row(
        "rank_outside_world",
        "`--rank_id 3` with `RANK_SIZE=2`",
        train("--rank_id", "3", env={"RANK_SIZE": "2"}),
        r"error: rank 3 \(device 3\) does not fit a world of 2 processes: check RANK/--rank_id, "
        r"LOCAL_RANK/--device_id and WORLD_SIZE/RANK_SIZE",
        slow=True,
    ),
    row(
        "batch_not_divisible",
        "`TRAIN.BATCH_SIZE 5` on 2 processes (torchrun)",
        wrapped_torchrun("TRAIN.BATCH_SIZE", "5"),
        r"error: rank \d \(pid \d+\) failed: TRAIN\.BATCH_SIZE 5 does not divide by the 2 "
        r"processes; set TRAIN\.BATCH_SIZE to a multiple of 2; the job stopped",
        slow=True,
    ),
    # ---------------------------------- launchers -------------------------------------- #
    row(
        "launcher_no_data_path",
        "`test/train_full_1p.sh` without `--data_path=`",
        launcher("train_full_1p.sh"),
        r"error: --data_path=DIR is required \(a folder with train/ and val/ inside\)",
        stream="output",
    ),
    row(
        "launcher_unknown_option",
        "`test/train_full_1p.sh --epochs=3`",
        launcher("train_full_1p.sh", "--data_path=/data", "--epochs=3"),
        r"error: unknown option --epochs=3; use --data_path=, --device=, --cfg=, --pth_path= or "
        r"KEY VALUE pairs",
        stream="output",
    ),
    row(
        "launcher_eval_no_pth",
        "`test/train_eval_8p.sh` without `--pth_path=`",
        launcher("train_eval_8p.sh", lambda ws: "--data_path=" + ws["data"]),
        r"error: --pth_path=FILE is required \(the checkpoint to evaluate\)",
        stream="output",
    ),
    row(
        "launcher_bad_data_path",
        "`test/train_full_1p.sh` with a data path that does not exist",
        launcher("train_full_1p.sh", lambda ws: "--data_path=" + ws["missing"], "--device=cpu"),
        r"error: data path {} does not exist; pass --data_path DIR .*".format(P),
        stream="output",
        slow=True,
    ),
    row(
        "launcher_eval_pth_missing",
        "`test/train_eval_8p.sh` (RANK_SIZE=1) with a missing `--pth_path=`",
        launcher(
            "train_eval_8p.sh",
            lambda ws: "--data_path=" + ws["data"],
            lambda ws: "--pth_path=" + ws.path("none.pyth"),
            "--device=cpu",
            lambda ws: "--cfg=" + CFG,
            *tiny_pairs(),
            env={"RANK_SIZE": "1"},
        ),
        r"error: checkpoint {} does not exist; check the path".format(P),
        stream="output",
        slow=True,
    ),
    row(
        "launcher_batch_not_divisible",
        "`RANK_SIZE=2 test/train_full_8p.sh ... TRAIN.BATCH_SIZE 5`",
        launcher(
            "train_full_8p.sh",
            lambda ws: "--data_path=" + ws["data"],
            "--device=cpu",
            lambda ws: "--cfg=" + CFG,
            *tiny_pairs(**{"TRAIN.BATCH_SIZE": "5"}),
            env={"RANK_SIZE": "2"},
        ),
        r"error: rank \d \(pid \d+\) failed: TRAIN\.BATCH_SIZE 5 does not divide by the 2 "
        r"processes; set TRAIN\.BATCH_SIZE to a multiple of 2; the job stopped",
        stream="output",
        slow=True,
    ),
    # -------------------------------- other tools -------------------------------------- #
    row(
        "demo_data_not_empty",
        "`tools/make_demo_data.py` into a non-empty folder",
        tool("make_demo_data", lambda ws: ws["data"]),
        r"error: {} is not empty; pass --force to write into it, or pick an empty folder".format(P),
    ),
    row(
        "demo_data_too_small",
        "`tools/make_demo_data.py --size 4`",
        tool("make_demo_data", lambda ws: ws.path("demo"), "--size", "4"),
        r"error: --size 4 is too small; give 8 or more",
    ),
    row(
        "predict_no_weights",
        "`tools/predict.py` without weights",
        tool("predict", "--cfg", CFG, lambda ws: ws["data"]),
        r"error: no weights given; pass --weights FILE\.pyth \(or TEST\.WEIGHTS FILE\)",
    ),
    row(
        "predict_truncated_weights",
        "`tools/predict.py --weights` a truncated file",
        tool(
            "predict",
            "--cfg",
            CFG,
            "--weights",
            lambda ws: ws["truncated_pyth"],
            lambda ws: ws["data"],
        ),
        r"error: checkpoint {} is truncated, corrupt or not a checkpoint \(.+\); use another "
        r"file".format(P),
        slow=True,
    ),
    row(
        "final_result_no_stats",
        "`tools/final_result.py` on a log without json_stats",
        tool("final_result", lambda ws: ws["text_pyth"]),
        r"error: no train_epoch or test_epoch json_stats in the log; see its errors",
    ),
    row(
        "channel_order_bad",
        "`INPUT.CHANNEL_ORDER BRG` (the network's input channel order)",
        train("INPUT.CHANNEL_ORDER", "BRG"),
        r"error: config key INPUT\.CHANNEL_ORDER is 'BRG'; choose one of bgr, rgb",
    ),
    row(
        "torch_too_old",
        "torch older than 2.3 (here 2.0.1, e.g. a stack from the seed's 1.8_requirements.txt)",
        old_stack("train_net", "--cfg", CFG),
        r"error: this code needs torch >= 2\.3, torchvision >= 0\.18; found torch 2\.0\.1, "
        r"torchvision \S+: pip install -r requirements\.txt \(or a CANN release's torch and "
        r"torch_npu >= 2\.3 on Ascend\)",
    ),
    # ------------------- round two: links, shared OUT_DIR, hostile files -------------------- #
    row(
        "data_only_loop_links",
        "class folders that hold only links to themselves and their parent",
        train(data="loop_links"),
        r"error: {} holds no images \(jpg, jpeg, png, bmp, webp\); put them in .*".format(P),
    ),
    row(
        "predict_folder_loop_links",
        "`tools/predict.py` on a folder of links to itself",
        tool(
            "predict", "--cfg", CFG, "--weights", lambda ws: ws["good_pyth"], lambda ws: ws["loop"]
        ),
        r"error: folder {} holds no images \(.jpg, .jpeg, .png, .bmp, .webp\)".format(P),
    ),
    row(
        "out_dir_in_use",
        "a second run on an `OUT_DIR` another run is using",
        train("OUT_DIR", lambda ws: ws["busy_out"]),
        r"error: OUT_DIR {} is in use by another run \(pid \d+ on host \S+, started .+\); wait "
        r"for it to end, stop it, or set OUT_DIR elsewhere".format(P),
    ),
    row(
        "disk_full_on_save",
        "the disk fills up while a checkpoint is written (`ulimit -f`)",
        lambda ws: (
            ["bash", "-c", 'ulimit -f {}; exec "$@"'.format(ws["fsize_blocks"]), "bash"]
            + train()(ws)[0],
            None,
        ),
        r"error: could not write checkpoint {} \(.+; \d+ MiB free in {}\); free disk space or set "
        r"OUT_DIR elsewhere, then rerun to resume from the last checkpoint".format(P, P),
        slow=True,
    ),
    row(
        "cfg_repeated_key",
        "the config file has the same section twice (`OPTIM:` ... `OPTIM:`)",
        tool("train_net", "--cfg", lambda ws: ws["dup_yaml"]),
        r"error: config {} sets OPTIM twice \(lines 1 and 3\); keep one".format(P),
    ),
    row(
        "cfg_alias_bomb",
        "a config with YAML anchors and aliases (they could expand to gigabytes)",
        tool("train_net", "--cfg", lambda ws: ws["bomb_yaml"]),
        r"error: config {} uses a YAML anchor or alias \(line 1\); write the values "
        r"out".format(P),
    ),
    row(
        "cfg_not_utf8",
        "a config with bytes that are not UTF-8",
        tool("train_net", "--cfg", lambda ws: ws["latin1_yaml"]),
        r"error: config {} is not UTF-8 text \(byte 0xe9 at offset \d+\); save it as "
        r"UTF-8".format(P),
        slow=True,
    ),
    row(
        "cfg_huge_file",
        "a 2 MiB config file",
        tool("train_net", "--cfg", lambda ws: ws["huge_yaml"]),
        r"error: config {} is larger than 1 MiB; a config is small text, check --cfg".format(P),
        slow=True,
    ),
    row(
        "override_huge_value",
        "an override value of 100,000 characters",
        train("OUT_DIR", "z" * 100000),
        r"error: config key OUT_DIR in the command line has a value of 100000 characters "
        r"\(z{57}\.\.\.\); no config value is so long",
    ),
    row(
        "test_weights_wrong_types",
        "`TEST.WEIGHTS` whose `model_state` is not a mapping of tensors",
        train("TEST.WEIGHTS", lambda ws: ws["wrong_types_pyth"], name="test_net"),
        r"error: checkpoint {} is not a pycls checkpoint: its model_state is a list, not a "
        r"mapping of tensors; use a checkpoint written by pycls".format(P),
    ),
    row(
        "resume_wrong_types",
        "the only checkpoint in `OUT_DIR` has an epoch that is not a number (auto-resume)",
        train("OUT_DIR", lambda ws: ws["wrong_types_out"]),
        r"error: no checkpoint in {} loads \(all 1 are corrupt\); delete them or set OUT_DIR "
        r"elsewhere".format(P),
        slow=True,
    ),
    row(
        "test_weights_pickle_protocol4",
        "`TEST.WEIGHTS` holds a Python object, saved with pickle protocol 4",
        train("TEST.WEIGHTS", lambda ws: ws["object4_pyth"], name="test_net"),
        r"error: checkpoint {} holds a Python object \(datetime\.date\) that safe loading "
        r"\(weights_only\) refuses; use a checkpoint of plain tensors, from a source you "
        r"trust".format(P),
        slow=True,
    ),
    row(
        "pretrained_other_widths",
        "`TRAIN.PRETRAINED` from a model of other widths",
        train("TRAIN.PRETRAINED", lambda ws: ws["wide_pyth"]),
        r"error: pretrained weights {} differ from the model beyond its head \(.*\): shape "
        r"mismatches: s7\..*; check --cfg / MODEL settings, or set TRAIN\.PRETRAINED_PARTIAL "
        r"True to load only what fits".format(P),
    ),
    row(
        "predict_huge_image",
        "`tools/predict.py` on a JPEG whose header claims 60000x60000 pixels",
        tool(
            "predict",
            "--cfg",
            CFG,
            "--weights",
            lambda ws: ws["good_pyth"],
            lambda ws: ws["bomb_jpg"],
            *tiny_pairs(),
        ),
        r"error: 1 of 1 images could not be read \(first: {}\)".format(P),
    ),
    row(
        "train_huge_images",
        "more of an epoch's images exceed PIL's pixel limit than allowed",
        train(data="bomb_images"),
        r"error: \d+ of the 24 images of this epoch in {} are unreadable \(\d+\.\d+%\), more than "
        r"DATA_LOADER\.MAX_BAD_FRACTION 0\.01; .*".format(P),
        slow=True,
    ),
    row(
        "export_out_is_a_folder",
        "`tools/export_onnx.py --out` an existing folder",
        tool(
            "export_onnx",
            "--cfg",
            CFG,
            "--weights",
            lambda ws: ws["good_pyth"],
            "--out",
            lambda ws: ws["data"],
        ),
        r"error: --out {} is a folder; give the ONNX file to write, like {}".format(P, P),
    ),
    row(
        "mp_context_unknown",
        "`DATA_LOADER.MP_CONTEXT thread`",
        train("DATA_LOADER.MP_CONTEXT", "thread"),
        r"error: config key DATA_LOADER.MP_CONTEXT is 'thread'; choose one of auto, "
        r"forkserver, spawn, fork",
    ),
    row(
        "loader_timeout_negative",
        "`DATA_LOADER.TIMEOUT -1`",
        train("DATA_LOADER.TIMEOUT", "-1"),
        r"error: config key DATA_LOADER\.TIMEOUT is -1; it must be 0 or more",
    ),
    row(
        "dist_timeout_zero",
        "`DIST.TIMEOUT 0`",
        train("DIST.TIMEOUT", "0"),
        r"error: config key DIST.TIMEOUT is 0; it must be above 0",
    ),
    row(
        "rendezvous_timeout",
        "rank 0 of 2 started alone (the other never joins), `DIST.TIMEOUT 2`",
        train(
            "DIST.TIMEOUT",
            "2",
            "NUM_GPUS",
            "2",
            env={"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "0"},
        ),
        r"error: rank 0 waited 2 s for the other processes to join the process group \(.*\); "
        r"start every rank with the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE, or raise "
        r"DIST.TIMEOUT",
        code=1,
        slow=True,
    ),
    row(
        "test_weights_empty_folder",
        "`TEST.WEIGHTS` is a folder without checkpoints",
        train("TEST.WEIGHTS", lambda ws: ws.path("no_images"), name="test_net"),
        r"error: folder {} holds no checkpoint \(model_best\.pyth or model_epoch_XXXX\.pyth\); "
        r"pass a checkpoint file, or an OUT_DIR or checkpoints folder that holds one".format(P),
    ),
    row(
        "launcher_eval_pth_empty_folder",
        "`test/train_eval_8p.sh` (RANK_SIZE=1) with `--pth_path=` a folder without checkpoints",
        launcher(
            "train_eval_8p.sh",
            lambda ws: "--data_path=" + ws["data"],
            lambda ws: "--pth_path=" + ws.path("no_images"),
            "--device=cpu",
            lambda ws: "--cfg=" + CFG,
            *tiny_pairs(),
            env={"RANK_SIZE": "1"},
        ),
        r"error: folder {} holds no checkpoint \(model_best\.pyth or model_epoch_XXXX\.pyth\); "
        r"pass a checkpoint file, or an OUT_DIR or checkpoints folder that holds one".format(P),
        stream="output",
        slow=True,
    ),
    row(
        "train_weights_missing",
        "`TRAIN.WEIGHTS` does not exist (found before `OUT_DIR` is touched)",
        train("TRAIN.WEIGHTS", lambda ws: ws.path("none.pyth")),
        r"error: TRAIN\.WEIGHTS {} does not exist; check the path".format(P),
    ),
    row(
        "train_pretrained_folder",
        "`TRAIN.PRETRAINED` is a folder",
        train("TRAIN.PRETRAINED", lambda ws: ws["data"]),
        r"error: TRAIN\.PRETRAINED {} is a folder, not a file; check the path".format(P),
        slow=True,
    ),
    row(
        "final_result_missing_log",
        "`tools/final_result.py` on a log that does not exist",
        tool("final_result", lambda ws: ws.path("none.log")),
        r"error: log {} does not exist".format(P),
    ),
    # ------------------------- ports and process counts (launch) ------------------------ #
    row(
        "launcher_port_in_use",
        "`MASTER_PORT` of `test/train_full_8p.sh` already in use by another program",
        lambda ws: launcher(
            "train_full_8p.sh",
            "--data_path=" + ws["data"],
            "--device=cpu",
            "--cfg=" + CFG,
            *tiny_pairs(),
            env={"RANK_SIZE": "2", "MASTER_PORT": str(busy_port())},
        )(ws),
        r"error: MASTER_PORT \d+ on 127\.0\.0\.1 is already in use \(another job or program "
        r"listens there\); set MASTER_PORT \(torchrun: --master_port\) to a free port, e\.g\. "
        r"MASTER_PORT=\d+, or stop that job",
        stream="output",
    ),
    row(
        "launch_node_rank_too_big",
        "`python -m pycls.launch.ranks --nnodes=2 --node_rank=5`",
        lambda ws: (
            [sys.executable, "-m", "pycls.launch.ranks", "--nproc_per_node=1", "--nnodes=2"]
            + ["--node_rank=5", "--master_port={}".format(free_port())]
            + train("NUM_GPUS", "2")(ws)[0][1:],
            None,
        ),
        r"error: NODE_RANK \(--node_rank\) is 5 but NNODES is 2; give each of the NNODES nodes "
        r"the same NNODES and its own NODE_RANK 0\.\.NNODES-1 \(node 0 runs global rank 0 and "
        r"listens on MASTER_PORT\)",
    ),
    row(
        "launcher_rdzv_timeout_bad",
        "`RDZV_TIMEOUT=soon` for a 2-node `test/train_full_8p.sh`",
        launcher(
            "train_full_8p.sh",
            lambda ws: "--data_path=" + ws["data"],
            "--device=cpu",
            env={"NNODES": "2", "NODE_RANK": "1", "RANK_SIZE": "1", "RDZV_TIMEOUT": "soon"},
        ),
        r"error: RDZV_TIMEOUT='soon' must be a whole number of seconds above 0 \(default 600\)",
        stream="output",
    ),
    row(
        "launcher_node_alone",
        "node 1 of 2 started alone (node 0 never starts), `RDZV_TIMEOUT=3`",
        launcher(
            "train_full_8p.sh",
            lambda ws: "--data_path=" + ws["data"],
            "--device=cpu",
            env={"NNODES": "2", "NODE_RANK": "1", "RANK_SIZE": "1", "RDZV_TIMEOUT": "3"},
        ),
        r"error: node 1 could not reach node 0 at 127\.0\.0\.1:\d+ within 3 s \(.*\); start node "
        r"0 \(NODE_RANK=0\) with the same NNODES, MASTER_ADDR and MASTER_PORT, check that this "
        r"machine can reach that address, or raise RDZV_TIMEOUT",
        stream="output",
        slow=True,
    ),
    row(
        "launch_port_in_use",
        "`python -m pycls.launch.ranks --master_port=P` with P in use",
        lambda ws: (
            [sys.executable, "-m", "pycls.launch.ranks", "--nproc_per_node=2"]
            + ["--master_port={}".format(busy_port())]
            + train("NUM_GPUS", "2")(ws)[0][1:],
            None,
        ),
        r"error: MASTER_PORT \d+ on 127\.0\.0\.1 is already in use .* or stop that job",
    ),
    row(
        "num_gpus_not_world_size",
        "`--rank_id 0` with `RANK_SIZE=2` but `NUM_GPUS 1`",
        train("--rank_id", "0", env={"RANK_SIZE": "2"}),
        r"error: NUM_GPUS is 1 but this job was started with 2 processes; pass NUM_GPUS 2 "
        r"\(NUM_GPUS is the process count, as in pycls\)",
    ),
    row(
        "num_gpus_not_torchrun_world_size",
        "torchrun (`pycls.launch.ranks`) with 2 processes and `NUM_GPUS 3`",
        lambda ws: (
            [sys.executable, "-m", "pycls.launch.ranks", "--nproc_per_node=2"]
            + ["--master_port={}".format(free_port())]
            + train("NUM_GPUS", "3")(ws)[0][1:],
            None,
        ),
        r"error: rank \d \(pid \d+\) failed: NUM_GPUS is 3 but this job was started with 2 "
        r"processes; pass NUM_GPUS 2 \(NUM_GPUS is the process count, as in pycls\); the job "
        r"stopped",
        slow=True,
    ),
    # ------------------- node facts of the 8p launchers (SLURM and by hand) ------------------- #
    row(
        "launcher_slurm_nodelist_unparsable",
        "`srun bash test/train_full_8p.sh` with a node list neither scontrol nor the parser reads",
        slurm_launcher({"SLURM_STEP_NODELIST": "node[07-08"}),
        r"error: cannot read the SLURM node list 'node\[07-08': its brackets do not pair up; put "
        r"scontrol on PATH or set MASTER_ADDR to the first node's address",
    ),
    row(
        "launcher_slurm_outside_srun",
        "`test/train_full_8p.sh` in the batch script of a 2-node SLURM job, not through `srun`",
        slurm_launcher({n: None for n in SLURM_STEP if n.startswith("SLURM_STEP_")}),
        r"error: SLURM_STEP_NUM_NODES is not set: this launcher runs in a 2-node SLURM job "
        r"\(SLURM_NNODES\) but not in an srun step; start one launcher per node with srun "
        r"--ntasks-per-node=1, or set NODE_RANK to this node's rank, 0\.\.1 \(NNODES=2, "
        r"SLURM_NNODES\)",
    ),
    row(
        "launcher_slurm_nodeid_too_big",
        "`SLURM_NODEID=2` in a 2-node `srun` step",
        slurm_launcher({"SLURM_NODEID": "2"}),
        r"error: SLURM_NODEID='2' is not 0\.\.1; start one launcher per node with srun "
        r"--ntasks-per-node=1, or set NODE_RANK to this node's rank, 0\.\.1 \(NNODES=2, "
        r"SLURM_STEP_NUM_NODES\)",
    ),
    row(
        "launcher_nnodes_not_integer",
        "`NNODES=two bash test/train_full_8p.sh ...`",
        slurm_launcher({"NNODES": "two"}, slurm=False),
        r"error: NNODES='two' is not an integer >= 1; set NNODES to the number of nodes "
        r"\(launchers\) of the job",
    ),
    row(
        "launcher_node_rank_too_big",
        "`NNODES=2 NODE_RANK=2 bash test/train_full_8p.sh ...`",
        slurm_launcher({"NNODES": "2", "NODE_RANK": "2"}, slurm=False),
        r"error: NODE_RANK='2' is not 0\.\.1; set NODE_RANK to this node's rank, 0\.\.1 "
        r"\(NNODES=2, NNODES set\)",
    ),
    # ------------------- round three: values that make no sense (config) ------------------- #
    row(
        "cfg_not_a_mapping",
        "a config file that holds a YAML list, not keys",
        tool("train_net", "--cfg", lambda ws: ws["list_yaml"]),
        r"error: config {} holds \['OPTIM', 'BASE_LR'\], not a mapping of config keys".format(P),
    ),
    row(
        "override_below_leaf",
        "an override below a leaf key: `OPTIM.BASE_LR.X 1`",
        train("OPTIM.BASE_LR.X", "1"),
        r"error: unknown config key OPTIM\.BASE_LR\.X in the command line: did you mean "
        r"OPTIM\.BASE_LR\?",
    ),
    row(
        "value_nan",
        "`OPTIM.BASE_LR .nan`",
        train("OPTIM.BASE_LR", ".nan"),
        r"error: config key OPTIM\.BASE_LR is nan; it must be a finite number",
    ),
    row(
        "value_inf",
        "`OPTIM.WEIGHT_DECAY 1e999` (inf)",
        train("OPTIM.WEIGHT_DECAY", "1e999"),
        r"error: config key OPTIM\.WEIGHT_DECAY is inf; it must be a finite number",
        slow=True,
    ),
    row(
        "fraction_too_big",
        "`TRAIN.LABEL_SMOOTHING 1` (a fraction below 1)",
        train("TRAIN.LABEL_SMOOTHING", "1"),
        r"error: config key TRAIN\.LABEL_SMOOTHING is 1\.0; it must be in \[0, 1\)",
    ),
    row(
        "negative_alpha",
        "`TRAIN.MIXUP_ALPHA -0.2`",
        train("TRAIN.MIXUP_ALPHA", "-0.2"),
        r"error: config key TRAIN\.MIXUP_ALPHA is -0\.2; it must be 0 or more",
        slow=True,
    ),
    row(
        "size_zero",
        "`TRAIN.IM_SIZE 0`",
        train("TRAIN.IM_SIZE", "0"),
        r"error: config key TRAIN\.IM_SIZE is 0; it must be above 0",
        slow=True,
    ),
    row(
        "stage_size_zero",
        "a stage of 0 blocks: `EN.DEPTHS [1,0,1,1,1,1,1]`",
        train("EN.DEPTHS", "[1,0,1,1,1,1,1]"),
        r"error: config key EN\.DEPTHS is \[1, 0, 1, 1, 1, 1, 1\]; every entry must be above 0",
    ),
    row(
        "out_dir_is_a_file",
        "`OUT_DIR` is a file",
        train("OUT_DIR", lambda ws: ws["a_file"]),
        r"error: OUT_DIR {} is a file; set OUT_DIR to a folder".format(P),
    ),
    # -------------- launcher environment values, checked before torchrun starts -------------- #
    row(
        "launcher_rank_size_zero",
        "`RANK_SIZE=0 bash test/train_full_8p.sh ...`",
        slurm_launcher({"RANK_SIZE": "0"}, slurm=False),
        r"error: RANK_SIZE='0' is not an integer >= 1; set RANK_SIZE to the number of processes "
        r"\(devices\) per node",
    ),
    row(
        "launcher_device_id_not_integer",
        "`ASCEND_DEVICE_ID=first bash test/train_full_1p.sh ...`",
        launcher(
            "train_full_1p.sh",
            lambda ws: "--data_path=" + ws["data"],
            "--device=cpu",
            env={"ASCEND_DEVICE_ID": "first"},
        ),
        r"error: ASCEND_DEVICE_ID='first' is not an integer >= 0; set it to a device index "
        r"\(0, 1, \.\.\.\) or unset it",
    ),
    row(
        "launcher_master_port_not_integer",
        "`MASTER_PORT=auto RANK_SIZE=2 bash test/train_full_8p.sh ...`",
        slurm_launcher({"MASTER_PORT": "auto", "RANK_SIZE": "2"}, slurm=False),
        r"error: MASTER_PORT='auto' is not 1\.\.65535; set MASTER_PORT to a free TCP port, e\.g\. "
        r"MASTER_PORT=29500",
    ),
    row(
        "launcher_master_addr_unresolvable",
        "`MASTER_ADDR=no-such-host.invalid RANK_SIZE=2 bash test/train_full_8p.sh ...`",
        slurm_launcher({"MASTER_ADDR": "no-such-host.invalid", "RANK_SIZE": "2"}, slurm=False),
        r"error: MASTER_ADDR='no-such-host\.invalid' does not resolve \(.+\); set MASTER_ADDR to "
        r"node 0's host name or IP address \(127\.0\.0\.1 on one machine\)",
    ),
    row(
        "launcher_master_addr_silent",
        "`MASTER_ADDR=192.0.2.1` (nobody answers there) `RANK_SIZE=2 RDZV_TIMEOUT=3 "
        "bash test/train_full_8p.sh ...`",
        slurm_launcher(
            {"MASTER_ADDR": "192.0.2.1", "RANK_SIZE": "2", "RDZV_TIMEOUT": "3"}, slurm=False
        ),
        r"error: could not reach MASTER_ADDR at 192\.0\.2\.1:\d+ within 3 s \(.*\); set "
        r"MASTER_ADDR to this machine's address \(127\.0\.0\.1 for one machine\) or raise "
        r"RDZV_TIMEOUT",
        stream="output",
        slow=True,
    ),
]


# --------------- data path and class count: checked before anything is written --------------- #
def writes_nothing(build):
    """Wraps a tools/*.py command builder: a run that leaves its OUT_DIR behind ends in a line
    saying so (and exit 99), so the row fails."""

    def wrapped(ws):
        argv, env = build(ws)
        out = argv[argv.index("OUT_DIR") + 1]
        check = '"$@"; rc=$?; [ -e "$0" ] && echo "OUT_DIR $0 was written" >&2 && exit 99; exit $rc'
        return ["bash", "-c", check, out] + argv, env

    return wrapped


ROWS += [
    row(
        "data_is_a_file_nothing_written",
        "`--data_path` is a file: nothing is written",
        writes_nothing(train(data="a_file")),
        r"error: data path {} is not a folder; pass --data_path DIR .*".format(P),
    ),
    row(
        "too_few_classes_nothing_written",
        "`MODEL.NUM_CLASSES` below the data's classes: nothing is written",
        writes_nothing(train("MODEL.NUM_CLASSES", "2")),
        r"error: {} has 3 classes but MODEL\.NUM_CLASSES is 2; set MODEL\.NUM_CLASSES 3".format(P),
        slow=True,
    ),
    row(
        "test_net_data_is_a_file",
        "`tools/test_net.py` with a `--data_path` that is a file",
        writes_nothing(
            train("TEST.WEIGHTS", lambda ws: ws["good_pyth"], data="a_file", name="test_net")
        ),
        r"error: data path {} is not a folder; pass --data_path DIR .*".format(P),
        slow=True,
    ),
    row(
        "test_net_too_few_classes",
        "`tools/test_net.py` with `MODEL.NUM_CLASSES` below the data's classes",
        writes_nothing(
            train(
                "TEST.WEIGHTS",
                lambda ws: ws["good_pyth"],
                "MODEL.NUM_CLASSES",
                "2",
                name="test_net",
            )
        ),
        r"error: {} has 3 classes but MODEL\.NUM_CLASSES is 2; set MODEL\.NUM_CLASSES 3".format(P),
    ),
    row(
        "time_net_too_few_classes",
        "`tools/time_net.py` with `MODEL.NUM_CLASSES` below the data's classes",
        writes_nothing(train("MODEL.NUM_CLASSES", "2", name="time_net")),
        r"error: {} has 3 classes but MODEL\.NUM_CLASSES is 2; set MODEL\.NUM_CLASSES 3".format(P),
        slow=True,
    ),
    row(
        "launcher_data_is_a_file",
        "`test/train_full_1p.sh` with a data path that is a file",
        launcher("train_full_1p.sh", lambda ws: "--data_path=" + ws["a_file"], "--device=cpu"),
        r"error: data path {} is not a folder; pass --data_path DIR .*".format(P),
        stream="output",
        slow=True,
    ),
]


class Workspace(dict):
    """Named paths of the files the rows use; out() gives each run a fresh OUT_DIR."""

    def __init__(self, root):
        super().__init__()
        self.root = root
        self.count = 0
        self.holder = None  # a process holding an OUT_DIR lock
        self.zygote = None  # where the rows' Python tools fork from

    def close(self):
        """Ends the lock-holding process (it exits when its stdin closes) and the zygote."""
        if self.holder is not None:
            self.holder.stdin.close()
            self.holder.wait()
        if self.zygote is not None:
            self.zygote.close()

    def path(self, name):
        """Returns a path in the workspace."""
        return os.path.join(self.root, name)

    def out(self):
        """Returns a new, empty OUT_DIR path."""
        self.count += 1
        return self.path("out{}".format(self.count))


def _tiny_checkpoint(path, **changes):
    """Saves the weights of a tiny model (with config changes) as a pycls checkpoint."""
    config.reset_cfg()
    config.merge_from_file(CFG)
    config.merge_from_list([x for kv in dict(TINY, **changes).items() for x in kv])
    model = builders.build_model()
    torch.save({"epoch": 0, "model_state": model.state_dict(), "cfg": cfg.dump()}, path)
    config.reset_cfg()
    return path


def _write(path, text):
    """Writes a text file (folders made) and returns its path."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def make_workspace(root):
    """Writes the data folders, configs and checkpoints the rows use."""
    ws = Workspace(root)
    counts, classes = {"train": 8, "val": 4}, ("a", "b", "c")
    ws["data"] = make_image_folder(ws.path("data"), classes, counts, (16, 16))
    ws["missing"] = ws.path("missing")
    ws["a_file"] = _write(ws.path("a_file.txt"), "a user's file\n")
    ws["no_train"] = make_image_folder(ws.path("no_train"), classes, {"val": 2}, (16, 16))
    os.makedirs(ws.path("no_classes/train"))
    ws["no_classes"] = ws.path("no_classes")
    os.makedirs(ws.path("no_images/train/a"))
    ws["no_images"] = ws.path("no_images")
    ws["classes_differ"] = make_image_folder(ws.path("classes_differ"), classes, {"train": 8})
    make_image_folder(ws["classes_differ"], classes[:2], {"val": 2})
    ws["bad_images"] = make_image_folder(ws.path("bad_images"), classes, counts, (16, 16))
    for name in classes:
        for i in range(4):  # half of the train images
            write_bad_file(
                os.path.join(ws["bad_images"], "train", name, "{}.jpg".format(i)), "text"
            )
    ws["evil_py"] = _write(ws.path("evil.py"), "open({!r}, 'w')\n".format(ws.path("ran")))
    ws["bad_yaml"] = _write(ws.path("bad.yaml"), "MODEL:\n  TYPE: [effnet\n")
    ws["typo_yaml"] = _write(ws.path("typo.yaml"), "OPTIM:\n  BASE_LRR: 0.1\n")
    ws["list_yaml"] = _write(ws.path("list.yaml"), "- OPTIM\n- BASE_LR\n")
    ws["text_pyth"] = _write(ws.path("notes.pyth"), "not a checkpoint\n")
    ws["object_pyth"] = ws.path("object.pyth")
    torch.save(
        {"epoch": 0, "model_state": {}, "made": datetime.date(2024, 1, 1)}, ws["object_pyth"]
    )
    ws["other_pyth"] = _tiny_checkpoint(ws.path("other.pyth"), **{"EN.DEPTHS": "[1,2,1,1,1,1,1]"})
    good = _tiny_checkpoint(ws.path("good.pyth"))
    with open(good, "rb") as f:
        content = f.read()
    ws["truncated_pyth"] = ws.path("truncated.pyth")
    with open(ws["truncated_pyth"], "wb") as f:
        f.write(content[: len(content) // 2])
    ws["corrupt_out"] = ws.path("corrupt_out")
    os.makedirs(os.path.join(ws["corrupt_out"], "checkpoints"))
    shutil.copy(
        ws["truncated_pyth"],
        os.path.join(ws["corrupt_out"], "checkpoints", "model_epoch_0001.pyth"),
    )
    _round_two(ws, classes, counts, good)
    ws.zygote = Zygote(row_env())
    return ws


def _hold_out_dir(out_dir):
    """Starts a process that holds the OUT_DIR lock until our end of its stdin closes."""
    code = (
        "import sys; import pycls.core.outdir as outdir; from pycls.core.config import cfg\n"
        "cfg.OUT_DIR = sys.argv[1]; outdir.lock_out_dir(); print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    env = dict(os.environ, PYTHONPATH=REPO)
    holder = subprocess.Popen(
        [sys.executable, "-c", code, out_dir],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def _round_two(ws, classes, counts, good):
    """Adds the inputs of the second round of bad inputs (links, locks, hostile files)."""
    ws["good_pyth"] = good
    ws["loop_links"] = make_image_folder(ws.path("loop_links"), classes, {"val": 4}, (16, 16))
    for name in classes:
        os.makedirs(os.path.join(ws["loop_links"], "train", name))
        os.symlink(".", os.path.join(ws["loop_links"], "train", name, "self"))
        os.symlink("..", os.path.join(ws["loop_links"], "train", name, "up"))
    ws["loop"] = ws.path("loop")
    os.makedirs(ws["loop"])
    os.symlink(".", os.path.join(ws["loop"], "self"))
    os.symlink(ws["loop"], os.path.join(ws["loop"], "again"))
    ws["busy_out"] = ws.path("busy_out")
    os.makedirs(ws["busy_out"])
    ws.holder = _hold_out_dir(ws["busy_out"])
    ws["fsize_blocks"] = str(max(os.path.getsize(good) // 1024 // 2, 1))  # half a checkpoint
    ws["dup_yaml"] = _write(ws.path("dup.yaml"), "OPTIM:\n  BASE_LR: 0.1\nOPTIM:\n  MAX_EPOCH: 3\n")
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(8):
        alias = ", ".join(["*" + chr(97 + i)] * 10)
        bomb += "{}: &{} [{}]\n".format(chr(98 + i), chr(98 + i), alias)
    ws["bomb_yaml"] = _write(ws.path("bomb.yaml"), bomb)
    ws["latin1_yaml"] = ws.path("latin1.yaml")
    with open(ws["latin1_yaml"], "wb") as f:
        f.write(b"MODEL:\n  TYPE: effn\xe9t\n")
    ws["huge_yaml"] = _write(ws.path("huge.yaml"), "# " + "x" * (2 * 1024**2) + "\n")
    ws["wrong_types_pyth"] = ws.path("wrong_types.pyth")
    torch.save({"epoch": 0, "model_state": [1, 2, 3]}, ws["wrong_types_pyth"])
    ws["wrong_types_out"] = ws.path("wrong_types_out")
    os.makedirs(os.path.join(ws["wrong_types_out"], "checkpoints"))
    state = torch.load(good, weights_only=True)
    state["epoch"] = "one"
    torch.save(state, os.path.join(ws["wrong_types_out"], "checkpoints", "model_epoch_0001.pyth"))
    ws["object4_pyth"] = ws.path("object4.pyth")
    made = {"epoch": 0, "model_state": {}, "made": datetime.date(2024, 1, 1)}
    torch.save(made, ws["object4_pyth"], pickle_protocol=4)
    ws["wide_pyth"] = _tiny_checkpoint(
        ws.path("wide.pyth"), **{"EN.WIDTHS": "[8,8,16,16,24,24,40]"}
    )
    _round_three(ws)
    ws["bomb_jpg"] = write_huge_header_image(ws.path("bomb/bomb.jpg"), 60000, 60000)
    ws["bomb_images"] = make_image_folder(ws.path("bomb_images"), classes, counts, (16, 16))
    for name in classes:
        for i in range(4):  # half of the train images
            path = os.path.join(ws["bomb_images"], "train", name, "{}.jpg".format(i))
            write_huge_header_image(path, 60000, 60000)


def _round_three(ws):
    """Adds checkpoints that do not fit the model (another head, other widths, odd folders)."""
    ws["head_pyth"] = _tiny_checkpoint(ws.path("head.pyth"), **{"MODEL.NUM_CLASSES": "10"})
    ws["other_model_out"] = ws.path("other_model_out")
    os.makedirs(os.path.join(ws["other_model_out"], "checkpoints"))
    shutil.copy(ws["wide_pyth"], os.path.join(ws["other_model_out"], "checkpoints", _FIRST))
    _write(os.path.join(ws["other_model_out"], "config.yaml"), "# the first run's config\n")
    ws["pyth_folder"] = ws.path("model.pyth")
    os.makedirs(ws["pyth_folder"])
    ws["empty_ckpt_out"] = ws.path("empty_ckpt_out")
    os.makedirs(os.path.join(ws["empty_ckpt_out"], "checkpoints"))


_FIRST = "model_epoch_0001.pyth"


def row_env(extra_env=None):
    """Returns the environment of a row's command: no launcher variables, one thread, the repo
    importable, then the row's own variables."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    env.update(extra_env or {})
    return env


def run_row(r, ws):
    """Runs a row's command; returns (exit code, the checked text, the whole output). Python
    tools run in a fork of ws.zygote (the same script as __main__, without the imports' 3 s),
    other commands (bash launchers, wrappers) as a subprocess."""
    argv, extra_env = r.cmd(ws)
    env = row_env(extra_env)
    merged = r.stream == "output"
    if ws.zygote is not None and runs_here(argv):
        code, stdout, stderr = ws.zygote.run(argv, env, ws.root, merged)
    else:
        result = subprocess.run(
            argv,
            env=env,
            cwd=ws.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merged else subprocess.PIPE,
            text=True,
        )
        code, stdout, stderr = result.returncode, result.stdout, result.stderr
    checked = stdout if merged else stderr
    return code, checked, stdout + (stderr or "")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The workspace of the rows; launcher output under test/output/DEVICE_ID is removed after."""
    output = os.path.join(REPO, "test", "output", DEVICE_ID)
    existed = os.path.exists(output)
    ws = make_workspace(str(tmp_path_factory.mktemp("bad_inputs")))
    yield ws
    ws.close()
    if not existed:
        shutil.rmtree(output, ignore_errors=True)


@pytest.fixture(scope="module")
def results(request, workspace):
    """Starts the selected rows in the background; maps row id -> future (code, text, output)."""
    ids = {
        item.callspec.id
        for item in request.session.items
        if getattr(item, "callspec", None) is not None and "bad" in item.callspec.params
    }
    pool = concurrent.futures.ThreadPoolExecutor(PARALLEL)
    futures = {}
    for r in ROWS:
        if r.id in ids and not (r.needs and r.needs(workspace)):
            futures[r.id] = pool.submit(run_row, r, workspace)
    yield futures
    pool.shutdown(wait=True)


def test_the_table_is_big_and_ids_unique():
    assert len(ROWS) >= 25 and len({r.id for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize(
    "bad", [pytest.param(r, id=r.id, marks=[pytest.mark.slow] if r.slow else []) for r in ROWS]
)
def test_bad_input(bad, workspace, results):
    reason = bad.needs and bad.needs(workspace)
    if reason:
        pytest.skip(reason)
    code, checked, output = results[bad.id].result()
    assert "Traceback" not in output, output[-3000:]
    line = last_line(checked)
    assert re.fullmatch(bad.error, line), "{!r} does not match {!r}".format(line, bad.error)
    assert code == bad.code, output[-3000:]
    if bad.id == "cfg_py":
        assert not os.path.exists(workspace.path("ran"))  # the .py config never ran
    if bad.id == "resume_other_model":  # nothing of the first run overwritten
        out = workspace["other_model_out"]
        assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == [_FIRST]
        with open(os.path.join(out, "config.yaml")) as f:
            assert f.read() == "# the first run's config\n"


def markdown(outcomes, root):
    """Returns the Markdown table (input, error line, exit code) of rows run."""
    lines = ["| Input | Error line | Exit code |", "| --- | --- | --- |"]
    for r, (code, checked, _) in outcomes:
        error = last_line(checked).replace(root, "…").replace("|", "\\|")
        lines.append("| {} | `{}` | {} |".format(r.what, error, code))
    return "\n".join(lines) + "\n"


def main():
    """Runs every row and prints the Markdown table."""
    output = os.path.join(REPO, "test", "output", DEVICE_ID)
    existed = os.path.exists(output)
    with tempfile.TemporaryDirectory() as root:
        ws = make_workspace(root)
        rows = [r for r in ROWS if not (r.needs and r.needs(ws))]
        with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
            outcomes = list(zip(rows, pool.map(lambda r: run_row(r, ws), rows)))
        ws.close()
        sys.stdout.write(markdown(outcomes, root))
    if not existed:
        shutil.rmtree(output, ignore_errors=True)


_BUSY = []


def busy_port():
    """Returns a port on which this process listens (for as long as it runs)."""
    if not _BUSY:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        _BUSY.append(sock)
    return _BUSY[0].getsockname()[1]


if __name__ == "__main__":
    main()
