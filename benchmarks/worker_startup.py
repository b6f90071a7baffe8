#!/usr/bin/env python3
"""Start-up cost of the loader workers' start methods: time to the first batch.

    python benchmarks/worker_startup.py [--workers 2] [--rounds 5] [--methods fork,forkserver,spawn]

Each round starts one fresh process per start method (DATA_LOADER.MP_CONTEXT), in turn, on
the digits demo data (16px, written to a temp dir). The process imports pycls and torch,
starts a thread (as a rank has), then times: building the train loader and getting its first
batch (the first loader of a process also starts the forkserver), then the same for the test
loader (a second loader: the server is up). Prints the median and best of the rounds.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(method, data_path, workers):
    """Times the first batch of a train and a test loader; prints {name: seconds} as JSON."""
    import threading
    import time

    sys.path.insert(0, REPO)
    from pycls.core.config import cfg
    from pycls.datasets import loader

    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
    cfg.TRAIN.DATASET = cfg.TEST.DATASET = "imagenet"
    cfg.DATA_LOADER.DATA_PATH, cfg.DATA_LOADER.NUM_WORKERS = data_path, workers
    cfg.DATA_LOADER.MP_CONTEXT, cfg.MODEL.NUM_CLASSES = method, 10
    cfg.TRAIN.IM_SIZE = cfg.TEST.IM_SIZE = 16
    times = {}
    for name, build in (
        ("train", loader.construct_train_loader),
        ("test", loader.construct_test_loader),
    ):
        start = time.perf_counter()
        next(iter(build(device="cpu")))
        times[name] = time.perf_counter() - start
    print(json.dumps(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="workers per loader (2)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (5)")
    parser.add_argument("--methods", default="fork,forkserver,spawn", help="start methods")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.workers)
        return
    methods = args.methods.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "digits")
        tool = os.path.join(REPO, "tools", "make_demo_data.py")
        subprocess.run([sys.executable, tool, data, "--size", "16"], check=True)
        results = {m: {"train": [], "test": []} for m in methods}
        for _ in range(args.rounds):
            for m in methods:
                cmd = [sys.executable, __file__, "--workers", str(args.workers), "--child", m, data]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                for name, seconds in json.loads(out.strip().splitlines()[-1]).items():
                    results[m][name].append(seconds)
    print("workers per loader: {}, rounds: {}".format(args.workers, args.rounds))
    print("| start method | 1st loader, 1st batch (s): median / best | 2nd loader: median / best |")
    print("| --- | --- | --- |")
    for m in methods:
        train, test = results[m]["train"], results[m]["test"]
        row = "| {} | {:.2f} / {:.2f} | {:.2f} / {:.2f} |"
        print(
            row.format(m, statistics.median(train), min(train), statistics.median(test), min(test))
        )


if __name__ == "__main__":
    main()
