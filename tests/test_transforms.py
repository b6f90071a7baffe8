"""Train and test transforms, PCA lighting, normalisation and the augment strings."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from pycls.core.errors import PyclsError
from pycls.datasets import transforms
from pycls.datasets.augment import make_augment

MEAN = torch.tensor(transforms.MEAN).view(3, 1, 1)
STD = torch.tensor(transforms.STD).view(3, 1, 1)


def _flat(value, size=(3, 20, 30)):
    """Returns a uint8 CHW image of one colour."""
    return torch.tensor(value, dtype=torch.uint8).view(3, 1, 1).expand(size).contiguous()


def test_pycls_constants():
    assert transforms.EIG_VALS == (0.2175, 0.0188, 0.0045)
    vecs = np.array(transforms.EIG_VECS)
    assert vecs[0].tolist() == [-0.5675, 0.7192, 0.4009]
    assert np.allclose(vecs.T @ vecs, np.eye(3), atol=1e-3)  # orthonormal columns
    assert transforms.MEAN == (0.485, 0.456, 0.406) and transforms.STD == (0.229, 0.224, 0.225)


@pytest.mark.parametrize("order", ["rgb", "bgr"])
def test_test_transform_normalises_exactly(order):
    out = transforms.test_transform(24, 16, order)(_flat([10, 128, 250]))
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    assert type(out) is torch.Tensor
    want = (torch.tensor([10, 128, 250]).view(3, 1, 1) / 255.0 - MEAN) / STD
    want = want.flip(0) if order == "bgr" else want  # pycls: normalise in RGB, then reverse
    assert torch.allclose(out, want.expand(3, 16, 16), atol=1e-5)


def test_bgr_is_the_default_and_uses_the_bgr_mean_and_std():
    assert transforms.mean_std("bgr") == ((0.406, 0.456, 0.485), (0.225, 0.224, 0.229))
    assert transforms.mean_std("rgb") == (transforms.MEAN, transforms.STD)
    im = _flat([255, 0, 0], (3, 8, 8))  # pure red
    out = transforms.test_transform(8, 8)(im)
    assert torch.allclose(out[0], torch.tensor((0.0 - 0.406) / 0.225))  # blue first
    assert torch.allclose(out[2], torch.tensor((1.0 - 0.485) / 0.229))  # red last
    with pytest.raises(ValueError, match="channel order 'brg'"):
        transforms.NormalizeLighting(0.0, "brg")


def test_test_transform_resizes_short_side_then_center_crops():
    im = torch.zeros(3, 40, 80, dtype=torch.uint8)
    im[:, :, 40:] = 255  # right half white: the center crop straddles the edge
    out = transforms.test_transform(20, 10, "rgb")(im)  # 40x80 -> 20x40 -> center 10x10
    white = (1.0 - MEAN) / STD
    assert torch.allclose(out[:, :, -1], white.view(3, 1).expand(3, 10), atol=1e-4)
    assert torch.allclose(out[:, :, 0], (-MEAN / STD).view(3, 1).expand(3, 10), atol=1e-4)


def test_train_transform_takes_pil_and_tensor_and_small_images():
    tf = transforms.train_transform(12, "", 0.1)
    pil = Image.fromarray(np.zeros((5, 3, 3), dtype=np.uint8))
    for im in (pil, _flat([1, 2, 3], (3, 2, 2)), _flat([1, 2, 3], (3, 300, 200))):
        out = tf(im)
        assert out.shape == (3, 12, 12) and out.dtype == torch.float32 and type(out) is torch.Tensor


def test_train_transform_pieces_in_pycls_order():
    tf = transforms.train_transform(8, "AutoAugment", 0.1)
    kinds = [type(op) for op in tf.transforms]
    assert kinds == [
        v2.ToImage,
        v2.RandomResizedCrop,
        v2.RandomHorizontalFlip,
        v2.AutoAugment,
        transforms.NormalizeLighting,
    ]
    assert tf.transforms[1].antialias


def test_lighting_adds_the_pca_offset_per_image():
    im = _flat([100, 150, 200], (3, 8, 8))
    torch.manual_seed(5)
    out = transforms.NormalizeLighting(0.1, "rgb")(im)
    torch.manual_seed(5)
    alpha = torch.randn(3) * 0.1
    offset = torch.tensor(transforms.EIG_VECS) @ (alpha * torch.tensor(transforms.EIG_VALS))
    want = (im.float() / 255 + offset.view(3, 1, 1) - MEAN) / STD
    assert torch.allclose(out, want, atol=1e-5)
    torch.manual_seed(5)  # bgr: the same RGB noise (pycls adds it in RGB), channels reversed
    assert torch.allclose(transforms.NormalizeLighting(0.1, "bgr")(im), want.flip(0), atol=1e-5)
    assert not torch.allclose(out, transforms.NormalizeLighting(0.0, "rgb")(im))
    assert torch.equal(transforms.NormalizeLighting(0.0)(im), transforms.NormalizeLighting()(im))


def test_normalise_takes_float_images_on_unit_scale():
    im = torch.full((3, 4, 4), 0.5)
    want = ((0.5 - MEAN) / STD).expand(3, 4, 4)
    assert torch.allclose(transforms.NormalizeLighting(0.0, "rgb")(im), want)
    assert torch.allclose(transforms.NormalizeLighting(0.0, "bgr")(im), want.flip(0))
    assert torch.equal(im, torch.full((3, 4, 4), 0.5))  # the input is left as it was


def test_augment_strings():
    assert make_augment("") is None
    assert isinstance(make_augment("AutoAugment"), v2.AutoAugment)
    rand = make_augment("RandAugment")
    assert (rand.num_ops, rand.magnitude, rand.num_magnitude_bins) == (2, 15, 31)
    rand = make_augment("RandAugment_N3_M0.7")
    assert (rand.num_ops, rand.magnitude) == (3, 21)
    assert make_augment("RandAugment_M1_N1").magnitude == 30
    assert make_augment("RandAugment_N2_M0").magnitude == 0


@pytest.mark.parametrize(
    "bad",
    [
        "Foo",
        "autoaugment",
        "AutoAugment_N2",
        "RandAugment_X2",
        "RandAugment_Nx",
        "RandAugment_N1.5",
        "RandAugment_M1.5",
        "RandAugment_M-0.1",
        "RandAugment__",
    ],
)
def test_bad_augment_strings(bad):
    with pytest.raises(PyclsError, match="TRAIN.AUGMENT.*RandAugment_N2_M0.5"):
        make_augment(bad)


def test_augmented_train_transform_runs_on_uint8():
    torch.manual_seed(0)
    for augment in ("AutoAugment", "RandAugment_N2_M0.9"):
        out = transforms.train_transform(16, augment, 0.1)(_flat([1, 99, 200], (3, 30, 40)))
        assert out.shape == (3, 16, 16) and torch.isfinite(out).all()
