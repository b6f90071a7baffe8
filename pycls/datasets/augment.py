"""AutoAugment and RandAugment from torchvision (v2), named by pycls-style strings.

TRAIN.AUGMENT is "", "AutoAugment" (the ImageNet policy) or "RandAugment" with optional "_N<ops>"
and "_M<magnitude>" parts; M runs from 0 to 1 as in pycls, on torchvision's bins 0..30 (M0.5: 15).
"""

from torchvision.transforms import v2

from pycls.core.errors import PyclsError

# Number of magnitude bins of torchvision's RandAugment (its default)
_NUM_MAGNITUDE_BINS = 31

_FORMAT = '"", "AutoAugment" or "RandAugment_N<ops>_M<0..1>" (e.g. "RandAugment_N2_M0.5")'


def _bad(augment_str, why):
    """Builds the error for a TRAIN.AUGMENT string that cannot be read."""
    return PyclsError("TRAIN.AUGMENT {!r} {}; use {}".format(augment_str, why, _FORMAT))


def make_augment(augment_str):
    """Returns the torchvision v2 transform for a TRAIN.AUGMENT string (None for "")."""
    if not augment_str:
        return None
    name, *parts = augment_str.split("_")
    if name == "AutoAugment" and not parts:
        return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
    if name != "RandAugment":
        why = "takes no parameters" if name == "AutoAugment" else "is not a known augmentation"
        raise _bad(augment_str, why)
    params = {"N": 2.0, "M": 0.5}  # pycls's defaults: two ops at half magnitude
    for part in parts:
        if part[:1] not in params:
            raise _bad(augment_str, "has an unknown part {!r}".format(part))
        try:
            params[part[0]] = float(part[1:])
        except ValueError:
            raise _bad(augment_str, "has a part {!r} that is not a number".format(part)) from None
    n_ops, magnitude = params["N"], params["M"]
    if not (n_ops >= 0 and n_ops.is_integer()):  # NaN and inf fail too
        raise _bad(augment_str, "needs a whole number of ops N")
    if not 0.0 <= magnitude <= 1.0:
        raise _bad(augment_str, "needs a magnitude M between 0 and 1")
    level = int(round(magnitude * (_NUM_MAGNITUDE_BINS - 1)))
    return v2.RandAugment(int(n_ops), level, num_magnitude_bins=_NUM_MAGNITUDE_BINS)
