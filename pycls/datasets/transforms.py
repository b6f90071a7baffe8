"""Image transforms (torchvision v2): the train and test pipelines of pycls.

Both take an RGB image as a uint8 CHW tensor (or a PIL image) and return a float32 CHW tensor in
the channel order the network sees (INPUT.CHANNEL_ORDER: "bgr" as pycls, or "rgb"), normalised
with the ImageNet mean and std in that order. Crop, resize and augment run in RGB on uint8 with
antialiasing; the reorder, float conversion, PCA lighting and normalisation come last, in one pass.
"""

import torch
from torchvision.transforms import v2

from pycls.datasets.augment import make_augment

# Per-channel mean and std of ImageNet in RGB order (on the [0, 1] scale)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# Channel orders the network can see, as indices into an RGB image's channels
CHANNEL_ORDERS = {"rgb": (0, 1, 2), "bgr": (2, 1, 0)}

# Eigenvalues and eigenvectors (columns) of the ImageNet RGB covariance (AlexNet PCA jitter)
EIG_VALS = (0.2175, 0.0188, 0.0045)
EIG_VECS = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))


def channel_index(channel_order):
    """Returns the RGB channel indices of a channel order ("bgr" or "rgb")."""
    if channel_order not in CHANNEL_ORDERS:
        msg = "channel order {!r} is not one of {}".format(channel_order, ", ".join(CHANNEL_ORDERS))
        raise ValueError(msg)
    return list(CHANNEL_ORDERS[channel_order])


def mean_std(channel_order):
    """Returns the (mean, std) tuples of ImageNet in a channel order."""
    index = channel_index(channel_order)
    return tuple(MEAN[i] for i in index), tuple(STD[i] for i in index)


class NormalizeLighting(v2.Transform):
    """uint8 RGB -> float32 in channel_order, normalised, plus AlexNet PCA lighting noise, in one
    pass: x / (255 std) + (offset - mean) / std, offset = EIG_VECS @ (alpha * EIG_VALS) with alpha
    ~ N(0, pca_std) per image, as pycls (RGB, then reversed). Float inputs are on [0, 1]."""

    def __init__(self, pca_std=0.0, channel_order="bgr"):
        super().__init__()
        self.pca_std, self.channel_order = pca_std, channel_order
        self.index = channel_index(channel_order)
        mean, std = mean_std(channel_order)
        self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
        self.eig_vals, self.eig_vecs = torch.tensor(EIG_VALS), torch.tensor(EIG_VECS)

    def make_params(self, flat_inputs):
        """Draws the lighting offset of one image (in channel_order)."""
        if self.pca_std <= 0:
            return {"offset": torch.zeros(3, 1, 1)}
        offset = self.eig_vecs @ (torch.randn(3) * self.pca_std * self.eig_vals)
        return {"offset": offset[self.index].view(3, 1, 1)}

    def transform(self, inpt, params):
        """Returns the normalised float32 image, in channel_order, as a plain tensor."""
        inpt = inpt.as_subclass(torch.Tensor)
        reorder = self.index != [0, 1, 2]
        if reorder:
            inpt = inpt[..., self.index, :, :]  # a copy
        top = 255.0 if inpt.dtype == torch.uint8 else 1.0
        bias = (params["offset"] - self.mean) / self.std
        out = inpt.to(torch.float32, copy=not reorder)  # never scale the caller's image in place
        return out.mul_(1.0 / (top * self.std)).add_(bias)

    # torchvision < 0.21 calls these private names
    def _get_params(self, flat_inputs):
        return self.make_params(flat_inputs)

    def _transform(self, inpt, params):
        return self.transform(inpt, params)


def train_transform(
    im_size, augment="", pca_std=0.0, crop_scale=(0.08, 1.0), hflip=0.5, channel_order="bgr"
):
    """Returns the train transform: random resized crop, flip, augment, lighting, normalise."""
    crop = v2.RandomResizedCrop(im_size, scale=tuple(crop_scale), antialias=True)
    ops, augment_op = [v2.ToImage(), crop, v2.RandomHorizontalFlip(hflip)], make_augment(augment)
    if augment_op is not None:
        ops.append(augment_op)
    return v2.Compose(ops + [NormalizeLighting(pca_std, channel_order)])


def test_transform(test_size, crop_size, channel_order="bgr"):
    """Returns the test transform: resize the short side to test_size, center crop, normalise."""
    ops = [v2.ToImage(), v2.Resize(test_size, antialias=True), v2.CenterCrop(crop_size)]
    return v2.Compose(ops + [NormalizeLighting(0.0, channel_order)])
