"""The SSIM loss has a gradient that trains (the HYPIR fork's is constant) and matches scikit-image's SSIM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from aetune.losses.ssim import ssim_differentiable, ssim_loss


@pytest.fixture
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    """Two batches of 2 RGB images 3 x 30 x 38 in [-1, 1]: b a noisy copy of a smooth a."""
    g = torch.Generator().manual_seed(3)
    a = torch.nn.functional.avg_pool2d(torch.rand(2, 3, 34, 42, generator=g), 5, stride=1) * 2 - 1
    b = (a + 0.15 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    return a, b


def test_matches_skimage_within_float32_round_off(pair):
    """Tolerance 1e-5: float32 moments (eps 6e-8 on values <= 1) err by ~1e-7 on variances, which the
    constants C1 = 1e-4 and C2 = 9e-4 bound away from 0, so SSIM errs by ~1e-6; the float64 reference
    differs from this only by that round-off."""
    a, b = pair
    got = ssim_differentiable(a, b)
    ref = [
        structural_similarity(
            ((x.double().numpy() + 1) / 2).transpose(1, 2, 0),
            ((y.double().numpy() + 1) / 2).transpose(1, 2, 0),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=2,
        )
        for x, y in zip(a, b, strict=True)
    ]
    assert got.shape == (2,) and got.dtype == torch.float32
    assert 0.2 < min(ref) < max(ref) < 0.95  # a regime where a wrong window or constant shows
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-5)
    assert ssim_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert ssim_loss(a, b).item() == pytest.approx(1 - float(np.mean(ref)), abs=1e-5)


def test_one_minus_ssim_changes_the_weights():
    """An optimizer step on (1 - SSIM) alone moves every weight of a tiny net and lowers the loss."""
    torch.manual_seed(0)
    target = torch.nn.functional.avg_pool2d(torch.rand(2, 3, 28, 28), 5, stride=1) * 2 - 1
    source = (target + 0.3 * torch.randn_like(target)).clamp(-1, 1)
    net = torch.nn.Conv2d(3, 3, 3, padding=1)
    before = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    first = ssim_loss(target, net(source))
    first.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    opt.step()
    assert all(not torch.equal(p0, p) for p0, p in zip(before, net.parameters(), strict=True))
    for _ in range(20):
        opt.zero_grad()
        loss = ssim_loss(target, net(source))
        loss.backward()
        opt.step()
    assert loss.item() < first.item() - 0.01


def test_rejects_small_or_mismatched_images():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim_loss(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="one shape"):
        ssim_loss(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 17))
