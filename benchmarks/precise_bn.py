#!/usr/bin/env python3
"""Measures what precise BN costs per epoch: forward passes in train mode without gradients.

After each epoch, precise BN (BN.USE_PRECISE_STATS, on by default as in pycls) runs the model
over BN.NUM_SAMPLES_PRECISE training images (8192) in train mode under no_grad. This times
that forward pass for the model of a config (default: the seed's EN-B3 at 300 px) on random
input at a small batch, and prints the time per image and the time for NUM_SAMPLES_PRECISE
images extrapolated from it (data loading left out). It asserts nothing about time.

Example:
    python benchmarks/precise_bn.py --device cpu --batch_size 8 --iters 5
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# ImageNet's train set size: the images of one epoch
IMAGENET_TRAIN = 1281167

_DEFAULT_CFG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "configs/dds_baselines/effnet/EN-B3_dds_1npu_full.yaml",
)


def parse_args(argv):
    """Parses the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", default=_DEFAULT_CFG, help="model config (seed's EN-B3)")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "gpu", "npu"])
    parser.add_argument("--batch_size", type=int, default=8, help="images per forward (8)")
    parser.add_argument("--iters", type=int, default=5, help="timed forwards (5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed forwards first (2)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config KEY VALUE overrides")
    return parser.parse_args(argv)


def time_forward(model, x, iters, warmup, device):
    """Returns (wall seconds, CPU seconds of this process) per forward pass in train mode
    under no_grad."""
    import torch

    import pycls.core.device as devices

    model.train()
    with torch.no_grad():
        for _ in range(warmup):
            model(x)
        devices.synchronize(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(iters):
            model(x)
        devices.synchronize(device)
    return (time.perf_counter() - start) / iters, (time.process_time() - cpu_start) / iters


def main(argv=None):
    """Prints the precise BN forward time per image and per NUM_SAMPLES_PRECISE images."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import torch

    import pycls.core.builders as builders
    import pycls.core.config as config
    import pycls.core.device as devices
    from pycls.core.config import cfg

    config.load_cfg(args.cfg, args.opts)
    device = devices.setup(args.device)
    size = cfg.TRAIN.IM_SIZE
    model = builders.build_model().to(device, memory_format=devices.memory_format(device))
    x = torch.randn(args.batch_size, 3, size, size, device=device)
    x = x.contiguous(memory_format=devices.memory_format(device))
    wall, cpu = time_forward(model, x, args.iters, args.warmup, device)
    per_image, cpu_per_image = wall / args.batch_size, cpu / args.batch_size
    samples, threads = cfg.BN.NUM_SAMPLES_PRECISE, torch.get_num_threads()
    print("model {} at {} px on {} ({} threads, load average {:.1f})".format(
        cfg.MODEL.TYPE, size, device, threads, os.getloadavg()[0]))  # fmt: skip
    print("measured: forward in train mode, no grad, batch {}: {:.1f} ms/image wall, {:.1f} "
          "ms/image CPU time of this process ({} iters)".format(
        args.batch_size, 1000 * per_image, 1000 * cpu_per_image, args.iters))  # fmt: skip
    print("extrapolated: precise BN over {} images: {:.0f} s per epoch at the measured wall "
          "time".format(samples, samples * per_image))  # fmt: skip
    if device.type == "cpu":
        print("extrapolated: {:.0f} s per epoch on {} otherwise idle cores (CPU time / {} "
              "threads)".format(samples * cpu_per_image / threads, threads, threads))  # fmt: skip
    print("extrapolated: that is {:.2f}% of {} forward passes (one ImageNet epoch, forward "
          "only; training also runs the backward pass)".format(
        100.0 * samples / IMAGENET_TRAIN, IMAGENET_TRAIN))  # fmt: skip


if __name__ == "__main__":
    main()
