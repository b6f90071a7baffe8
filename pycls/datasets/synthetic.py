"""Synthetic data: random normalised images and labels from memory, for speed runs without disk.

A small bank of random samples is made once; item i is bank[i % bank size], so an item costs only
the collate copy. An epoch is ImageNet-sized unless DATA_LOADER.SYNTHETIC_LENGTH is above 0.
"""

import torch
import torch.utils.data

# Epoch lengths of the synthetic train and test sets (ImageNet's train and val sizes)
TRAIN_LENGTH, TEST_LENGTH = 1281167, 50000


class Synthetic(torch.utils.data.Dataset):
    """Random float32 CHW images of one size with labels in [0, num_classes)."""

    def __init__(self, length, im_size, num_classes, seed=0, bank_size=16):
        generator = torch.Generator().manual_seed(seed)
        bank_size = max(1, min(bank_size, length))
        self.length = length
        self.images = torch.randn(bank_size, 3, im_size, im_size, generator=generator)
        self.labels = torch.randint(num_classes, (bank_size,), generator=generator).tolist()

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        return self.images[index % len(self.labels)], self.labels[index % len(self.labels)]
