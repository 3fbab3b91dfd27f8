"""Per-volume validation scores of the 3-D KL autoencoder: what MONAI's 3-D recipes measure, one value a volume.

Scoring a volume by the mean over its slices rewards the empty slices: a padding slice reproduced exactly reads
the 100 dB cap (``aetune.metrics.MSE_FLOOR``), so a model that only learnt the padding gains tens of dB there
while the volume's own PSNR hardly moves. Here PSNR is over every voxel of the volume, SSIM is MONAI's 3-D
SSIM (Gaussian window 11, sigma 1.5) and L1 is the mean absolute error MONAI's 3-D LDM script picks its best
model on.
"""

from __future__ import annotations

import torch
from torch import Tensor

from aetune.metrics import psnr_from_mse
from aetune.optional import require

SSIM_WINDOW = 11
"""MONAI ``SSIMMetric``'s default window per axis; shorter axes use their own (odd) length."""


def _check_volumes(a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape or a.ndim != 5:
        raise ValueError(f"expected two (B, C, D, H, W) volumes of one shape, got {tuple(a.shape)}, {tuple(b.shape)}")


@torch.no_grad()
def volume_psnr(a: Tensor, b: Tensor) -> Tensor:
    """PSNR over each whole volume, in dB, at most 100 dB (identical volumes).

    Args:
        a, b: (B, C, D, H, W) volumes in [0, 1].

    Returns:
        (B,) float32 dB: ``10 log10(1 / MSE)`` with the MSE over all the volume's voxels.
    """
    _check_volumes(a, b)
    mse = (a.float() - b.float()).pow(2).mean(dim=(1, 2, 3, 4))
    return psnr_from_mse(mse)


@torch.no_grad()
def volume_l1(a: Tensor, b: Tensor) -> Tensor:
    """Mean absolute error per volume: (B, C, D, H, W) in [0, 1] -> (B,) float32 in [0, 1]."""
    _check_volumes(a, b)
    return (a.float() - b.float()).abs().mean(dim=(1, 2, 3, 4))


@torch.no_grad()
def volume_ssim(a: Tensor, b: Tensor) -> Tensor:
    """MONAI's 3-D SSIM per volume (``monai.metrics.SSIMMetric(spatial_dims=3, data_range=1)``).

    Args:
        a, b: (B, C, D, H, W) volumes in [0, 1]; an axis shorter than 11 voxels uses a window of its own length
            (made odd), where MONAI would fail.

    Returns:
        (B,) float32 in [-1, 1], averaged over voxels and channels.
    """
    _check_volumes(a, b)
    metrics = require("monai.metrics", "--family kl3d validation")
    window = [min(SSIM_WINDOW, n if n % 2 else n - 1) for n in a.shape[2:]]
    ssim = metrics.SSIMMetric(spatial_dims=3, data_range=1.0, win_size=window)
    return ssim(a.float(), b.float()).mean(dim=1).float()  # (B, C) -> (B,)
