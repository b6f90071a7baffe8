#!/usr/bin/env python3
"""Writes a small real data set in ImageNet layout from scikit-learn's digits (no network).

    python tools/make_demo_data.py OUT_DIR [--size 32] [--val_fraction 0.2] [--seed 0] [--force]

The 1797 8x8 digit images (10 classes) are scaled to SIZE x SIZE RGB JPEGs (quality 95) and
split per class (stratified, fixed seed) into OUT_DIR/train/digit_<d>/ and OUT_DIR/val/digit_<d>/.
A non-empty OUT_DIR is refused unless --force is given (which writes over same-named files).
"""

import argparse
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pycls.core.errors import PyclsError  # noqa: E402
from pycls.launch.cli import run_cli  # noqa: E402

# JPEG quality of the written images
JPEG_QUALITY = 95

# Name of the class folder of a digit
CLASS_NAME = "digit_{}"


def _split(labels, val_fraction, seed):
    """Returns the indices of the train and val images: per class, a seeded random split."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        num_val = int(round(len(idx) * val_fraction))
        val.extend(idx[:num_val].tolist())
        train.extend(idx[num_val:].tolist())
    return sorted(train), sorted(val)


def _to_image(digit, size):
    """Turns one 8x8 digit (values 0..16) into a size x size RGB PIL image."""
    grey = Image.fromarray(np.round(digit * (255.0 / 16.0)).astype(np.uint8), "L")
    return grey.resize((size, size), Image.BICUBIC).convert("RGB")


def write_demo_data(out_dir, size=32, val_fraction=0.2, seed=0, force=False):
    """Writes the digits data set to out_dir; returns {split: number of images written}."""
    from sklearn.datasets import load_digits

    if size < 8:
        raise PyclsError("--size {} is too small; give 8 or more".format(size))
    if not 0.0 < val_fraction < 1.0:
        raise PyclsError("--val_fraction {} must be between 0 and 1".format(val_fraction))
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not force:
        msg = "{} is not empty; pass --force to write into it, or pick an empty folder"
        raise PyclsError(msg.format(out_dir))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise PyclsError("{} is a file, not a folder; pick another OUT_DIR".format(out_dir))
    digits = load_digits()
    counts = {}
    for split, indices in zip(("train", "val"), _split(digits.target, val_fraction, seed)):
        for i in indices:
            folder = os.path.join(out_dir, split, CLASS_NAME.format(digits.target[i]))
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, "{:04d}.jpg".format(i))
            _to_image(digits.images[i], size).save(path, quality=JPEG_QUALITY)
        counts[split] = len(indices)
    return counts


def main():
    """Parses the arguments, writes the data set and says what was written."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="folder to write train/ and val/ into")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (32)")
    parser.add_argument("--val_fraction", type=float, default=0.2, help="share of val (0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (0)")
    parser.add_argument("--force", action="store_true", help="write into a non-empty folder")
    args = parser.parse_args()
    try:
        counts = write_demo_data(args.out_dir, args.size, args.val_fraction, args.seed, args.force)
    except OSError as e:
        msg = "cannot write to {}: {}; pick a writable folder"
        raise PyclsError(msg.format(args.out_dir, e)) from None
    msg = "wrote {} train and {} val images ({}x{} RGB JPEG, 10 classes {}..{}) to {}"
    first, last = CLASS_NAME.format(0), CLASS_NAME.format(9)
    print(
        msg.format(counts["train"], counts["val"], args.size, args.size, first, last, args.out_dir)
    )


if __name__ == "__main__":
    run_cli(main)
