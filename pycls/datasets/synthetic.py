"""Synthetic data: random normalised images and labels from memory, for speed runs without disk.

A small bank of random samples is made once; item i is bank[i % bank size], so an item costs
nothing but the collate copy. The length of an epoch is TRAIN_LENGTH / TEST_LENGTH (ImageNet's
sizes), or DATA_LOADER.SYNTHETIC_LENGTH where the config has that key and it is above 0.
"""

import torch
import torch.utils.data

# Epoch lengths of the synthetic train and test sets (ImageNet's train and val sizes)
TRAIN_LENGTH = 1281167
TEST_LENGTH = 50000

# Number of distinct random samples kept in memory
BANK_SIZE = 16


class Synthetic(torch.utils.data.Dataset):
    """Random float32 CHW images of one size with labels in [0, num_classes)."""

    def __init__(self, length, im_size, num_classes, seed=0, bank_size=BANK_SIZE):
        generator = torch.Generator().manual_seed(seed)
        bank_size = max(1, min(bank_size, length))
        self.length = length
        self.images = torch.randn(bank_size, 3, im_size, im_size, generator=generator)
        self.labels = torch.randint(num_classes, (bank_size,), generator=generator).tolist()

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        j = index % len(self.labels)
        return self.images[j], self.labels[j]
