"""Helpers for the data tests: tiny image folders, bad files and the demo data tool."""

import os

import numpy as np
from conftest import load_tool
from PIL import Image


def save_image(path, size=(12, 10), mode="RGB", seed=0, **kwargs):
    """Writes a random image of a PIL mode to path (format from the extension)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    im = Image.fromarray(arr, "RGB")
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65536, (size[1], size[0])).astype(np.uint16))
    elif mode != "RGB":
        im = im.convert(mode)
    im.save(path, **kwargs)
    return path


def make_image_folder(root, classes=("a", "b"), counts=None, size=(12, 10)):
    """Writes root/<split>/<class>/<i>.jpg for each split in counts ({split: per class})."""
    counts = counts or {"train": 6, "val": 3}
    for split, per_class in counts.items():
        for c, name in enumerate(classes):
            for i in range(per_class):
                path = os.path.join(root, split, name, "{}.jpg".format(i))
                save_image(path, size, seed=100 * c + i)
    return root


def write_bad_file(path, kind):
    """Writes a bad image file: 'truncated' JPEG, 'text' or 'empty'."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if kind == "truncated":
        save_image(path, size=(64, 48), quality=95)
        with open(path, "rb") as f:
            data = f.read()
        data = data[: len(data) // 2]
    else:
        data = b"this is not an image\n" if kind == "text" else b""
    with open(path, "wb") as f:
        f.write(data)
    return path


def write_demo_data(out_dir, size=16):
    """Writes the digits demo data set (tools/make_demo_data.py) and returns out_dir."""
    load_tool("make_demo_data").write_demo_data(str(out_dir), size=size)
    return str(out_dir)


def write_huge_header_image(path, width, height):
    """Writes a small JPEG or PNG (by extension) whose header claims width x height pixels,
    as a decompression bomb does; a decoder that trusts the header allocates the full size."""
    import struct
    import zlib

    save_image(path, size=(16, 16), format="PNG" if path.endswith(".png") else "JPEG")
    with open(path, "rb") as f:
        data = bytearray(f.read())
    if path.endswith(".png"):  # IHDR: length, type, width, height, ..., CRC
        data[16:24] = struct.pack(">II", width, height)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    else:  # SOF0 frame header: FF C0, length, precision, height, width
        i = data.index(b"\xff\xc0")
        data[i + 5 : i + 9] = struct.pack(">HH", height, width)
    with open(path, "wb") as f:
        f.write(bytes(data))
    return path
