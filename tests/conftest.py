import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def blob_labels(n, c, h, w, seed=0, ignore_frac=0.05, all_classes=True):
    """Spatially coherent random labels (upsampled coarse grid), every class present."""
    g = torch.Generator().manual_seed(seed)
    while True:
        coarse = torch.randint(0, c, (n, 1, max(2, h // 6), max(2, w // 6)), generator=g)
        lab = torch.nn.functional.interpolate(coarse.float(), size=(h, w),
                                              mode='nearest').long()[:, 0]
        if ignore_frac:
            lab[torch.rand(lab.shape, generator=g) < ignore_frac] = 255
        if not all_classes or all((lab == k).any() for k in range(c)):
            return lab


@pytest.fixture
def labels():
    return blob_labels
