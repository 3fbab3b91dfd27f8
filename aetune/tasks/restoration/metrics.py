"""Image-restoration metrics: Y-channel PSNR / SSIM, LPIPS-VGG and Final_Score, overall and per degradation type.

Conventions (pyiqa ``psnr``/``ssim`` with ``test_y_channel=True, color_space="ycbcr"``, as the HYPIR fork
validates, and BasicSR's ``calculate_psnr``/``calculate_ssim`` with ``test_y_channel=True``):

1. Both images are clamped to [0, 1] and rounded to 8 bit (``round(x * 255) / 255``): the numbers describe
   the PNG a user saves (BasicSR's ``tensor2img``).
2. ``crop_border`` pixels are removed from every side (super-resolution papers crop the scale factor).
3. PSNR compares BT.601 studio-swing luma ``Y = 16 + (65.481 R + 128.553 G + 24.966 B)`` (RGB in [0, 1],
   Y in [16, 235]) on a peak of 255, unrounded (pyiqa with ``data_range=1``; BasicSR's Y of uint8 RGB).
4. SSIM: Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), no padding, on Y rounded to integers
   (pyiqa; MATLAB on uint8), ``aetune.metrics.ssim``. BasicSR keeps Y unrounded: at most half a grey level
   apart, a difference in the 4th decimal.
5. LPIPS-VGG (``lpips`` 0.1) on the same 8-bit RGB images mapped to [-1, 1].
6. ``Final_Score = PSNR + 10 * SSIM - 5 * LPIPS`` (the fork's model-selection score; higher is better).

All functions take (B, 3, H, W) float tensors (any range: values are clamped to [0, 1]) and return one
value per image, shape (B,), so results can be grouped by degradation type afterwards.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from aetune.metrics import lpips_distance, psnr, ssim

METRIC_NAMES = ("psnr", "ssim", "lpips", "final_score")
"""Keys of :func:`restoration_metrics` and of each group in :func:`aggregate_by_type`."""
FINAL_SCORE_WEIGHTS = {"psnr": 1.0, "ssim": 10.0, "lpips": -5.0}
"""Final_Score = PSNR + 10 SSIM - 5 LPIPS (HYPIR fork): 0.1 SSIM or 0.2 LPIPS weighs as much as 1 dB."""


def quantize_8bit(x: Tensor) -> Tensor:
    """[0, 1] images -> the nearest 8-bit level, still float in [0, 1] (values outside are clamped)."""
    return torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0


def _prepare(output: Tensor, target: Tensor, crop_border: int) -> tuple[Tensor, Tensor]:
    """Quantise both (B, 3, H, W) images to 8 bit and crop ``crop_border`` pixels per side."""
    if output.shape != target.shape or output.ndim != 4 or output.shape[1] != 3:
        raise ValueError(
            f"expected two (B, 3, H, W) RGB tensors of one shape, got {tuple(output.shape)} and {tuple(target.shape)}"
        )
    if crop_border < 0 or 2 * crop_border >= min(output.shape[-2:]):
        raise ValueError(f"crop_border={crop_border} must be >= 0 and leave pixels of {tuple(output.shape[-2:])}")
    a, b = quantize_8bit(output.float()), quantize_8bit(target.float())
    if crop_border:
        c = crop_border
        a, b = a[..., c:-c, c:-c], b[..., c:-c, c:-c]
    return a, b


def psnr_y(output: Tensor, target: Tensor, crop_border: int = 0) -> Tensor:
    """PSNR of BT.601 luma per image, in dB, by the module's conventions.

    Args:
        output, target: (B, 3, H, W) RGB in [0, 1].
        crop_border: pixels removed from each side first.

    Returns:
        (B,) float32 dB (identical images read the cap of ``aetune.metrics.psnr``).
    """
    a, b = _prepare(output, target, crop_border)
    return psnr(a, b, y_channel=True)


def ssim_y(output: Tensor, target: Tensor, crop_border: int = 0) -> Tensor:
    """SSIM of 8-bit BT.601 luma per image, by the module's conventions.

    Args:
        output, target: (B, 3, H, W) RGB in [0, 1]; H, W >= 11 + 2 * crop_border.
        crop_border: pixels removed from each side first.

    Returns:
        (B,) float32 in [-1, 1].
    """
    a, b = _prepare(output, target, crop_border)
    return ssim(a, b, y_channel=True)


def final_score(psnr_db: Tensor | float, ssim_value: Tensor | float, lpips_value: Tensor | float) -> Tensor | float:
    """``PSNR + 10 SSIM - 5 LPIPS``, elementwise (tensors of one shape, or floats)."""
    w = FINAL_SCORE_WEIGHTS
    return w["psnr"] * psnr_db + w["ssim"] * ssim_value + w["lpips"] * lpips_value


@torch.no_grad()
def restoration_metrics(
    output: Tensor, target: Tensor, lpips_model: nn.Module | None, crop_border: int = 0
) -> dict[str, Tensor]:
    """Every restoration metric of a batch, per image.

    Args:
        output: (B, 3, H, W) restored images in [0, 1].
        target: (B, 3, H, W) ground truth in [0, 1].
        lpips_model: LPIPS-VGG taking [-1, 1] images (``aetune.losses.build_lpips``); None leaves
            ``lpips`` and ``final_score`` out (a CPU run without VGG weights must say so, not report 0).
        crop_border: pixels removed from each side before every metric.

    Returns:
        ``{"psnr", "ssim"[, "lpips", "final_score"]}`` -> (B,) float32 on the input's device.
    """
    a, b = _prepare(output, target, crop_border)
    out = {"psnr": psnr(a, b, y_channel=True), "ssim": ssim(a, b, y_channel=True)}
    if lpips_model is not None:
        out["lpips"] = lpips_distance(lpips_model, a, b)
        out["final_score"] = final_score(out["psnr"], out["ssim"], out["lpips"])
    return out


def aggregate_by_type(types: Sequence[str], values: Mapping[str, Tensor | Sequence[float]]) -> dict[str, float]:
    """Means over all images and per degradation type, keyed as the validation logs them.

    ``final_score`` of a group is recomputed from that group's mean PSNR, SSIM and LPIPS (the fork's
    definition; equal to the mean of per-image scores because the score is linear).

    Args:
        types: (N,) degradation type of each image, e.g. ``["Blur", "Noise", ...]``.
        values: metric name -> (N,) per-image values (from :func:`restoration_metrics`, concatenated).

    Returns:
        ``{"psnr": .., "ssim": .., "<Type>/psnr": .., ...}``: overall keys bare, per-type keys prefixed by
        the type, types in first-seen order; ``final_score`` whenever psnr, ssim and lpips are present.

    Raises:
        ValueError: a metric has a different number of values than ``types``, or there are none.
    """
    n = len(types)
    if n == 0:
        raise ValueError("aggregate_by_type needs at least one image")
    cols = {k: torch.as_tensor(v, dtype=torch.float64).flatten().cpu() for k, v in values.items() if k != "final_score"}
    for k, v in cols.items():
        if v.numel() != n:
            raise ValueError(f"metric '{k}' has {v.numel()} values for {n} images")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(types):
        groups[t].append(i)

    def means(index: Tensor | None) -> dict[str, float]:
        m = {k: float(v.mean() if index is None else v[index].mean()) for k, v in cols.items()}
        if {"psnr", "ssim", "lpips"} <= m.keys():
            m["final_score"] = float(final_score(m["psnr"], m["ssim"], m["lpips"]))
        return m

    out = means(None)
    for t, idx in groups.items():
        out.update({f"{t}/{k}": v for k, v in means(torch.tensor(idx)).items()})
    return out
