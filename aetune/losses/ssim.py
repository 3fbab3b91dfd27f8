"""A differentiable SSIM loss, ``1 - SSIM``, for restoration training.

The HYPIR fork adds ``(1 - pyiqa_ssim) * lambda`` to its generator loss, but pyiqa metrics are built with
``as_loss=False`` and run under ``torch.set_grad_enabled(False)``: the term is a constant and trains
nothing. This one keeps the graph. It is the SSIM of ``aetune.metrics.ssim`` (Wang et al. 2004, 11x11
Gaussian window with sigma 1.5, no padding, population variances), computed per RGB channel in float32 on
[0, 1] values with data range 1 (the training range, not 8-bit Y: rounding has no gradient). It equals
scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=1, channel_axis=...)`` up to float32 round-off.
"""

from __future__ import annotations

import torch
from torch import Tensor

from aetune.metrics import SSIM_K1, SSIM_K2, SSIM_RADIUS, _blur, _gaussian_window

SSIM_WINDOW = 2 * SSIM_RADIUS + 1
"""Side of the Gaussian window (11): images must be at least this large."""


def ssim_differentiable(x: Tensor, y: Tensor) -> Tensor:
    """Mean SSIM per image, with gradients.

    Args:
        x, y: (B, C, H, W) images in [-1, 1] (the autoencoders' range), H, W >= 11; any float dtype
            (computed in float32).

    Returns:
        (B,) float32 in [-1, 1]: the per-channel mean SSIM map, averaged over channels.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"SSIM needs two (B, C, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {tuple(x.shape[-2:])}")
    a, b = (x.float() + 1) / 2, (y.float() + 1) / 2  # [-1, 1] -> [0, 1], data range 1
    bsz, ch, h, w = a.shape
    stack = torch.cat([a, b, a * a, b * b, a * b]).reshape(5 * bsz * ch, 1, h, w)  # every channel filtered alike
    win = _gaussian_window(a.device).to(a.dtype)
    mu_a, mu_b, e_aa, e_bb, e_ab = _blur(stack, win).reshape(5, bsz, ch, h - SSIM_WINDOW + 1, -1)
    var_a, var_b, cov = e_aa - mu_a**2, e_bb - mu_b**2, e_ab - mu_a * mu_b
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean(dim=(2, 3)).mean(dim=1)  # (B, C) -> (B,)


def ssim_loss(x: Tensor, x_rec: Tensor) -> Tensor:
    """``1 - mean SSIM`` over the batch: a float32 scalar in [0, 2], 0 for identical images.

    Args:
        x, x_rec: (B, C, H, W) target and output in [-1, 1].
    """
    return 1.0 - ssim_differentiable(x, x_rec).mean()
