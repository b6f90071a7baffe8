"""Image folder dataset in ImageNet layout: DATA_PATH/<split>/<class>/<image>.

Classes are the sorted names of the split's sub-folders; images are the files below them with
an image extension (any case), hidden files and folders left out. Symbolic links are followed
wherever they point, each real folder and file once (see scan_images): a link to a folder
already walked or to a file already listed is skipped, and the count is logged. An image above
PIL.Image.MAX_IMAGE_PIXELS is refused by every decoder. An unreadable image is logged once,
counted (across DataLoader workers, see BadFiles) and replaced by the next readable one, so a
few corrupt files do not end a long run.
"""

import io
import logging
import os
import re
import warnings

import numpy as np
import torch
import torch.utils.data
from PIL import Image, UnidentifiedImageError

from pycls.core.errors import PyclsError

# libjpeg-turbo straight to a tensor is faster than PIL (benchmarks/loader.py); PIL is the fallback
try:
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # torchvision deprecated its decoders in 0.29 and may drop them
    decode_jpeg = None

logger = logging.getLogger(__name__)

# File extensions read as images (compared in lower case)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# An image is replaced by the next readable one among this many (else the data set is broken)
_MAX_TRIES = 50

# How many names an error message lists
_MAX_NAMES = 10

# Start of every JPEG file
_JPEG_MAGIC = b"\xff\xd8\xff"

# Decode mode of torchvision's JPEG decoder (CMYK and grey come out as RGB)
_RGB = ImageReadMode.RGB if decode_jpeg is not None else None


def _names(names):
    """Joins a few names for a message, saying how many more there are."""
    names = sorted(names)
    more = len(names) - _MAX_NAMES
    return ", ".join(names[:_MAX_NAMES]) + (" and {} more".format(more) if more > 0 else "")


def _to_rgb(im):
    """Converts a PIL image of any mode (L, P, RGBA, CMYK, I;16, ...) to RGB."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # 16-bit grey: scale to 8 bits (a plain convert would clip at 255)
        arr = np.asarray(im, dtype=np.float32) / 257.0
        im = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L")
    elif im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")


class ImageTooLarge(ValueError):
    """An image above the decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS)."""


# Most bytes an image file within the pixel limit needs (16-bit RGBA PNG, 8 bytes a pixel)
_BYTES_PER_PIXEL = 8


def _too_large(pixels):
    """Returns an ImageTooLarge error for an image of that many pixels."""
    msg = "image size ({} pixels) exceeds the limit of {} pixels (PIL.Image.MAX_IMAGE_PIXELS)"
    return ImageTooLarge(msg.format(pixels, Image.MAX_IMAGE_PIXELS))


def _jpeg_size(data):
    """Reads (width, height) from a JPEG's frame header without decoding, or None."""
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0xD8 or 0xD0 <= marker <= 0xD7 or marker == 0x01:
            i += 2
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # frame header
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return width, height
        else:
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def _check_pixels(size):
    """Raises ImageTooLarge when a (width, height) is above PIL.Image.MAX_IMAGE_PIXELS."""
    limit = Image.MAX_IMAGE_PIXELS
    if size is not None and limit and size[0] * size[1] > limit:
        raise _too_large(size[0] * size[1])


def _decode_pil(data):
    """Decodes image bytes with PIL into an RGB uint8 CHW tensor (bomb limit enforced)."""
    with warnings.catch_warnings():
        # PIL only warns between 1x and 2x MAX_IMAGE_PIXELS; refuse those as well
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as im:
                _check_pixels(im.size)
                arr = np.array(_to_rgb(im), dtype=np.uint8)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            pixels = re.search(r"\((\d+) pixels\)", str(e))
            raise _too_large(pixels.group(1) if pixels else "?") from None
    return torch.from_numpy(arr).permute(2, 0, 1)


def decode_image(data):
    """Decodes image bytes into an RGB uint8 CHW tensor (libjpeg-turbo for JPEG, else PIL).

    Every decoder keeps PIL's decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS): a larger
    image is refused from its header, before any pixel is decoded.
    """
    if not data:
        raise ValueError("empty file")
    size = _jpeg_size(data) if data.startswith(_JPEG_MAGIC) else None
    if decode_jpeg is not None and size is not None:  # else PIL, which checks as it opens
        _check_pixels(size)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=_RGB)
        except RuntimeError:
            pass  # let PIL decode it or say why it cannot
    return _decode_pil(data)


def load_image(path):
    """Reads an image file into an RGB uint8 CHW tensor; raises on an unreadable file."""
    with open(path, "rb") as f:
        size, limit = os.fstat(f.fileno()).st_size, Image.MAX_IMAGE_PIXELS
        if limit and size > limit * _BYTES_PER_PIXEL:
            msg = "file of {} MiB is larger than any image within PIL.Image.MAX_IMAGE_PIXELS"
            raise ImageTooLarge(msg.format(size // 1024**2))
        data = f.read()
    return decode_image(data)


def split_path(data_path, split):
    """Returns DATA_PATH/split, or raises a PyclsError saying what is missing and the fix."""
    fix = "pass --data_path DIR (or set DATA_LOADER.DATA_PATH) for a folder with train/ and val/"
    if not data_path:
        raise PyclsError("no data path is set; {}".format(fix))
    if not os.path.isdir(data_path):
        what = "is not a folder" if os.path.exists(data_path) else "does not exist"
        raise PyclsError("data path {} {}; {}".format(data_path, what, fix))
    path = os.path.join(data_path, split)
    if not os.path.isdir(path):
        msg = "data path {} has no {}/ folder; put the {} images in {}/<class>/<image>"
        raise PyclsError(msg.format(data_path, split, split, path))
    return path


def find_classes(path):
    """Returns the sorted names of the (non-hidden) class folders in a split folder."""
    with os.scandir(path) as entries:
        classes = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    if not classes:
        msg = "{} has no class folders; put the images in {}/<class>/<image>"
        raise PyclsError(msg.format(path, path))
    return classes


def check_same_classes(data_path, split, other_split, listed=None):
    """Raises a PyclsError naming the differing classes when two splits' classes differ
    (listed maps a split to its class names where they are read already)."""
    listed = {} if listed is None else listed

    def classes(name):
        return listed[name] if name in listed else find_classes(split_path(data_path, name))

    first, second = sorted((split, other_split))
    ours, theirs = set(classes(first)), set(classes(second))
    if ours != theirs:
        only = []
        for name, names in ((first, ours - theirs), (second, theirs - ours)):
            if names:
                only.append("only in {}: {}".format(name, _names(names)))
        msg = "the classes of {}/{} and {}/{} differ ({}); give both splits the same class folders"
        raise PyclsError(msg.format(data_path, first, data_path, second, "; ".join(only)))


def list_classes(data_path, split, other_split=None, listed=None):
    """Returns `listed` (a dict, filled here) mapping DATA_PATH/split and, where its folder
    exists, DATA_PATH/other_split to their class names; raises a PyclsError when a folder is
    missing or the two differ. Each split folder is checked and read once: a split already in
    `listed` (the other loader's) is taken from there."""
    listed = {} if listed is None else listed
    roots = {} if split in listed else {split: split_path(data_path, split)}
    names = [split]
    if other_split not in (None, split):
        if other_split in listed or os.path.isdir(os.path.join(data_path, other_split)):
            names.append(other_split)
    for name in sorted(names):
        if name not in listed:
            listed[name] = find_classes(roots.get(name) or split_path(data_path, name))
    if len(names) == 2:
        check_same_classes(data_path, split, other_split, listed)
    return listed


def _is_image(name):
    """Tells whether a file name is a (non-hidden) image by its extension."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


class _Scan:
    """Walks folders so that each real folder is entered once and each real file listed once."""

    def __init__(self, reserved):
        self.reserved = {os.path.realpath(p) for p in reserved}
        self.walked = set(self.reserved)
        self.linked = {}  # real path of a linked file -> (folder, relative path) listing it
        self.skipped = 0

    def _enter(self, target):
        """Marks a real folder as walked; tells whether it was new."""
        if target in self.walked:
            return False
        self.walked.add(target)
        return True

    def images(self, folder):
        """Returns the image files below a folder (relative paths, in os.walk's order)."""
        real = os.path.realpath(folder)
        if real in self.reserved:
            self.reserved.discard(real)  # each reserved folder is walked once too
        elif not self._enter(real):
            self.skipped += 1  # the same folder under another name
            return []
        found, stack = [], [("", real)]
        while stack:
            rel, real = stack.pop()
            try:
                with os.scandir(os.path.join(folder, rel)) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError:
                continue  # an unreadable folder lists nothing, as with os.walk
            dirs = []
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                path = os.path.join(rel, entry.name)
                if entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if os.path.isdir(target):
                        if self._enter(target):
                            dirs.append((path, target))
                        else:  # a link to itself, a parent or a folder already walked
                            self.skipped += 1
                    elif not os.path.isfile(target):
                        self.skipped += 1  # a broken link
                    elif _is_image(entry.name):
                        if target in self.linked:
                            self.skipped += 1
                        else:
                            self.linked[target] = (folder, path)
                            found.append(path)
                elif entry.is_dir(follow_symlinks=False):
                    if self._enter(os.path.join(real, entry.name)):
                        dirs.append((path, os.path.join(real, entry.name)))
                elif _is_image(entry.name):
                    found.append(path)
            stack.extend(reversed(dirs))
        return found

    def duplicates(self):
        """Returns the (folder, path) listings of linked files that are listed as plain files."""
        return {
            listing
            for target, listing in self.linked.items()
            if os.path.dirname(target) in self.walked and _is_image(os.path.basename(target))
        }


def scan_images(folders, reserved=()):
    """Lists the image files below each folder; returns (relative paths per folder, links skipped).

    Hidden files and folders are left out. Symbolic links are followed wherever they point, but
    each real folder is entered once and each real file listed once: a link to a folder already
    walked (itself, a parent, a `reserved` folder such as another class) or to a file already
    listed, and a broken link, are skipped and counted, so a scan always ends.
    """
    scan = _Scan(reserved)
    lists = [scan.images(folder) for folder in folders]
    dups = scan.duplicates()
    if dups:
        lists = [[p for p in found if (f, p) not in dups] for f, found in zip(folders, lists)]
    return lists, scan.skipped + len(dups)


class BadFiles:
    """Logs unreadable images once and counts them per epoch across DataLoader workers.

    The counts live in shared memory, one slot per process (slot 0 for the main process,
    slot k + 1 for worker k), so each slot has a single writer and needs no lock. The main
    process reads the sum once the workers have delivered their batches, and resets it.
    """

    def __init__(self, num_files, num_workers=0):
        self.logged = torch.zeros(num_files, dtype=torch.uint8).share_memory_()
        self.counts = torch.zeros(num_workers + 1, dtype=torch.int64).share_memory_()

    def add(self, index, path, reason, count):
        """Logs a bad file (once per file) and counts it when `count` is set."""
        if not self.logged[index]:
            self.logged[index] = 1
            logger.warning("unreadable image %s (%s); using another image instead", path, reason)
        if count:
            info = torch.utils.data.get_worker_info()
            slot = 0 if info is None else (info.id + 1) % len(self.counts)
            self.counts[slot] += 1

    def count(self):
        """Returns the number of bad files met since the last reset (all workers)."""
        return int(self.counts.sum())

    def reset(self):
        """Sets the count back to zero (at the start of an epoch)."""
        self.counts.zero_()


class ImageNet(torch.utils.data.Dataset):
    """Images of DATA_PATH/<split>/<class>/ with the class index as label."""

    def __init__(self, data_path, split, transform, num_workers=0, classes=None):
        if classes is None:
            self.root = split_path(data_path, split)
            self.classes = find_classes(self.root)
        else:  # the split's folder is checked and its classes read already (list_classes)
            self.root, self.classes = os.path.join(data_path, split), list(classes)
        self.split = split
        self.transform = transform
        paths, labels, empty = [], [], []
        folders = [os.path.join(self.root, name) for name in self.classes]
        lists, skipped = scan_images(folders, reserved=folders)
        if skipped:
            msg = "%s: skipped %d links to files or folders already listed (or to nothing)"
            logger.warning(msg, self.root, skipped)
        for label, (name, found) in enumerate(zip(self.classes, lists)):
            empty += [] if found else [name]
            paths += [os.path.join(name, p) for p in found]
            labels += [label] * len(found)
        if not paths:
            exts = ", ".join(e[1:] for e in IMAGE_EXTENSIONS)
            msg = "{} holds no images ({}); put them in {}/<class>/<image>"
            raise PyclsError(msg.format(self.root, exts, self.root))
        if empty:
            logger.warning("%s: classes without images: %s", self.root, _names(empty))
        # One bytes blob plus offsets instead of a list of str: workers share it untouched
        encoded = [os.fsencode(p) for p in paths]
        self._blob = b"".join(encoded)
        self._offsets = np.cumsum([0] + [len(e) for e in encoded], dtype=np.int64)
        self.labels = np.array(labels, dtype=np.int64)
        self.bad_files = BadFiles(len(paths), num_workers)
        logger.info("%s: %d images in %d classes", self.root, len(paths), len(self.classes))

    def __len__(self):
        return len(self.labels)

    def path(self, index):
        """Returns the file path of an image."""
        start, end = self._offsets[index], self._offsets[index + 1]
        return os.path.join(self.root, os.fsdecode(self._blob[start:end]))

    def __getitem__(self, index):
        for attempt in range(_MAX_TRIES):
            i = (index + attempt) % len(self)
            try:
                im = load_image(self.path(i))
            except Exception as e:  # any failure to read or decode makes the file bad
                self.bad_files.add(i, self.path(i), _reason(e), count=attempt == 0)
                continue
            return self.transform(im), int(self.labels[i])
        msg = "{} images in a row from {} on are unreadable; check the files under {}"
        raise PyclsError(msg.format(_MAX_TRIES, self.path(index), self.root))


def _reason(error):
    """Returns a short reason for a failed read."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, UnidentifiedImageError):
        text = "cannot identify the image format"
    return "{}: {}".format(type(error).__name__, text) if text else type(error).__name__
