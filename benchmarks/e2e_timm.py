"""End to end against timm's train.py: the same data folder, model, epochs, batch and resolution.

Runs our tools/train_net.py with configs/demo/EN-B3_digits_cpu.yaml (precise BN on, then off)
and, given --timm-train, timm's train.py with the matching flags, one after the other. Prints
for each: wall time, train img/s, seconds per epoch outside the train steps, best and last
top-1; for ours also where the time outside the steps goes (start-up, loader start, precise
BN, test epochs, checkpoint writes, exit).

    python benchmarks/e2e_timm.py [--data DIR] [--timm-train PATH] [--epochs 20] [--batch 32]
        [--im-size 32] [--workers 2] [--runs ours_pbn,ours,timm] [--work DIR]

--data defaults to the digits demo set (tools/make_demo_data.py, written under --work).
timm's train.py is not in its wheel: clone the timm release that is installed, e.g.
`git clone --branch v$(python -c 'import timm; print(timm.__version__)') --depth 1
https://github.com/huggingface/pytorch-image-models` and pass its train.py; without it the timm
run is skipped with a note. timm itself is optional (pip install timm). Nothing is downloaded.
"""

import argparse
import csv
import json
import os
import re
import runpy
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from pycls.core.logging import load_log_data  # noqa: E402

DEMO_CFG = os.path.join(REPO, "configs", "demo", "EN-B3_digits_cpu.yaml")

# Ours, timed by phase in the child (what the trainer calls, through their modules)
PHASES = {
    "loaders": ("pycls.datasets.loader", "construct_loaders"),
    "train_epoch": ("pycls.core.trainer", "train_epoch"),
    "precise_bn": ("pycls.core.net", "compute_precise_bn_stats"),
    "test_epoch": ("pycls.core.trainer", "test_epoch"),
    "checkpoint": ("pycls.core.checkpoint", "save_checkpoint"),
}


def _child(times_path, argv):
    """Runs tools/train_net.py with argv, timing PHASES; writes the times as JSON at exit."""
    import atexit
    import importlib

    times = {name: 0.0 for name in PHASES}
    marks = {"first_train": None, "last_end": None}

    def timed(name, fun):
        def wrapper(*args, **kwargs):
            t0 = time.time()
            if name == "train_epoch" and marks["first_train"] is None:
                marks["first_train"] = t0
            try:
                return fun(*args, **kwargs)
            finally:
                marks["last_end"] = time.time()
                times[name] += marks["last_end"] - t0

        return wrapper

    for name, (module, attr) in PHASES.items():
        mod = importlib.import_module(module)
        setattr(mod, attr, timed(name, getattr(mod, attr)))

    def dump():
        with open(times_path, "w") as f:
            json.dump(dict(times, **marks), f)

    atexit.register(dump)
    sys.argv = [os.path.join(REPO, "tools", "train_net.py")] + argv
    runpy.run_path(sys.argv[0], run_name="__main__")


def run_ours(args, data, precise_bn):
    """Trains ours; returns its figures."""
    name = "ours_pbn" if precise_bn else "ours"
    out_dir, times_path = os.path.join(args.work, name), os.path.join(args.work, name + ".json")
    log_path = os.path.join(args.work, name + ".log")
    opts = ["OPTIM.MAX_EPOCH", args.epochs, "TRAIN.BATCH_SIZE", args.batch]
    opts += ["TRAIN.IM_SIZE", args.im_size, "TEST.IM_SIZE", args.im_size]
    opts += ["DATA_LOADER.NUM_WORKERS", args.workers, "BN.USE_PRECISE_STATS", precise_bn]
    opts += ["OUT_DIR", out_dir, "TRAIN.AUTO_RESUME", False, "NUM_GPUS", 1]
    cmd = [sys.executable, os.path.abspath(__file__), "--child", times_path]
    cmd += ["--cfg", DEMO_CFG, "--data_path", data, "--device", "cpu"] + [str(o) for o in opts]
    t0 = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.time() - t0
    if res.returncode != 0:
        sys.exit("error: {} failed:\n{}".format(name, (res.stdout + res.stderr)[-3000:]))
    with open(log_path, "w") as f:
        f.write(res.stdout + res.stderr)
    stats = load_log_data(log_path)
    train, test = stats["train_epoch"], stats["test_epoch"]
    with open(times_path) as f:
        times = json.load(f)
    steps = sum(train["time_epoch"])
    images = sum(t * fps for t, fps in zip(train["time_epoch"], train["fps"]))
    top1 = [100.0 - err for err in test["top1_err"]]
    parts = {
        "start-up": times["first_train"] - t0 - times["loaders"],
        "loader start": times["loaders"],
        "train epoch outside steps": times["train_epoch"] - steps,
        "precise BN": times["precise_bn"],
        "test epochs": times["test_epoch"],
        "checkpoints": times["checkpoint"],
        "exit": t0 + wall - times["last_end"],
    }
    outside = (wall - steps) / args.epochs
    return {"name": name, "wall": wall, "img_s": images / steps, "outside": outside,
            "best": max(top1), "last": top1[-1], "parts": parts}  # fmt: skip


def run_timm(args, data):
    """Trains timm's EN-B3 with its train.py (the settings of the demo config); its figures."""
    out_dir = os.path.join(args.work, "timm")
    cmd = [sys.executable, args.timm_train, data, "--train-split", "train", "--val-split", "val"]
    cmd += ["--model", "efficientnet_b3", "--num-classes", "10", "--img-size", str(args.im_size)]
    cmd += ["-b", str(args.batch), "--epochs", str(args.epochs), "--opt", "adam", "--lr", "0.002"]
    cmd += ["--weight-decay", "0", "--sched", "cosine", "--warmup-epochs", "0"]
    cmd += ["--cooldown-epochs", "0", "--scale", "0.35", "1", "--hflip", "0"]
    cmd += ["--color-jitter", "0", "--smoothing", "0", "--drop", "0", "--drop-path", "0"]
    cmd += ["--reprob", "0", "--crop-pct", "1.0", "--workers", str(args.workers)]
    cmd += ["--device", "cpu", "--no-prefetcher", "--channels-last", "--output", out_dir]
    cmd += ["--experiment", "run", "--log-interval", "5", "--seed", "0"]
    t0 = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=args.work)
    wall = time.time() - t0
    if res.returncode != 0:
        sys.exit("error: timm's train.py failed:\n{}".format((res.stdout + res.stderr)[-3000:]))
    with open(os.path.join(out_dir, "run", "summary.csv")) as f:
        top1 = [float(row["eval_top1"]) for row in csv.DictReader(f)]
    # "Train: EPOCH [ IDX/UPDATES (PCT%)]  Loss: ..  Time: ..s, ../s  (AVG_S, ../s)": an epoch's
    # last line holds the average time of its UPDATES steps (data wait included, as ours)
    steps = images = 0.0
    last = {}
    for line in (res.stdout + res.stderr).splitlines():
        m = re.search(r"Train: (\d+) \[\s*\d+/(\d+) .*?\(([\d.]+)s,\s*[\d.]+/s\)", line)
        if m:
            last[int(m.group(1))] = (int(m.group(2)), float(m.group(3)))
    for batches, avg_s in last.values():
        steps, images = steps + batches * avg_s, images + batches * args.batch
    return {
        "name": "timm", "wall": wall, "img_s": images / steps if steps else float("nan"),
        "outside": (wall - steps) / args.epochs, "best": max(top1), "last": top1[-1], "parts": {},
    }  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="a folder with train/ and val/ (default: the digits demo)")
    parser.add_argument("--timm-train", help="timm's train.py (from the installed timm's release)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--im-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", default="ours_pbn,ours,timm", help="which runs, in order")
    parser.add_argument("--work", help="a folder for the runs' output (default: a temporary one)")
    args = parser.parse_args()
    runs = args.runs.split(",")
    bad = [r for r in runs if r not in ("ours_pbn", "ours", "timm")]
    if bad:
        parser.error("unknown run {}; choose from ours_pbn, ours, timm".format(bad[0]))
    if args.data and not os.path.isdir(os.path.join(args.data, "train")):
        sys.exit("error: --data {} has no train/ folder".format(args.data))
    if "timm" in runs and not args.timm_train:
        print("note: no --timm-train PATH given; skipping timm's run (see this script's help)")
        runs.remove("timm")
    elif "timm" in runs and not os.path.isfile(args.timm_train):
        sys.exit("error: --timm-train {} is not a file; pass timm's train.py".format(
            args.timm_train))  # fmt: skip
    args.work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="e2e_timm_"))
    os.makedirs(args.work, exist_ok=True)
    data = args.data or os.path.join(args.work, "demo_data")
    if not os.path.isdir(os.path.join(data, "train")):  # the digits demo, written once
        tool = os.path.join(REPO, "tools", "make_demo_data.py")
        subprocess.run([sys.executable, tool, data], check=True, stdout=subprocess.DEVNULL)
    import torch

    print("EN-B3, {} epochs, batch {}, {} px, {} workers, CPU, torch {}, {} threads, data {}"
          .format(args.epochs, args.batch, args.im_size, args.workers, torch.__version__,
                  torch.get_num_threads(), data))  # fmt: skip
    results = [run_timm(args, data) if r == "timm" else run_ours(args, data, r == "ours_pbn")
               for r in runs]  # fmt: skip
    print("\n{:<9} {:>8} {:>10} {:>16} {:>8} {:>8}".format(
        "run", "wall s", "train img/s", "outside s/epoch", "best %", "last %"))  # fmt: skip
    for r in results:
        print("{name:<9} {wall:>8.1f} {img_s:>10.1f} {outside:>16.2f} {best:>8.2f} {last:>8.2f}"
              .format(**r))  # fmt: skip
    for r in results:
        if r["parts"]:
            parts = ", ".join("{} {:.1f}".format(k, v) for k, v in r["parts"].items())
            print("{} outside the steps, s in all: {}".format(r["name"], parts))
    peer = [r for r in results if r["name"] == "timm"]
    for r in results:
        if peer and r is not peer[0]:
            print("{}/timm wall time: {:.2f}x".format(r["name"], r["wall"] / peer[0]["wall"]))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3:])
    else:
        main()
