"""Folder dataset (discovery, errors, decoding, bad files), synthetic data and demo data."""

import logging
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from _data_utils import (
    make_image_folder,
    save_image,
    write_bad_file,
    write_demo_data,
    write_huge_header_image,
)
from conftest import REPO, load_tool
from PIL import Image

from pycls.core.config import cfg
from pycls.core.errors import PyclsError
from pycls.datasets import loader, transforms
from pycls.datasets.imagenet import ImageNet, decode_image, list_classes, load_image
from pycls.datasets.synthetic import Synthetic


def _identity(im):
    return im


def test_classes_sorted_any_names_labels_follow(tmp_path):
    classes = ["zebra", "Apple", "b 2", "n01440764"]
    make_image_folder(tmp_path, classes, {"train": 2})
    ds = ImageNet(str(tmp_path), "train", _identity)
    assert ds.classes == sorted(classes)
    assert len(ds) == 8
    for i in range(len(ds)):
        name = os.path.relpath(ds.path(i), ds.root).split(os.sep)[0]
        assert ds.classes[ds[i][1]] == name


def test_extensions_any_case_nested_and_hidden_ignored(tmp_path):
    cls = tmp_path / "train" / "cat"
    for name in ["a.jpg", "b.JPEG", "c.Png", "d.bmp", "e.webp", "sub/f.jpg"]:
        save_image(str(cls / name))
    for name in [".hidden.jpg", ".cache/g.jpg", "notes.txt", "h.gif"]:
        save_image(str(cls / name), format="PNG")
    save_image(str(tmp_path / "train" / ".trash" / "x.jpg"))
    ds = ImageNet(str(tmp_path), "train", _identity)
    assert ds.classes == ["cat"]
    names = sorted(os.path.relpath(ds.path(i), str(cls)) for i in range(len(ds)))
    assert names == ["a.jpg", "b.JPEG", "c.Png", "d.bmp", "e.webp", os.path.join("sub", "f.jpg")]
    for i in range(len(ds)):
        assert ds[i][0].shape == (3, 10, 12)


def test_missing_path_and_split_errors_name_the_fix(tmp_path):
    with pytest.raises(PyclsError, match="--data_path"):
        ImageNet("", "train", _identity)
    missing = str(tmp_path / "nowhere")
    with pytest.raises(PyclsError, match="nowhere does not exist; pass --data_path"):
        ImageNet(missing, "train", _identity)
    (tmp_path / "file").write_text("x")
    with pytest.raises(PyclsError, match="file is not a folder"):
        ImageNet(str(tmp_path / "file"), "train", _identity)
    make_image_folder(tmp_path, counts={"train": 1})
    with pytest.raises(PyclsError, match=r"no val/ folder.*val/<class>/<image>"):
        ImageNet(str(tmp_path), "val", _identity)


def test_split_without_classes_or_images(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "readme.txt").write_text("hi")
    with pytest.raises(PyclsError, match="train has no class folders"):
        ImageNet(str(tmp_path), "train", _identity)
    (tmp_path / "train" / "a").mkdir()
    (tmp_path / "train" / "a" / "notes.txt").write_text("hi")
    with pytest.raises(PyclsError, match=r"train holds no images \(jpg, jpeg, png, bmp, webp\)"):
        ImageNet(str(tmp_path), "train", _identity)


def test_mismatched_classes_named(tmp_path):
    make_image_folder(tmp_path, ["a", "b", "c"], {"train": 1})
    make_image_folder(tmp_path, ["a", "b", "d"], {"val": 1})
    assert list_classes(str(tmp_path), "train", "train") == {"train": ["a", "b", "c"]}
    with pytest.raises(PyclsError) as e:
        list_classes(str(tmp_path), "val", "train")
    assert "only in train: c" in str(e.value) and "only in val: d" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "mode,name",
    [
        ("L", "a.jpg"),
        ("CMYK", "b.jpg"),
        ("P", "c.png"),
        ("RGBA", "d.png"),
        ("LA", "e.png"),
        ("1", "f.bmp"),
        ("I;16", "g.png"),
        ("RGB", "h.webp"),
    ],
)
def test_any_mode_becomes_rgb_and_tiny_images_work(tmp_path, mode, name):
    for size in [(1, 1), (3, 7), (40, 30)]:
        path = save_image(str(tmp_path / name), size, mode=mode)
        im = load_image(path)
        assert im.dtype == torch.uint8 and im.shape == (3, size[1], size[0])
        for transform in [
            transforms.train_transform(16, "RandAugment", 0.1),
            transforms.test_transform(18, 16),
        ]:
            out = transform(im)
            assert out.shape == (3, 16, 16) and out.dtype == torch.float32
            assert torch.isfinite(out).all()


def test_transparent_palette_and_16_bit_images(tmp_path):
    im = Image.new("P", (4, 4), 0)
    im.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    im.info["transparency"] = 0
    im.save(str(tmp_path / "p.png"), transparency=0)
    assert load_image(str(tmp_path / "p.png"))[:, 0, 0].tolist() == [255, 0, 0]
    Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16)).save(str(tmp_path / "w.png"))
    assert load_image(str(tmp_path / "w.png")).min() == 255


def test_jpeg_decoder_matches_pil(tmp_path):
    path = save_image(str(tmp_path / "x.jpg"), (33, 21), quality=90)
    with open(path, "rb") as f:
        ours = decode_image(f.read())
    pil = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(ours, pil)


@pytest.mark.parametrize("kind", ["truncated", "text", "empty"])
def test_unreadable_file_raises_on_load(tmp_path, kind):
    path = write_bad_file(str(tmp_path / "bad.jpg"), kind)
    with pytest.raises(Exception):  # noqa: B017 (PIL and torchvision raise various errors)
        load_image(path)


def test_bad_files_replaced_by_next_logged_once_and_counted(tmp_path, caplog):
    make_image_folder(tmp_path, ["a", "b"], {"train": 3})
    bad = {
        write_bad_file(str(tmp_path / "train" / "a" / "0.jpg"), "truncated"),
        write_bad_file(str(tmp_path / "train" / "a" / "1.jpg"), "text"),
        write_bad_file(str(tmp_path / "train" / "b" / "2.jpg"), "empty"),
    }
    ds = ImageNet(str(tmp_path), "train", _identity)
    with caplog.at_level(logging.WARNING, logger="pycls.datasets.imagenet"):
        first = ds[0]
        assert first[1] == 0 and torch.equal(first[0], ds[2][0])
        assert ds[1][1] == 0
        im, label = ds[5]  # the last file is bad: wraps round to 0 and 1 (bad), then 2
        assert torch.equal(im, ds[2][0]) and label == 0
    assert ds.bad_files.count() == 3
    logged = [r.getMessage() for r in caplog.records if "unreadable image" in r.getMessage()]
    assert len(logged) == 3
    assert {m.split()[2] for m in logged} == bad
    assert "cannot identify the image format" in "".join(logged)
    ds.bad_files.reset()
    assert ds.bad_files.count() == 0


def test_all_files_bad_raises(tmp_path):
    write_bad_file(str(tmp_path / "train" / "a" / "0.jpg"), "text")
    ds = ImageNet(str(tmp_path), "train", _identity)
    with pytest.raises(PyclsError, match="are unreadable; check the files under"):
        ds[0]


def test_dataset_paths_survive_odd_names(tmp_path):
    name = "caf\u00e9 \u00fc.jpg"
    save_image(str(tmp_path / "val" / "k" / name))
    ds = ImageNet(str(tmp_path), "val", _identity)
    assert os.path.basename(ds.path(0)) == name
    assert ds[0][0].shape == (3, 10, 12)


def test_synthetic_shapes_labels_and_length():
    ds = Synthetic(length=37, im_size=20, num_classes=5, seed=3)
    assert len(ds) == 37
    im, label = ds[36]
    assert im.shape == (3, 20, 20) and im.dtype == torch.float32
    assert 0 <= label < 5
    assert torch.equal(ds[1][0], ds[1 + len(ds.labels)][0])
    again = Synthetic(length=37, im_size=20, num_classes=5, seed=3)
    assert torch.equal(again[4][0], ds[4][0])


def test_demo_data_writer(tmp_path):
    out = write_demo_data(tmp_path / "demo", size=16)
    classes = ["digit_{}".format(d) for d in range(10)]
    train, val = ImageNet(out, "train", _identity), ImageNet(out, "val", _identity)
    assert train.classes == classes and val.classes == classes
    assert len(train) + len(val) == 1797
    assert len(val) == pytest.approx(0.2 * 1797, abs=10)
    for d in range(10):  # stratified: every class is split 80/20
        n_train, n_val = (train.labels == d).sum(), (val.labels == d).sum()
        assert abs(n_val / (n_train + n_val) - 0.2) < 0.02
    for ds in (train, val):
        for i in range(0, len(ds), 97):
            assert load_image(ds.path(i)).shape == (3, 16, 16)
    assert ds.path(0).endswith(".jpg")


def test_demo_data_split_is_fixed(tmp_path):
    tool = load_tool("make_demo_data")
    tool.write_demo_data(str(tmp_path / "a"), size=8)
    tool.write_demo_data(str(tmp_path / "b"), size=8)
    assert sorted(os.listdir(tmp_path / "a" / "val" / "digit_3")) == sorted(
        os.listdir(tmp_path / "b" / "val" / "digit_3")
    )


def test_demo_data_cli_refuses_non_empty_dir(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    cmd = [sys.executable, os.path.join(REPO, "tools", "make_demo_data.py"), str(out)]
    res = subprocess.run(cmd + ["--size", "8"], capture_output=True, text=True)
    assert res.returncode == 2
    assert "not empty" in res.stderr and "--force" in res.stderr
    assert os.listdir(out) == ["mine.txt"]
    res = subprocess.run(cmd + ["--size", "8", "--force"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "wrote" in res.stdout and "train" in res.stdout and str(out) in res.stdout
    assert (out / "mine.txt").read_text() == "keep me"
    assert len(os.listdir(out / "train")) == 10


# ------------------------- round two: links and huge images ------------------------- #


def test_links_are_followed_once_and_never_loop(tmp_path, caplog):
    make_image_folder(tmp_path, ["a", "b"], {"train": 2})
    outside = tmp_path / "outside"
    save_image(str(outside / "x.jpg"))
    train = tmp_path / "train"
    os.symlink(".", train / "a" / "self")  # to itself
    os.symlink("..", train / "a" / "up")  # to its parent
    os.symlink("../b", train / "b" / "loop")  # to itself by another name
    os.symlink("../b", train / "a" / "to_b")  # to another class
    os.symlink("0.jpg", train / "a" / "again.jpg")  # to a file already listed
    os.symlink(str(outside / "x.jpg"), train / "a" / "x.jpg")  # to a file outside
    os.symlink(str(outside / "x.jpg"), train / "b" / "x2.jpg")  # the same file again
    os.symlink(str(outside), train / "b" / "more")  # the folder of that file
    os.symlink("missing.jpg", train / "b" / "broken.jpg")
    with caplog.at_level(logging.WARNING, logger="pycls.datasets.imagenet"):
        ds = ImageNet(str(tmp_path), "train", _identity)
    real = sorted(os.path.realpath(ds.path(i)) for i in range(len(ds)))
    assert len(real) == len(set(real)) == 5  # 2 + 2 images and x.jpg, each once
    assert "x.jpg" in {os.path.basename(p) for p in real}
    assert any("skipped 7 links" in r.getMessage() for r in caplog.records)


def test_a_class_linked_to_another_is_not_read_twice(tmp_path):
    make_image_folder(tmp_path, ["a"], {"train": 2})
    os.symlink("a", tmp_path / "train" / "b")
    ds = ImageNet(str(tmp_path), "train", _identity)
    assert ds.classes == ["a", "b"] and len(ds) == 2


@pytest.mark.parametrize("name", ["bomb.jpg", "bomb.png"])
def test_images_above_the_pixel_limit_are_refused_from_the_header(tmp_path, name):
    path = write_huge_header_image(str(tmp_path / name), 60000, 60000)
    with pytest.raises(ValueError, match=r"image size \(3600000000 pixels\) exceeds the limit"):
        load_image(path)


def test_pixel_limit_also_covers_pils_warning_band(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for name in ("a.jpg", "b.png"):
        path = save_image(str(tmp_path / name), size=(40, 30))  # 1200 pixels: PIL only warns
        with pytest.raises(ValueError, match=r"1200 pixels\) exceeds the limit of 1000"):
            load_image(path)


# ------------------------- round three: odd but valid images ------------------------- #


def _odd_images(root):
    """Writes root/{train,val}/<class>/ with each odd but valid kind of image; returns the
    (upright) size each file must load as, by name (bytes: some names are not UTF-8)."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8), "RGB")
    grey16 = Image.fromarray(rng.integers(0, 65536, (10, 12)).astype(np.uint16))
    rotated = Image.Exif()
    rotated[0x0112] = 6  # EXIF orientation: rotate 90 degrees to show upright
    files = {
        b"modes": [
            (b"cmyk.jpg", rgb.convert("CMYK"), {}),
            (b"grey.jpg", rgb.convert("L"), {}),
            (b"grey16.png", grey16, {}),
            (b"palette.png", rgb.convert("P"), {}),
            (b"palette alpha.png", rgb.convert("P"), {"transparency": 0}),
            (b"grey alpha.png", rgb.convert("LA"), {}),
            (b"rgba.png", rgb.convert("RGBA"), {}),
            (b"exif.jpg", rgb, {"exif": rotated}),
            (b"exif.png", rgb, {"exif": rotated}),
            (b"UPPER.JPG", rgb, {}),
            (b"UPPER.PNG", rgb, {}),
            (b"x.webp", rgb, {}),
            (b"alpha.WEBP", rgb.convert("RGBA"), {}),
        ],
        b"with spaces": [(b"a file name.jpg", rgb, {})],
        "caf\u00e9 \u65e5\u672c".encode(): [("\u00fcber \u00e9.png".encode(), rgb, {})],
        b"latin1 \xe9\xff": [(b"n\xe9\xff.jpg", rgb, {})],  # not UTF-8 (os.fsencode names)
    }
    sizes = {}
    for split in (b"train", b"val"):
        for cls, images in files.items():
            os.makedirs(os.path.join(os.fsencode(str(root)), split, cls))
            for name, im, kwargs in images:
                path = os.path.join(os.fsencode(str(root)), split, cls, name)
                ext = os.path.splitext(name)[1].lower()
                fmt = {b".jpg": "JPEG", b".png": "PNG", b".webp": "WEBP"}[ext]
                im.save(path, format=fmt, **kwargs)
                sizes[name] = (12, 10) if b"exif" in name else (10, 12)
    return sizes


def test_odd_but_valid_images_train_without_warnings(tmp_path, caplog):
    sizes = _odd_images(tmp_path)
    pipelines = [
        transforms.train_transform(8, "RandAugment", 0.1),
        transforms.test_transform(10, 8),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning of any kind, from PIL, torchvision or us
        ds = ImageNet(str(tmp_path), "train", _identity)
        assert len(ds) == len(sizes) == 16 and len(ds.classes) == 4
        for i in range(len(ds)):
            im, label = ds[i]
            name = os.fsencode(os.path.basename(ds.path(i)))
            assert im.dtype == torch.uint8 and tuple(im.shape) == (3,) + sizes[name], name
            for pipeline in pipelines:
                out = pipeline(im)
                assert out.shape == (3, 8, 8) and torch.isfinite(out).all()
        cfg.TRAIN.DATASET = cfg.TEST.DATASET = "imagenet"
        cfg.DATA_LOADER.DATA_PATH, cfg.DATA_LOADER.NUM_WORKERS = str(tmp_path), 0
        cfg.TRAIN.IM_SIZE, cfg.TEST.IM_SIZE, cfg.MODEL.NUM_CLASSES = 8, 10, 4
        cfg.TRAIN.BATCH_SIZE = cfg.TEST.BATCH_SIZE = 4
        for data_loader in loader.construct_loaders(device="cpu"):
            batches = [x for x, _ in data_loader]
            assert sum(len(x) for x in batches) == 16 and loader.bad_file_count(data_loader) == 0
            assert all(x.shape[1:] == (3, 8, 8) for x in batches)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_odd_images_come_out_in_the_right_channel_order(tmp_path):
    red = Image.new("RGB", (6, 4), (255, 0, 0))
    for name, im in [("p.png", red.convert("P")), ("c.jpg", red.convert("CMYK"))]:
        im.save(str(tmp_path / name))
        loaded = load_image(str(tmp_path / name)).float()
        assert loaded[0].mean() > 200 and loaded[2].mean() < 60, name  # RGB, red first
        bgr = transforms.test_transform(4, 4, "bgr")(loaded.to(torch.uint8))
        assert bgr[2].mean() > 1.5 and bgr[0].mean() < -1.0  # the network sees red last
