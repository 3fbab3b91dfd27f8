"""Restoration metrics against scikit-image: 8-bit rounding, BT.601 Y, border crop, Final_Score, per-type means."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from aetune.tasks.restoration.metrics import (
    aggregate_by_type,
    final_score,
    psnr_y,
    quantize_8bit,
    restoration_metrics,
    ssim_y,
)


@pytest.fixture
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    """Restored (noisy, slightly out of range) and target batches of 3 images, 3 x 36 x 44."""
    g = torch.Generator().manual_seed(1)
    gt = torch.nn.functional.avg_pool2d(torch.rand(3, 3, 40, 48, generator=g), 5, stride=1)
    out = gt + 0.06 * torch.randn(gt.shape, generator=g)  # a little outside [0, 1]: clamped first
    return out, gt


def _uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) float -> (H, W, 3) uint8, as BasicSR's tensor2img saves an output."""
    return np.round(np.clip(x.double().numpy(), 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)


def _skimage_y(x: torch.Tensor, crop: int) -> np.ndarray:
    """scikit-image's BT.601 Y (float, [16, 235]) of the 8-bit image, border cropped."""
    y = rgb2ycbcr(_uint8(x))[..., 0]
    return y[crop:-crop, crop:-crop] if crop else y


@pytest.mark.parametrize("crop", [0, 4])
def test_psnr_y_matches_skimage_on_8bit_luma(pair, crop):
    out, gt = pair
    got = psnr_y(out, gt, crop_border=crop)
    ref = [
        peak_signal_noise_ratio(_skimage_y(g, crop), _skimage_y(o, crop), data_range=255)
        for o, g in zip(out, gt, strict=True)
    ]
    assert got.shape == (3,)
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-4)


@pytest.mark.parametrize("crop", [0, 4])
def test_ssim_y_matches_skimage_on_rounded_8bit_luma(pair, crop):
    out, gt = pair
    got = ssim_y(out, gt, crop_border=crop)
    ref = [
        structural_similarity(
            np.round(_skimage_y(o, crop)),
            np.round(_skimage_y(g, crop)),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255,
        )
        for o, g in zip(out, gt, strict=True)
    ]
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-6)


def test_rounding_and_crop_change_the_numbers(pair):
    """The conventions are not decorative: unquantised or uncropped inputs give other values."""
    out, gt = pair
    assert quantize_8bit(torch.tensor([-0.2, 0.6 / 255, 1.4 / 255, 1.3])).tolist() == pytest.approx(
        [0.0, 1 / 255, 1 / 255, 1.0]
    )
    off_grid = (gt * 255).round() / 255 + 0.4 / 255  # rounds back onto the grid: PSNR of quantised = cap
    assert psnr_y(off_grid, gt).min() > 99
    damaged = gt.clone()
    damaged[..., :2, :] = 0  # damage only the 2 top rows
    assert psnr_y(damaged, gt, crop_border=2).min() > 99
    assert psnr_y(damaged, gt).max() < 40


def test_restoration_metrics_and_final_score(pair):
    out, gt = pair

    class FakeLPIPS(torch.nn.Module):
        """Mean absolute difference of [-1, 1] inputs: a stand-in that checks the range it is given."""

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            assert a.min() >= -1 and a.max() <= 1
            return (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)

    m = restoration_metrics(out, gt, FakeLPIPS())
    assert set(m) == {"psnr", "ssim", "lpips", "final_score"}
    torch.testing.assert_close(m["psnr"], psnr_y(out, gt))
    torch.testing.assert_close(m["ssim"], ssim_y(out, gt))
    expected_lpips = (quantize_8bit(out) * 2 - quantize_8bit(gt) * 2).abs().mean(dim=(1, 2, 3))
    torch.testing.assert_close(m["lpips"], expected_lpips)
    torch.testing.assert_close(m["final_score"], m["psnr"] + 10 * m["ssim"] - 5 * m["lpips"])
    assert set(restoration_metrics(out, gt, None)) == {"psnr", "ssim"}
    assert final_score(30.0, 0.9, 0.2) == pytest.approx(38.0)
    with pytest.raises(ValueError, match="crop_border"):
        psnr_y(out, gt, crop_border=20)


def test_aggregate_by_type_means_and_keys():
    types = ["Blur", "Noise", "Blur", "Noise", "Blur"]
    values = {
        "psnr": torch.tensor([30.0, 20.0, 32.0, 22.0, 34.0]),
        "ssim": [0.9, 0.5, 0.8, 0.7, 0.7],
        "lpips": torch.tensor([0.1, 0.4, 0.2, 0.2, 0.3]),
    }
    agg = aggregate_by_type(types, values)
    assert agg["psnr"] == pytest.approx(27.6)
    assert agg["Blur/psnr"] == pytest.approx(32.0) and agg["Noise/psnr"] == pytest.approx(21.0)
    assert agg["Noise/ssim"] == pytest.approx(0.6) and agg["Blur/lpips"] == pytest.approx(0.2)
    assert agg["Blur/final_score"] == pytest.approx(32.0 + 8.0 - 1.0)
    assert agg["final_score"] == pytest.approx(27.6 + 7.2 - 5 * 0.24)
    assert list(agg)[:4] == ["psnr", "ssim", "lpips", "final_score"]
    assert "final_score" not in aggregate_by_type(["A"], {"psnr": [30.0], "ssim": [0.9]})
    with pytest.raises(ValueError, match="2 values for 5 images"):
        aggregate_by_type(types, {"psnr": [1.0, 2.0]})
