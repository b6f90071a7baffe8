"""Image folder dataset in ImageNet layout: DATA_PATH/<split>/<class>/<image>.

Classes are the sorted names of a split's sub-folders; images are the files below them with an
image extension (any case), hidden ones left out, each real file once (see scan_images). An
unreadable image is logged once, counted across workers (BadFiles) and replaced by the next
readable one, so a few corrupt files do not end a long run.
"""

import io
import logging
import os
import re
import warnings

import numpy as np
import torch
import torch.utils.data
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.datasets.folder import has_file_allowed_extension

from pycls.core.errors import PyclsError

try:  # libjpeg-turbo straight to a tensor beats PIL (benchmarks/loader.py); PIL is the fallback
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # torchvision deprecated its decoders in 0.29 and may drop them
    decode_jpeg = None

logger = logging.getLogger(__name__)

# File extensions read as images (compared in lower case)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# An image is replaced by the next readable one among this many (else the data set is broken);
# an error message lists this many names
_MAX_TRIES, _MAX_NAMES = 50, 10


def _names(names):
    """Joins a few names for a message, saying how many more there are."""
    names, more = sorted(names), len(names) - _MAX_NAMES
    return ", ".join(names[:_MAX_NAMES]) + (" and {} more".format(more) if more > 0 else "")


def _open(data):
    """Opens image bytes with PIL (reading the header only), refusing an image above the pixel
    limit before any pixel is decoded (PIL itself only warns up to twice the limit)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        msg = "image size ({} pixels) exceeds the limit of {} pixels (PIL.Image.MAX_IMAGE_PIXELS)"
        pixels = pixels.group(1) if pixels else "?"
        raise ValueError(msg.format(pixels, Image.MAX_IMAGE_PIXELS)) from None


def _decode_pil(data, im=None):
    """Decodes image bytes (or their PIL image) of any mode into an upright RGB uint8 tensor."""
    with im or _open(data) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode.startswith("I"):  # 16-bit grey: scale to 8 bits (convert would clip)
            arr = np.asarray(im, dtype=np.float32) / 257.0
            im = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L")
        elif im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")  # PIL warns on a straight convert of these to RGB
        arr = np.array(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr).permute(2, 0, 1)


def decode_image(data):
    """Decodes image bytes into an upright RGB uint8 CHW tensor (libjpeg-turbo for JPEG, else
    PIL); an image above PIL.Image.MAX_IMAGE_PIXELS is refused from its header."""
    if not data:
        raise ValueError("empty file")
    im = _open(data)
    if decode_jpeg is not None and im.format == "JPEG":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                return decode_jpeg(raw, mode=ImageReadMode.RGB, apply_exif_orientation=True)
        except (RuntimeError, TypeError):  # TypeError: a torchvision without EXIF support
            pass  # let PIL decode it or say why it cannot
    return _decode_pil(data, im)


def load_image(path):
    """Reads an image file into an RGB uint8 CHW tensor; raises on an unreadable file."""
    with open(path, "rb") as f:
        size, limit = os.fstat(f.fileno()).st_size, Image.MAX_IMAGE_PIXELS
        if limit and size > limit * 8:  # no image within the limit needs 8 bytes a pixel
            msg = "file of {} MiB is larger than any image within PIL.Image.MAX_IMAGE_PIXELS"
            raise ValueError(msg.format(size // 1024**2))
        return decode_image(f.read())


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


def list_classes(data_path, split, other_split=None, listed=None):
    """Fills and returns `listed` ({split: class names}) with split and, where its folder
    exists, other_split; raises a PyclsError when split's folder is missing or the two differ
    (naming the classes only one has). A split already in `listed` is not read again."""
    listed = {} if listed is None else listed
    for name in (split, other_split):
        wanted = name == split or (name and os.path.isdir(os.path.join(data_path, name)))
        if wanted and name not in listed:
            listed[name] = find_classes(split_path(data_path, name))
    if other_split not in listed or other_split == split:
        return listed
    first, second = sorted((split, other_split))
    ours, theirs = set(listed[first]), set(listed[second])
    only = [
        "only in {}: {}".format(name, _names(names))
        for name, names in ((first, ours - theirs), (second, theirs - ours))
        if names
    ]
    if only:
        msg = "the classes of {}/{} and {}/{} differ ({}); give both splits the same class folders"
        raise PyclsError(msg.format(data_path, first, data_path, second, "; ".join(only)))
    return listed


def scan_images(folders, reserved=()):
    """Lists the image files below each folder; returns (relative paths per folder, links skipped).

    Links are followed, but each real folder is entered and each real file listed once, so a scan
    always ends: links to a folder walked (itself, a parent, a `reserved` one such as another
    class), broken ones and ones to a file listed otherwise are skipped; a plain file wins."""
    walked, tops = {os.path.realpath(p) for p in reserved}, set()
    found, skipped = [], 0  # found: (folder index, relative path, real path, is a link)
    for index, folder in enumerate(folders):
        real = os.path.realpath(folder)
        if real in tops or (real in walked and folder not in reserved):
            skipped += 1  # the same folder under another name
            continue
        walked.add(real), tops.add(real)
        stack = [("", real)]
        while stack:
            rel, real = stack.pop()
            try:
                with os.scandir(os.path.join(folder, rel)) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError:
                continue  # an unreadable folder lists nothing, as with os.walk
            dirs = []
            for e in (e for e in entries if not e.name.startswith(".")):
                link, path = e.is_symlink(), os.path.join(rel, e.name)
                target = os.path.realpath(e.path) if link else os.path.join(real, e.name)
                if e.is_dir():
                    if target not in walked:
                        walked.add(target)
                        dirs.append((path, target))
                    else:
                        skipped += link  # a link to itself, a parent or a folder walked
                elif link and not e.is_file():
                    skipped += 1  # a broken link
                elif has_file_allowed_extension(e.name, IMAGE_EXTENSIONS):
                    found.append((index, path, target, link))
            stack.extend(reversed(dirs))
    plain, listed, lists = {t for _, _, t, link in found if not link}, set(), [[] for _ in folders]
    for index, path, target, link in found:
        if target in listed or (link and target in plain):
            skipped += 1
        else:
            listed.add(target)
            lists[index].append(path)
    return lists, skipped


class BadFiles:
    """Logs unreadable images once and counts them per pass across DataLoader workers (in
    shared memory, one slot per process: 0 for the main one, k + 1 for worker k, so no lock)."""

    def __init__(self, num_files, num_workers=0):
        self.logged = torch.zeros(num_files, dtype=torch.uint8).share_memory_()
        self.counts = torch.zeros(num_workers + 1, dtype=torch.int64).share_memory_()

    def add(self, index, path, error, count):
        """Logs a bad file and why (once per file); counts it when `count` is set."""
        if not self.logged[index]:
            self.logged[index] = 1
            text = (str(error).strip().splitlines() or [""])[0]
            if isinstance(error, UnidentifiedImageError):
                text = "cannot identify the image format"
            reason = type(error).__name__ + (": " + text if text else "")
            logger.warning("unreadable image %s (%s); using another image instead", path, reason)
        if count:
            info = torch.utils.data.get_worker_info()
            self.counts[0 if info is None else (info.id + 1) % len(self.counts)] += 1

    def count(self):
        """Returns the number of bad files met since the last reset (all workers)."""
        return int(self.counts.sum())

    def reset(self):
        """Sets the count back to zero (at the start of a pass)."""
        self.counts.zero_()


class ImageNet(torch.utils.data.Dataset):
    """Images of DATA_PATH/<split>/<class>/ with the class index as label."""

    def __init__(self, data_path, split, transform, num_workers=0, classes=None):
        # classes: the split's folder is checked and its classes read already (list_classes)
        self.root = os.path.join(data_path, split) if classes else split_path(data_path, split)
        self.classes = list(classes or find_classes(self.root))
        self.split, self.transform = split, transform
        folders = [os.path.join(self.root, name) for name in self.classes]
        lists, skipped = scan_images(folders, reserved=folders)
        if skipped:
            msg = "%s: skipped %d links to files or folders already listed (or to nothing)"
            logger.warning(msg, self.root, skipped)
        paths = [os.path.join(c, p) for c, found in zip(self.classes, lists) for p in found]
        if not paths:
            exts = ", ".join(e[1:] for e in IMAGE_EXTENSIONS)
            msg = "{} holds no images ({}); put them in {}/<class>/<image>"
            raise PyclsError(msg.format(self.root, exts, self.root))
        empty = [c for c, found in zip(self.classes, lists) if not found]
        if empty:
            logger.warning("%s: classes without images: %s", self.root, _names(empty))
        # One bytes blob plus offsets instead of a list of str: workers share it untouched
        encoded = [os.fsencode(p) for p in paths]
        self._blob = b"".join(encoded)
        self._offsets = np.cumsum([0] + [len(e) for e in encoded], dtype=np.int64)
        self.labels = np.repeat(np.arange(len(lists), dtype=np.int64), [len(f) for f in lists])
        self.bad_files = BadFiles(len(paths), num_workers)
        # The epoch's seed (loader.shuffle), shared with the workers that are running already
        self.epoch_seed = torch.full((1,), -1, dtype=torch.int64).share_memory_()
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
                self.bad_files.add(i, self.path(i), e, count=attempt == 0)
                continue
            # A seed of its own: the same augmentations for any worker count and after a resume
            with torch.random.fork_rng(devices=[], device_type="cpu"):  # the global RNG stays
                torch.manual_seed(hash((int(self.epoch_seed[0]), index)) % (1 << 63))
                return self.transform(im), int(self.labels[i])
        msg = "{} images in a row from {} on are unreadable; check the files under {}"
        raise PyclsError(msg.format(_MAX_TRIES, self.path(index), self.root))
