"""Train data pipeline speed per worker: ours against torchvision's ImageFolder baseline.

Writes realistic JPEGs (about 500x375, quality 90, cut from scikit-learn's sample photos) to a
temporary folder in ImageNet layout, then times one loader process (num_workers 0, one torch
thread, as in a DataLoader worker) of each pipeline in turn, a few rounds, and prints images/s
(best and median), the ratio, and where the time of each pipeline goes, stage by stage.

    python benchmarks/loader.py [--num_images 200] [--rounds 3] [--im_size 224] [--augment ""]

Numbers only; nothing about time is asserted.
"""

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch
import torchvision.transforms as tv1
from PIL import Image
from sklearn.datasets import load_sample_images
from torch.utils.data import DataLoader, default_collate
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from pycls.core.config import cfg, reset_cfg
from pycls.datasets import imagenet, loader, transforms

# Size of the generated photos (width, height) and their JPEG quality
PHOTO_SIZE = (500, 375)
JPEG_QUALITY = 90


def make_jpegs(root, num_images, num_classes, seed=0):
    """Writes num_images JPEGs (random crops of the sample photos) in train/<class>/ folders."""
    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(num_images):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = rng.integers(h // 2, h + 1), rng.integers(w // 2, w + 1)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        im = Image.fromarray(photo[y : y + ch, x : x + cw]).resize(PHOTO_SIZE, Image.BILINEAR)
        folder = os.path.join(root, "train", "class_{}".format(i % num_classes))
        os.makedirs(folder, exist_ok=True)
        paths.append(os.path.join(folder, "{:05d}.jpg".format(i)))
        im.save(paths[-1], quality=JPEG_QUALITY)
    return paths


def baseline_transform(im_size):
    """Returns torchvision's classic ImageNet train transform (PIL, then float tensors)."""
    crop = [tv1.RandomResizedCrop(im_size), tv1.RandomHorizontalFlip()]
    normalise = [tv1.ToTensor(), tv1.Normalize(transforms.MEAN, transforms.STD)]
    return tv1.Compose(crop + normalise)


def baseline_loader(root, im_size, batch_size):
    """Returns the baseline loader: ImageFolder with the classic transform."""
    dataset = ImageFolder(os.path.join(root, "train"), baseline_transform(im_size))
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0)


def our_loader(root, args):
    """Returns our train loader for the folder, configured through cfg."""
    reset_cfg()
    cfg.TRAIN.DATASET = "imagenet"
    cfg.DATA_LOADER.DATA_PATH = root
    cfg.DATA_LOADER.NUM_WORKERS = 0
    cfg.TRAIN.IM_SIZE = args.im_size
    cfg.TRAIN.BATCH_SIZE = args.batch_size
    cfg.TRAIN.AUGMENT = args.augment
    cfg.TRAIN.PCA_STD = args.pca_std
    cfg.MODEL.NUM_CLASSES = args.num_classes
    return loader.construct_train_loader(device="cpu")


def images_per_second(data_loader):
    """Runs one epoch and returns images/s."""
    count, start = 0, time.perf_counter()
    for inputs, _ in data_loader:
        count += inputs.shape[0]
    return count / (time.perf_counter() - start)


def timed(fn, items, rounds):
    """Applies fn to every item, rounds times; returns (results, best seconds per item)."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        out = [fn(item) for item in items]
        best = min(best, (time.perf_counter() - start) / len(items))
    return out, best


def collate_time(samples, batch_size, rounds):
    """Returns the best seconds per image of collating samples into batches."""
    batches = [samples[i : i + batch_size] for i in range(0, len(samples), batch_size)]
    return timed(default_collate, batches, rounds)[1] * len(batches) / len(samples)


def our_stages(paths, args):
    """Times our pipeline stage by stage; returns {stage: seconds per image}."""
    ops = transforms.train_transform(args.im_size, args.augment, args.pca_std).transforms
    crop_types = (v2.ToImage, v2.RandomResizedCrop, v2.RandomHorizontalFlip)
    crop = v2.Compose([op for op in ops if isinstance(op, crop_types)])
    rest = v2.Compose([op for op in ops if not isinstance(op, crop_types)])
    images, decode = timed(imagenet.load_image, paths, args.rounds)
    crops, resize = timed(crop, images, args.rounds)
    outs, normalise = timed(rest, crops, args.rounds)
    collate = collate_time([(x, 0) for x in outs], args.batch_size, args.rounds)
    names = ["decode", "crop+resize+flip", "augment+lighting+normalise", "collate"]
    return dict(zip(names, [decode, resize, normalise, collate]))


def baseline_stages(paths, args):
    """Times the baseline pipeline stage by stage; returns {stage: seconds per image}."""
    ops = baseline_transform(args.im_size).transforms
    images, decode = timed(lambda p: Image.open(p).convert("RGB"), paths, args.rounds)
    crops, resize = timed(tv1.Compose(ops[:2]), images, args.rounds)
    outs, normalise = timed(tv1.Compose(ops[2:]), crops, args.rounds)
    collate = collate_time([(x, 0) for x in outs], args.batch_size, args.rounds)
    names = ["decode", "crop+resize+flip", "to_tensor+normalise", "collate"]
    return dict(zip(names, [decode, resize, normalise, collate]))


def decoder_times(paths, rounds):
    """Returns the best seconds per image of our decoder and of PIL (to a uint8 tensor)."""

    def pil(path):
        with open(path, "rb") as f:
            return imagenet._decode_pil(f.read())

    return timed(imagenet.load_image, paths, rounds)[1], timed(pil, paths, rounds)[1]


def print_stages(title, stages):
    """Prints a stage breakdown in ms per image and percent."""
    total = sum(stages.values())
    print("{} (sum {:.3f} ms/image):".format(title, total * 1e3))
    for name, sec in stages.items():
        print("  {:28s} {:7.3f} ms/image {:5.1f}%".format(name, sec * 1e3, 100 * sec / total))


def main():
    """Writes the photos, times both pipelines and prints the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_images", type=int, default=200)
    parser.add_argument("--num_classes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--im_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--augment", default="")
    parser.add_argument("--pca_std", type=float, default=0.1)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker
    with tempfile.TemporaryDirectory() as root:
        paths = make_jpegs(root, args.num_images, args.num_classes)
        ours_loader = our_loader(root, args)
        base_loader = baseline_loader(root, args.im_size, args.batch_size)
        ours, base = [], []
        for _ in range(args.rounds):
            base.append(images_per_second(base_loader))
            ours.append(images_per_second(ours_loader))
        print("{} JPEGs {}x{} q{}, {} classes; crop {}, batch {}, augment {!r}, pca_std {}".format(
            len(paths), *PHOTO_SIZE, JPEG_QUALITY, args.num_classes, args.im_size,
            args.batch_size, args.augment, args.pca_std,
        ))  # fmt: skip
        print("torch {}, 1 thread, num_workers 0, {} rounds".format(torch.__version__, args.rounds))
        for name, rates in (("torchvision ImageFolder", base), ("pycls loader", ours)):
            best, median = max(rates), statistics.median(rates)
            print("{:24s} best {:7.1f} images/s, median {:7.1f}".format(name, best, median))
        ratio = max(ours) / max(base), statistics.median(ours) / statistics.median(base)
        print("ratio ours/torchvision: best {:.2f}x, median {:.2f}x".format(*ratio))
        print_stages("pycls pipeline", our_stages(paths, args))
        print_stages("torchvision baseline", baseline_stages(paths, args))
        ours_decode, pil_decode = decoder_times(paths, args.rounds)
        name = "torchvision decode_jpeg" if imagenet.decode_jpeg is not None else "PIL"
        msg = "decode to a uint8 tensor: ours ({}) {:.3f} ms/image, PIL {:.3f} ms/image"
        print(msg.format(name, ours_decode * 1e3, pil_decode * 1e3))


if __name__ == "__main__":
    main()
