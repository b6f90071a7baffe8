"""Image transforms (torchvision v2): train and test pipelines as in pycls.

Both take an RGB image as a uint8 CHW tensor (or a PIL image) and return a float32 CHW tensor
normalised with the ImageNet mean and std. Cropping and resizing run on uint8 tensors with
antialiasing, which is faster than PIL; the float conversion comes last.
"""

import torch
from torchvision.transforms import v2

from pycls.datasets.augment import make_augment

# Per-channel mean and std of ImageNet in RGB order (on the [0, 1] scale)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# Eigenvalues and eigenvectors (columns) of the ImageNet RGB covariance (AlexNet PCA jitter)
EIG_VALS = (0.2175, 0.0188, 0.0045)
EIG_VECS = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


class NormalizeLighting(v2.Transform):
    """uint8 RGB -> float32 normalised by MEAN / STD, plus AlexNet PCA lighting noise.

    One fused pass: x * 1 / (255 std) + (offset - mean) / std, where the RGB offset is
    EIG_VECS @ (alpha * EIG_VALS) with alpha ~ N(0, pca_std) per image (0 when pca_std is 0),
    on the [0, 1] scale as in pycls. Float inputs are taken to be on the [0, 1] scale already.
    """

    def __init__(self, pca_std=0.0):
        super().__init__()
        self.pca_std = pca_std
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)
        self.eig_vals = torch.tensor(EIG_VALS)
        self.eig_vecs = torch.tensor(EIG_VECS)

    def make_params(self, flat_inputs):
        """Draws the RGB lighting offset of one image."""
        if self.pca_std <= 0:
            return {"offset": torch.zeros(3, 1, 1)}
        alpha = torch.randn(3) * self.pca_std
        return {"offset": (self.eig_vecs @ (alpha * self.eig_vals)).view(3, 1, 1)}

    def transform(self, inpt, params):
        """Returns the normalised float32 image as a plain tensor."""
        inpt = inpt.as_subclass(torch.Tensor)
        top = 255.0 if inpt.dtype == torch.uint8 else 1.0
        bias = (params["offset"] - self.mean) / self.std
        return inpt.to(torch.float32).mul_(1.0 / (top * self.std)).add_(bias)


def train_transform(im_size, augment="", pca_std=0.0, crop_scale=(0.08, 1.0), hflip=0.5):
    """Returns the train transform: random resized crop, flip, augment, lighting, normalise."""
    crop = v2.RandomResizedCrop(im_size, scale=tuple(crop_scale), antialias=True)
    ops = [v2.ToImage(), crop, v2.RandomHorizontalFlip(hflip)]
    augment_op = make_augment(augment)
    if augment_op is not None:
        ops.append(augment_op)
    return v2.Compose(ops + [NormalizeLighting(pca_std)])


def test_transform(test_size, crop_size):
    """Returns the test transform: resize the short side to test_size, center crop, normalise."""
    ops = [v2.ToImage(), v2.Resize(test_size, antialias=True), v2.CenterCrop(crop_size)]
    return v2.Compose(ops + [NormalizeLighting()])
