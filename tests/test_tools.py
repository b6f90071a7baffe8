"""Tests of the everyday tools: predict, export_onnx, plot_log and convert_weights."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from conftest import REPO, load_tool
from PIL import Image

import pycls.core.builders as builders
import pycls.core.checkpoint as cp
import pycls.core.logging as logging
import pycls.datasets.transforms as transforms
from pycls.core.config import cfg, merge_from_file, merge_from_list, reset_cfg
from pycls.core.errors import PyclsError
from pycls.datasets.imagenet import load_image

_EFFNET = os.path.join(REPO, "configs", "dds_baselines", "effnet")
_EN_B0 = os.path.join(_EFFNET, "EN-B0_dds_8gpu.yaml")
_EN_B3 = os.path.join(_EFFNET, "EN-B3_dds_8gpu.yaml")

# A small, fast model: EN-B0 with 10 classes on 32px crops of 36px images
_TINY_OPTS = ["MODEL.NUM_CLASSES", "10", "TRAIN.IM_SIZE", "32", "TEST.IM_SIZE", "36"]
_TINY = ["--cfg", _EN_B0]
_NUM_CLASSES = 10


predict = load_tool("predict")
export_onnx = load_tool("export_onnx")
plot_log = load_tool("plot_log")
convert_weights = load_tool("convert_weights")


def _calibrate_bn(model, inputs):
    """Sets BN running stats to those of a batch (the model's outputs then depend on its
    input in eval mode); returns the model in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        model(inputs)
    for m in bns:
        m.momentum = 0.1
    return model.eval()


def _tiny_model():
    """Builds the tiny EN-B0 from cfg, with BN stats and head that spread the outputs."""
    reset_cfg()
    merge_from_file(_EN_B0)
    merge_from_list(_TINY_OPTS)
    torch.manual_seed(0)
    model = builders.build_model()
    torch.nn.init.normal_(model.head.fc.weight, std=0.01)
    return _calibrate_bn(model, torch.randn(32, 3, 32, 32))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Writes a pycls checkpoint of the tiny model; returns its path."""
    model = _tiny_model()
    path = str(tmp_path_factory.mktemp("ckpt") / "model.pyth")
    state = {"epoch": 0, "model_state": model.state_dict(), "optimizer_state": None}
    torch.save(dict(state, cfg=cfg.dump()), path)
    reset_cfg()
    return path


def _loaded_model(path):
    """Returns the tiny model with the weights of a checkpoint."""
    model = _tiny_model()
    cp.load_weights(path, model)
    return model


def _write_image(path, seed, size=(40, 48)):
    """Writes a random RGB image."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(path)
    return path


# ------------------------------------ predict.py ------------------------------------ #


def test_split_inputs_finds_config_overrides():
    paths, opts = predict.split_inputs(["a.jpg", "dir", "TEST.IM_SIZE", "40", "DEVICE", "cpu"])
    assert paths == ["a.jpg", "dir"]
    assert opts == ["TEST.IM_SIZE", "40", "DEVICE", "cpu"]
    assert predict.split_inputs(["x.png"]) == (["x.png"], [])


def test_predict_folder_prints_topk_with_names(weights, tmp_path, capsys):
    images = tmp_path / "images"
    for i, rel in enumerate(["a/1.png", "a/deep/2.JPG", "b/3.jpeg"]):
        _write_image(str(images / rel), i)
    (images / "notes.txt").write_text("not an image")
    (images / ".hidden.png").write_text("skipped")
    names = ["class_{}".format(i) for i in range(_NUM_CLASSES)]
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    args = _TINY + ["--weights", weights, "--names", str(tmp_path / "names.txt"), "--topk", "3"]
    predict.main(args + [str(images)] + _TINY_OPTS)
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split(": ")[0] for ln in lines] == [
        str(images / "a" / "1.png"),
        str(images / "a" / "deep" / "2.JPG"),
        str(images / "b" / "3.jpeg"),
    ]
    for line in lines:
        entries = line.split(": ", 1)[1].split(", ")
        assert len(entries) == 3
        probs = [float(e.split("(")[1].rstrip("%)")) for e in entries]
        assert probs == sorted(probs, reverse=True)
        assert all(e.split(" (")[0] in names for e in entries)


def test_predict_json_matches_the_model_and_reports_bad_images(weights, tmp_path, capsys):
    good = _write_image(str(tmp_path / "good.png"), 7, size=(50, 70))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    args = _TINY + ["--weights", weights, "--json", "--topk", "4", good, str(bad)]
    with pytest.raises(PyclsError, match="1 of 2 images could not be read"):
        predict.main(args + _TINY_OPTS)
    results = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in results] == [good, str(bad)]
    assert "error" in results[1] and "topk" not in results[1]
    top = results[0]["topk"]
    assert len(top) == 4 and all(t["name"] == str(t["class"]) for t in top)
    model = _loaded_model(weights)
    x = transforms.test_transform(36, 32)(load_image(good)).unsqueeze(0)
    with torch.no_grad():
        probs, classes = torch.softmax(model(x), dim=1).topk(4)
    assert [t["class"] for t in top] == classes[0].tolist()
    assert [t["prob"] for t in top] == pytest.approx(probs[0].tolist(), abs=1e-5)


@pytest.mark.parametrize("order", ["bgr", "rgb"])
def test_predict_feeds_the_configured_channel_order(weights, tmp_path, capsys, order):
    image = _write_image(str(tmp_path / "photo.png"), 11, size=(50, 70))
    args = _TINY + ["--weights", weights, "--json", "--topk", "10", image]
    predict.main(args + _TINY_OPTS + ["INPUT.CHANNEL_ORDER", order])
    got = {t["class"]: t["prob"] for t in json.loads(capsys.readouterr().out)[0]["topk"]}
    model = _loaded_model(weights)
    outputs = {}
    for name in ("bgr", "rgb"):
        x = transforms.test_transform(36, 32, name)(load_image(image)).unsqueeze(0)
        with torch.no_grad():
            outputs[name] = torch.softmax(model(x), dim=1)[0].tolist()
    assert [got[c] for c in range(10)] == pytest.approx(outputs[order], abs=1e-6)
    other = "rgb" if order == "bgr" else "bgr"
    assert [got[c] for c in range(10)] != pytest.approx(outputs[other], abs=1e-6)


def test_predict_names_from_data_path(weights, tmp_path, capsys):
    classes = ["n{:02d}_cls".format(i) for i in range(_NUM_CLASSES)]
    for name in classes:
        os.makedirs(tmp_path / "data" / "train" / name)
    image = _write_image(str(tmp_path / "x.png"), 3)
    args = _TINY + ["--weights", weights, "--data_path", str(tmp_path / "data"), image]
    predict.main(args + _TINY_OPTS)
    entries = capsys.readouterr().out.strip().split(": ", 1)[1].split(", ")
    assert len(entries) == 5 and all(e.split(" (")[0] in classes for e in entries)
    os.makedirs(tmp_path / "data" / "train" / "extra")
    with pytest.raises(PyclsError, match="11 class names but the model has 10"):
        predict.main(args + _TINY_OPTS)


def test_predict_errors(weights, tmp_path):
    image = _write_image(str(tmp_path / "x.png"), 1)
    os.makedirs(tmp_path / "empty")
    with pytest.raises(PyclsError, match="holds no images"):
        predict.main(_TINY + ["--weights", weights, str(tmp_path / "empty")] + _TINY_OPTS)
    with pytest.raises(PyclsError, match="no weights given"):
        predict.main(_TINY + [image] + _TINY_OPTS)
    (tmp_path / "names.txt").write_text("a\nb\n")
    names = ["--names", str(tmp_path / "names.txt")]
    with pytest.raises(PyclsError, match="2 class names"):
        predict.main(_TINY + ["--weights", weights] + names + [image] + _TINY_OPTS)
    with pytest.raises(PyclsError, match="unknown config key"):
        predict.main(_TINY + ["--weights", weights, image, "TEST.IM_SIZ", "40"])


def test_predict_cli_reports_bad_image_and_exits_2(weights, tmp_path):
    good = _write_image(str(tmp_path / "good.png"), 2)
    bad = tmp_path / "bad.png"
    bad.write_text("not a png")
    cmd = [sys.executable, os.path.join(REPO, "tools", "predict.py")] + _TINY
    cmd += ["--weights", weights, "--device", "cpu", good, str(bad)] + _TINY_OPTS
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=str(tmp_path))
    assert result.returncode == 2
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith(good + ": ") and "%)" in lines[0]
    assert lines[1] == "{}: error: not an image format that can be read".format(bad)
    assert result.stderr.strip().splitlines() == [
        "error: 1 of 2 images could not be read (first: {})".format(bad)
    ]


def test_predict_folders_follow_links_once(tmp_path, capsys):
    photos = tmp_path / "photos"
    os.makedirs(photos / "sub")
    for name in ("a.jpg", "sub/b.png"):
        Image.new("RGB", (8, 8)).save(str(photos / name))
    os.symlink(".", photos / "self")
    os.symlink("..", photos / "sub" / "up")
    os.symlink("a.jpg", photos / "again.jpg")
    images = predict.list_images([str(photos), str(photos / "sub")])
    assert sorted(os.path.relpath(p, str(photos)) for p in images) == ["a.jpg", "sub/b.png"]
    assert "skipped 4 links" in capsys.readouterr().err


# ---------------------------------- export_onnx.py ---------------------------------- #


def test_export_onnx_matches_pytorch(weights, tmp_path, capsys):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out = str(tmp_path / "model.onnx")
    export_onnx.main(_TINY + ["--weights", weights, "--out", out] + _TINY_OPTS)
    assert "Largest absolute difference ONNX vs PyTorch" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]
    session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    x = torch.randn(3, 3, 32, 32)
    (got,) = session.run(["logits"], {"input": x.numpy()})
    with torch.no_grad():
        expected = _loaded_model(weights)(x).numpy()
    assert got.shape == (3, _NUM_CLASSES)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("order", ["bgr", "rgb"])
def test_export_onnx_metadata_names_the_input(weights, tmp_path, capsys, order):
    onnx = pytest.importorskip("onnx")
    out = str(tmp_path / "model.onnx")
    opts = _TINY_OPTS + ["INPUT.CHANNEL_ORDER", order]
    export_onnx.main(_TINY + ["--weights", weights, "--out", out] + opts)
    assert "{} channel order".format(order) in capsys.readouterr().out
    props = {p.key: p.value for p in onnx.load(out).metadata_props}
    mean = "0.406,0.456,0.485" if order == "bgr" else "0.485,0.456,0.406"
    std = "0.225,0.224,0.229" if order == "bgr" else "0.229,0.224,0.225"
    assert props == {
        "channel_order": order,
        "mean": mean,
        "std": std,
        "pixel_scale": "1/255",
        "im_size": "32",
        "test_im_size": "36",
        "layout": "NCHW",
    }


def test_export_onnx_fails_above_tolerance(weights, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    with pytest.raises(SystemExit) as e:
        export_onnx.main(
            _TINY + ["--weights", weights, "--out", str(out), "--tol", "-1"] + _TINY_OPTS
        )
    assert e.value.code == 1
    assert os.listdir(tmp_path) == []


def test_export_onnx_keeps_existing_output(weights, tmp_path):
    out = tmp_path / "model.onnx"
    out.write_text("keep me")
    with pytest.raises(PyclsError, match="--force"):
        export_onnx.main(_TINY + ["--weights", weights, "--out", str(out)] + _TINY_OPTS)
    assert out.read_text() == "keep me"
    with pytest.raises(PyclsError, match="does not exist"):
        export_onnx.main(_TINY + ["--weights", weights, "--out", str(tmp_path / "no/m.onnx")])


def test_export_onnx_force_replaces(weights, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    out.write_text("old")
    export_onnx.main(_TINY + ["--weights", weights, "--out", str(out), "--force"] + _TINY_OPTS)
    assert out.read_bytes() != b"old"


def test_export_onnx_dynamo_needs_onnxscript(weights, tmp_path):
    if importlib.util.find_spec("onnxscript") is not None:
        pytest.skip("onnxscript is installed")
    out = tmp_path / "model.onnx"
    args = _TINY + ["--weights", weights, "--out", str(out), "--dynamo"] + _TINY_OPTS
    with pytest.raises(PyclsError, match="pip install onnxscript"):
        export_onnx.main(args)
    assert not out.exists()


def test_export_onnx_without_onnx_names_the_package(weights, tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        export_onnx.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnx" else find_spec(name, *a),
    )
    out = tmp_path / "model.onnx"
    with pytest.raises(PyclsError, match=r"needs the onnx package.*: pip install onnx"):
        export_onnx.main(_TINY + ["--weights", weights, "--out", str(out)] + _TINY_OPTS)
    assert not out.exists()


def test_export_onnx_refuses_a_folder_as_out(weights, tmp_path):
    with pytest.raises(PyclsError, match=r"--out .* is a folder; give the ONNX file"):
        export_onnx.main(_TINY + ["--weights", weights, "--out", str(tmp_path), "--force"])
    assert os.listdir(tmp_path) == []


# ----------------------------------- plot_log.py ------------------------------------ #


def _write_log(path, epochs=3, ema=False):
    """Writes a log with train iter/epoch and test epoch json_stats, as the trainer does."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lines = ["[trainer.py:  1]: Start epoch: 1"]
    for e in range(epochs):
        epoch = "{}/{}".format(e + 1, epochs)
        for it in (1, 2):
            stats = {"epoch": epoch, "iter": "{}/2".format(it), "top1_err": 90.0, "loss": 2.3}
            lines.append(logging.dump_log_data(stats, "train_iter"))
        stats = {"epoch": epoch, "top1_err": 80.0 - 10 * e, "loss": 2.0 - 0.5 * e, "lr": 0.1}
        lines.append(logging.dump_log_data(stats, "train_epoch"))
        lines.append(logging.dump_log_data({"epoch": epoch, "top1_err": 85.0 - e}, "test_epoch"))
        if ema:
            stats = {"epoch": epoch, "top1_err": 84.0 - e}
            lines.append(logging.dump_log_data(stats, "test_ema_epoch"))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def test_plot_log_draws_named_runs(tmp_path, monkeypatch):
    run_a = tmp_path / "run_a"
    _write_log(str(run_a / "stdout.log"), ema=True)
    log_b = _write_log(str(tmp_path / "output" / "0" / "train_1p.log"), epochs=2)
    figures = []
    make_figure = plot_log._figure
    monkeypatch.setattr(plot_log, "_figure", lambda: figures.append(make_figure()) or figures[-1])
    out = tmp_path / "curves.png"
    plot_log.main([str(run_a), log_b, "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    err_ax, loss_ax = figures[0].axes
    assert err_ax.get_xlabel() == "epoch" and "top-1 error" in err_ax.get_ylabel()
    assert err_ax.get_title() and loss_ax.get_title() and loss_ax.get_ylabel() == "loss"
    legend = [t.get_text() for t in err_ax.get_legend().get_texts()]
    run_b = ["0/train_1p train", "0/train_1p test"]
    assert legend == ["run_a train", "run_a test", "run_a test EMA"] + run_b
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["run_a train", run_b[0]]
    xs, ys = err_ax.get_lines()[0].get_data()
    assert list(xs) == [1.0, 2.0, 3.0] and list(ys) == [80.0, 70.0, 60.0]


def test_plot_log_names_and_fallbacks(tmp_path):
    log = _write_log(str(tmp_path / "a" / "stdout.log"))
    other = _write_log(str(tmp_path / "a" / "case.log"))
    assert plot_log.run_names([log, other]) == ["a", "a/case"]
    assert plot_log.run_names([str(tmp_path / "a")]) == ["a"]
    assert plot_log.run_names([log], ["mine"]) == ["mine"]
    with pytest.raises(PyclsError, match="1 names for 2 logs"):
        plot_log.main([log, other, "--out", str(tmp_path / "x.png"), "--names", "one"])
    iter_only = tmp_path / "iters.log"
    stats = {"epoch": "1/1", "iter": "1/4", "top1_err": 50.0, "loss": 1.0}
    iter_only.write_text(logging.dump_log_data(stats, "train_iter") + "\n")
    style, xs, ys = plot_log.load_curves(str(iter_only))["train"]
    assert xs == [0.25] and ys == {"top1_err": [50.0], "loss": [1.0]}


def test_plot_log_refuses_logs_without_stats(tmp_path):
    empty = tmp_path / "empty.log"
    empty.write_text("no stats here\n")
    out = tmp_path / "x.png"
    with pytest.raises(PyclsError, match="empty.log has no json_stats"):
        plot_log.main([str(empty), "--out", str(out)])
    cx_only = tmp_path / "cx.log"
    cx_only.write_text(logging.dump_log_data({"flops": 1}, "complexity") + "\n")
    with pytest.raises(PyclsError, match="cx.log has json_stats but no train or test"):
        plot_log.main([str(cx_only), "--out", str(out)])
    with pytest.raises(PyclsError, match="does not exist"):
        plot_log.main([str(tmp_path / "missing.log"), "--out", str(out)])
    assert not out.exists()


def test_plot_log_without_matplotlib(tmp_path, monkeypatch):
    log = _write_log(str(tmp_path / "run" / "stdout.log"))
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(PyclsError, match="pip install matplotlib"):
        plot_log.main([log, "--out", str(tmp_path / "x.png")])


# -------------------------------- convert_weights.py -------------------------------- #


def _randomised_tv_b3():
    """Builds torchvision's efficientnet_b3 (no download) with random weights and BN stats."""
    torch.manual_seed(1)
    model = torchvision.models.efficientnet_b3(weights=None)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0.0, 0.2)
            m.running_mean.normal_(0.0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return _calibrate_bn(model, torch.randn(16, 3, 96, 96))


@pytest.fixture(scope="module")
def tv_b3(tmp_path_factory):
    """Returns (torchvision EN-B3 with random weights, path of its saved state dict)."""
    model = _randomised_tv_b3()
    path = str(tmp_path_factory.mktemp("tv") / "efficientnet_b3.pth")
    torch.save(model.state_dict(), path)
    return model, path


def _en_b3():
    """Builds this project's EN-B3 from its config."""
    reset_cfg()
    merge_from_file(_EN_B3)
    return builders.build_model().eval()


def _params(module):
    """Counts a module's parameters."""
    return sum(p.numel() for p in module.parameters())


def test_en_b3_lines_up_with_torchvision_stage_by_stage():
    tv = torchvision.models.efficientnet_b3(weights=None)
    ours = _en_b3()
    assert cfg.MODEL.ACTIVATION_FUN == "silu"
    bns = [m for m in tv.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {(m.eps, m.momentum) for m in bns} == {(cfg.BN.EPS, cfg.BN.MOM)} == {(1e-5, 0.1)}
    assert _params(tv.features[0]) == _params(ours.stem)
    for i in range(1, 8):
        assert _params(tv.features[i]) == _params(getattr(ours, "s{}".format(i))), i
    assert _params(tv.features[8]) + _params(tv.classifier) == _params(ours.head)
    assert _params(tv) == _params(ours) == 12233232


def _photo_crops():
    """Nine crops of a real photo (scikit-learn's china.jpg) as RGB uint8 CHW tensors."""
    from sklearn.datasets import load_sample_image

    photo = torch.from_numpy(load_sample_image("china.jpg").copy()).permute(2, 0, 1)
    return [photo[:, y : y + 200, x : x + 260] for y in (0, 100, 200) for x in (0, 180, 360)]


def _torchvision_eval(images, size, crop):
    """torchvision's own ImageNet eval preprocessing (RGB, its mean / std) of the images."""
    from torchvision.transforms import v2

    tf = v2.Compose([
        v2.Resize(size, antialias=True), v2.CenterCrop(crop), v2.ToDtype(torch.float32, scale=True),
        v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])  # fmt: skip
    return torch.stack([tf(im) for im in images])


@pytest.fixture(scope="module")
def tv_b3_photo(tv_b3, tmp_path_factory):
    """tv_b3's model with the BN stats of the photo crops (so that its logits are of a sane
    size, not chaotic); returns (model, its state dict file)."""
    import copy

    model = _calibrate_bn(copy.deepcopy(tv_b3[0]), _torchvision_eval(_photo_crops(), 72, 64))
    path = str(tmp_path_factory.mktemp("tv_photo") / "efficientnet_b3.pth")
    torch.save(model.state_dict(), path)
    return model, path


@pytest.mark.parametrize("order", ["bgr", "rgb"])
def test_convert_weights_gives_torchvision_outputs(tv_b3_photo, tmp_path, capsys, order):
    tv, src = tv_b3_photo
    out = str(tmp_path / "en_b3.pyth")
    convert_weights.main(["--src", src, "--out", out, "INPUT.CHANNEL_ORDER", order])
    assert "12,233,232 params, {} input".format(order) in capsys.readouterr().out
    checkpoint = torch.load(out, map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 0 and not checkpoint["optimizer_state"]
    assert "STEM_W: 40" in checkpoint["cfg"] and "HEAD_W: 1536" in checkpoint["cfg"]
    assert "CHANNEL_ORDER: {}".format(order) in checkpoint["cfg"]
    model = _en_b3()
    cp.load_weights(out, model)
    images = _photo_crops()
    # The same photo: torchvision's model on its own RGB input, ours on this project's loader's
    x_tv = _torchvision_eval(images, 72, 64)
    x_ours = torch.stack([transforms.test_transform(72, 64, order)(im) for im in images])
    with torch.no_grad():
        expected, got = tv(x_tv), model(x_ours)
    assert (expected[0] - expected[1]).abs().max() > 0.1  # outputs depend on the input
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=0)
    assert torch.equal(got.topk(5).indices, expected.topk(5).indices)
    if order == "bgr":  # the stem was permuted: RGB input no longer gives torchvision's logits
        with torch.no_grad():
            assert not torch.allclose(model(x_tv), expected, atol=1e-3, rtol=0)


def test_convert_weights_refuses_bad_inputs(tv_b3, tmp_path):
    _, src = tv_b3
    out = tmp_path / "out.pyth"
    out.write_text("keep")
    with pytest.raises(PyclsError, match="exists"):
        convert_weights.main(["--src", src, "--out", str(out)])
    assert out.read_text() == "keep"
    out = str(tmp_path / "new.pyth")
    b0 = tmp_path / "b0.pth"
    torch.save(torchvision.models.efficientnet_b0(weights=None).state_dict(), str(b0))
    with pytest.raises(PyclsError, match=r"missing: .*shapes: .*s1\.b1\.dwise\.weight"):
        convert_weights.main(["--src", str(b0), "--out", out])
    foreign = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), str(foreign))
    with pytest.raises(PyclsError, match="no torchvision EfficientNet keys"):
        convert_weights.main(["--src", str(foreign), "--out", out])
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a zip")
    with pytest.raises(PyclsError, match="cannot read"):
        convert_weights.main(["--src", str(corrupt), "--out", out])
    assert not os.path.exists(out)


def test_convert_weights_key_map():
    keys = [
        "features.0.0.weight",
        "features.0.1.running_var",
        "features.1.0.block.0.0.weight",
        "features.1.0.block.1.fc2.bias",
        "features.2.1.block.0.1.weight",
        "features.2.1.block.3.1.num_batches_tracked",
        "features.8.1.bias",
        "classifier.1.weight",
    ]
    sizes = {"1.0": 3, "2.1": 4}
    assert [convert_weights.map_key(k, 8, sizes) for k in keys] == [
        "stem.conv.weight",
        "stem.bn.running_var",
        "s1.b1.dwise.weight",
        "s1.b1.se.f_ex.2.bias",
        "s2.b2.exp_bn.weight",
        "s2.b2.lin_proj_bn.num_batches_tracked",
        "head.conv_bn.bias",
        "head.fc.weight",
    ]
    assert convert_weights.map_key("features.1.0.block.5.0.weight", 8, sizes) is None


# ------------------------------------- the CLIs ------------------------------------- #


@pytest.mark.parametrize("tool", ["predict", "export_onnx", "plot_log", "convert_weights"])
def test_tool_help(tool):
    cmd = [sys.executable, os.path.join(REPO, "tools", tool + ".py"), "--help"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0 and "usage:" in result.stdout


def test_tool_error_is_one_line(tmp_path):
    cmd = [sys.executable, os.path.join(REPO, "tools", "convert_weights.py")]
    cmd += ["--src", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "x.pyth")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: source {} does not exist; check --src".format(tmp_path / "missing.pth")
    ]
