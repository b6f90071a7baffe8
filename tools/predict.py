#!/usr/bin/env python3
"""Print the top-k classes of images (files or folders) for a trained model.

Each image goes through the test transform (short side resized to TEST.IM_SIZE, center crop
TRAIN.IM_SIZE, channels in INPUT.CHANNEL_ORDER, normalise), as in testing. Folders are searched
recursively for files with an image extension, following links but listing each real file once
(as the dataset does). Class names come from --names (one per line), else from the class folders
of the dataset (--data_path, else DATA_LOADER.DATA_PATH of --cfg or of the checkpoint's config),
else the class indices are printed. An unreadable image is reported on its own line; the run then
ends with a non-zero exit.

Example:
    python tools/predict.py --cfg configs/dds_baselines/effnet/EN-B3_dds_8gpu.yaml \\
        --weights model.pyth photos/ cat.jpg --topk 3 [KEY VALUE ...]
"""

import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pycls.core.errors import PyclsError  # noqa: E402
from pycls.launch.cli import run_cli  # noqa: E402

# A word that starts the config overrides (a key like TEST.IM_SIZE or DEVICE)
_KEY_RE = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)*$")


def parse_args(argv):
    """Parses the command line; returns (args, image paths, config overrides)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cfg", required=True, help="config file (.yaml) of the model")
    parser.add_argument("--weights", help="checkpoint (.pyth); default TEST.WEIGHTS")
    parser.add_argument("--names", help="class names file, one name per line")
    parser.add_argument("--data_path", help="dataset folder whose class folders name classes")
    parser.add_argument("--topk", type=int, default=5, help="classes shown per image (5)")
    parser.add_argument("--device", choices=["auto", "cpu", "gpu", "npu"], help="sets DEVICE")
    parser.add_argument("--batch_size", type=int, default=16, help="images per forward (16)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead")
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="PATH_OR_KEY_VALUE",
        help="image files or folders, then optional config KEY VALUE overrides (the first "
        "word that is a config key, like TEST.IM_SIZE, starts them)",
    )
    args = parser.parse_args(argv)
    if args.topk < 1 or args.batch_size < 1:
        raise PyclsError("--topk and --batch_size must be 1 or more")
    paths, opts = split_inputs(args.inputs)
    if not paths:
        raise PyclsError("no image files or folders given; list them after the flags")
    return args, paths, opts


def split_inputs(inputs):
    """Splits trailing words into paths and config overrides (from the first config key)."""
    for i, word in enumerate(inputs):
        if _KEY_RE.match(word) and not os.path.exists(word):
            return inputs[:i], inputs[i:]
    return list(inputs), []


def list_images(paths):
    """Lists the images to predict: files as given, folders searched (each file once)."""
    from pycls.datasets.imagenet import IMAGE_EXTENSIONS, scan_images

    folders = [p for p in paths if os.path.isdir(p)]
    lists, skipped = scan_images(folders)
    images, reals = [], []
    for path in paths:
        if not os.path.isdir(path):
            images.append(path)
            continue
        found = lists.pop(0)
        real = os.path.join(os.path.realpath(path), "")
        if not found and not any(real.startswith(r) for r in reals):
            exts = ", ".join(IMAGE_EXTENSIONS)
            raise PyclsError("folder {} holds no images ({})".format(path, exts))
        reals.append(real)
        images += [os.path.join(path, p) for p in found]
    if skipped:
        msg = "note: skipped {} links to files or folders already listed (or to nothing)"
        print(msg.format(skipped), file=sys.stderr)
    return images


def _checkpoint_data_path(weights):
    """Returns DATA_LOADER.DATA_PATH of the config saved in a checkpoint ('' if none)."""
    import torch
    import yaml

    try:
        text = torch.load(weights, map_location="cpu", weights_only=True).get("cfg")
        data = yaml.safe_load(text) if isinstance(text, str) else text
        return data["DATA_LOADER"]["DATA_PATH"] or ""
    except Exception:  # no usable config in the checkpoint: fall back to class indices
        return ""


def _folder_classes(data_path, cfg):
    """Returns the sorted class folder names of a dataset folder (its train or val split)."""
    from pycls.datasets.imagenet import find_classes

    for split in (cfg.TRAIN.SPLIT, cfg.TEST.SPLIT):
        if os.path.isdir(os.path.join(data_path, split)):
            return find_classes(os.path.join(data_path, split))
    return find_classes(data_path)


def read_names_file(path):
    """Reads class names, one per line (blank lines at the end ignored)."""
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f.read().rstrip("\n").split("\n")]
    except (OSError, UnicodeDecodeError) as e:
        raise PyclsError("cannot read class names file {} ({})".format(path, e)) from e
    return names


def _checked(names, source, num_classes):
    """Returns the class names, or raises a PyclsError when their count is wrong."""
    if len(names) != num_classes:
        msg = "{} gives {} class names but the model has {} classes (MODEL.NUM_CLASSES); "
        msg += "pass a --names file with one name per class"
        raise PyclsError(msg.format(source, len(names), num_classes))
    return names


def class_names(args, cfg, weights):
    """Returns the class names (a list), or None to print class indices."""
    num_classes = cfg.MODEL.NUM_CLASSES
    if args.names:
        return _checked(read_names_file(args.names), args.names, num_classes)
    if args.data_path:
        if not os.path.isdir(args.data_path):
            raise PyclsError("--data_path {} is not a folder".format(args.data_path))
        return _checked(_folder_classes(args.data_path, cfg), args.data_path, num_classes)
    # The dataset of the config or checkpoint may be elsewhere: use it only where it fits
    data_path = cfg.DATA_LOADER.DATA_PATH or _checkpoint_data_path(weights)
    if not data_path or not os.path.isdir(data_path):
        return None
    try:
        return _checked(_folder_classes(data_path, cfg), data_path, num_classes)
    except PyclsError as e:
        print("note: printing class indices: {}".format(e), file=sys.stderr)
        return None


def _read(path, transform):
    """Reads and transforms one image; returns (tensor, None) or (None, reason)."""
    from pycls.datasets.imagenet import load_image

    try:
        return transform(load_image(path)), None
    except Exception as e:  # any failure to read or decode is reported on the image's line
        return None, _reason(e)


def _reason(error):
    """Returns a short reason why an image could not be read."""
    from PIL import UnidentifiedImageError

    if isinstance(error, UnidentifiedImageError):
        return "not an image format that can be read"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def predict(model, images, transform, device, topk, batch_size):
    """Yields one result dict per image: path and top-k (class, prob) or the error."""
    import torch

    for start in range(0, len(images), batch_size):
        batch = [(p,) + _read(p, transform) for p in images[start : start + batch_size]]
        good = [t for _, t, _ in batch if t is not None]
        if good:
            with torch.inference_mode():
                logits = model(torch.stack(good).to(device))
                probs, classes = torch.softmax(logits.float(), dim=1).topk(topk, dim=1)
            probs, classes = probs.cpu().tolist(), classes.cpu().tolist()
        for path, tensor, error in batch:
            if tensor is None:
                yield {"path": path, "error": error}
            else:
                yield {"path": path, "topk": list(zip(classes.pop(0), probs.pop(0)))}


def to_output(result, names):
    """Turns a result into its JSON form (classes with names and probabilities)."""
    if "error" in result:
        return result
    topk = [
        {"class": c, "name": names[c] if names else str(c), "prob": p} for c, p in result["topk"]
    ]
    return {"path": result["path"], "topk": topk}


def format_line(output):
    """Formats a result as 'path: name (prob%), ...' or 'path: error: reason'."""
    if "error" in output:
        return "{}: error: {}".format(output["path"], output["error"])
    classes = ", ".join("{} ({:.2f}%)".format(t["name"], 100 * t["prob"]) for t in output["topk"])
    return "{}: {}".format(output["path"], classes)


def setup_model(args, opts):
    """Loads cfg, builds the model and loads the weights; returns (model, device, weights)."""
    import pycls.core.builders as builders
    import pycls.core.checkpoint as cp
    import pycls.core.config as config
    import pycls.core.device as devices
    import pycls.core.net as net
    from pycls.core.config import cfg

    config.load_cfg(args.cfg, list(opts) + (["DEVICE", args.device] if args.device else []))
    weights = args.weights or cfg.TEST.WEIGHTS
    if not weights:
        raise PyclsError("no weights given; pass --weights FILE.pyth (or TEST.WEIGHTS FILE)")
    model = builders.build_model()
    cp.load_weights(weights, model)
    device = devices.setup(cfg.DEVICE)
    return net.fold_bn(model.to(device)), device, weights


def main(argv=None):
    """Predicts the top-k classes of the given images and prints them."""
    args, paths, opts = parse_args(sys.argv[1:] if argv is None else argv)
    from pycls.core.config import cfg
    from pycls.datasets.transforms import test_transform

    images = list_images(paths)
    model, device, weights = setup_model(args, opts)
    names = class_names(args, cfg, weights)
    transform = test_transform(cfg.TEST.IM_SIZE, cfg.TRAIN.IM_SIZE, cfg.INPUT.CHANNEL_ORDER)
    topk = min(args.topk, cfg.MODEL.NUM_CLASSES)
    outputs = []
    for result in predict(model, images, transform, device, topk, args.batch_size):
        outputs.append(to_output(result, names))
        if not args.json:
            print(format_line(outputs[-1]), flush=True)
    if args.json:
        print(json.dumps(outputs, indent=2))
    failed = [o["path"] for o in outputs if "error" in o]
    if failed:
        msg = "{} of {} images could not be read (first: {})"
        raise PyclsError(msg.format(len(failed), len(outputs), failed[0]))


if __name__ == "__main__":
    run_cli(main)
