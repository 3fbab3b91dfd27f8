"""Latent statistics: streaming equals whole-tensor torch reductions; KL, dead channels, JSON, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from aetune.evaluate.latent_stats import NEAR_DEAD_STD, LatentStatsAccumulator
from aetune.models.outputs import DiagonalGaussian


def _latents(seed: int = 0) -> torch.Tensor:
    """(10, 4, 3, 5) latents with distinct per-channel means and scales; channel 3 constant (dead)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(10, 4, 3, 5, generator=g) * torch.tensor([1.0, 0.5, 3.0, 0.0]).view(1, 4, 1, 1)
    return z + torch.tensor([0.0, -2.0, 5.0, 0.25]).view(1, 4, 1, 1)


@pytest.mark.parametrize("batches", [[10], [3, 3, 4], [1] * 10])
def test_streaming_matches_torch_on_the_whole_tensor(batches: list[int]) -> None:
    z = _latents()
    acc = LatentStatsAccumulator("mode")
    for chunk in torch.split(z, batches):
        acc.update(chunk)
    s = acc.result()
    z64 = z.double()
    torch.testing.assert_close(s.channel_mean, z64.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(s.channel_std, z64.std(dim=(0, 2, 3)))  # unbiased, as LightningDiT
    torch.testing.assert_close(s.channel_min, z64.amin(dim=(0, 2, 3)))
    torch.testing.assert_close(s.channel_max, z64.amax(dim=(0, 2, 3)))
    assert s.global_mean == pytest.approx(float(z64.mean()), rel=1e-12)
    assert s.global_std == pytest.approx(float(z64.std()), rel=1e-12)
    assert s.scale_factor == pytest.approx(1 / float(z64.std()), rel=1e-12)
    assert s.shift == s.global_mean
    assert (s.num_images, s.latent_shape, s.source) == (10, (4, 3, 5), "mode")
    assert s.channel_kl is None and s.posterior_std is None


def test_lightningdit_stats_format() -> None:
    z = _latents()
    acc = LatentStatsAccumulator()
    acc.update(z)
    stats = acc.result().lightningdit_stats()
    assert set(stats) == {"mean", "std"}
    for key, ref in (("mean", z.mean(dim=[0, 2, 3], keepdim=True)), ("std", z.std(dim=[0, 2, 3], keepdim=True))):
        assert stats[key].shape == (1, 4, 1, 1) and stats[key].dtype == torch.float32
        torch.testing.assert_close(stats[key], ref)
    # LightningDiT normalises a (1, C, h, w) latent with them by broadcasting
    normed = (z - stats["mean"]) / stats["std"]
    torch.testing.assert_close(normed[:, :3].std(dim=(0, 2, 3)), torch.ones(3))


def test_near_dead_channel_is_counted() -> None:
    acc = LatentStatsAccumulator()
    acc.update(_latents())
    s = acc.result()
    assert s.channel_std[3] < NEAR_DEAD_STD
    assert s.near_dead_channels == [3]
    report = s.to_json()
    assert report["near_dead_channels"] == 1 and report["near_dead_channel_indices"] == [3]


def test_kl_and_posterior_std_analytic() -> None:
    """mean 1, logvar 0: KL = 0.5 * mu^2 = 0.5 per position; mean 0, logvar log 4: 0.5 (4 - 1 - log 4)."""
    h, w = 2, 3
    mean = torch.stack([torch.ones(h, w), torch.zeros(h, w)])[None].repeat(5, 1, 1, 1)  # (5, 2, h, w)
    logvar = torch.stack([torch.zeros(h, w), torch.full((h, w), math.log(4.0))])[None].repeat(5, 1, 1, 1)
    post = DiagonalGaussian(torch.cat([mean, logvar], dim=1))
    acc = LatentStatsAccumulator("sample")
    acc.update(post.sample(torch.Generator().manual_seed(0)), post)
    s = acc.result()
    per_channel = torch.tensor([0.5, 0.5 * (4 - 1 - math.log(4.0))], dtype=torch.float64) * h * w
    torch.testing.assert_close(s.channel_kl, per_channel)
    torch.testing.assert_close(s.posterior_std, torch.tensor([1.0, 2.0], dtype=torch.float64))
    # per-image KL summed over channels equals the posterior's own kl()
    assert s.to_json()["kl_per_image"] == pytest.approx(float(post.kl()[0]))
    assert s.to_json()["source"] == "sample"


def test_json_is_serialisable_and_complete() -> None:
    acc = LatentStatsAccumulator()
    acc.update(_latents())
    report = json.loads(json.dumps(acc.result().to_json()))
    for key in ("channel_mean", "channel_std", "global_mean", "global_std", "scale_factor", "shift", "min", "max"):
        assert key in report
    assert len(report["channel_std"]) == 4
    assert report["min"] == pytest.approx(float(_latents().min()))


def test_errors() -> None:
    with pytest.raises(ValueError, match="latent source"):
        LatentStatsAccumulator("median")
    acc = LatentStatsAccumulator()
    with pytest.raises(ValueError, match="at least two"):
        acc.result()
    with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
        acc.update(torch.zeros(2, 3))
    acc.update(torch.zeros(2, 4, 2, 2))
    with pytest.raises(ValueError, match="shape changed"):
        acc.update(torch.zeros(2, 4, 3, 3))
    post = DiagonalGaussian(torch.zeros(2, 8, 2, 2))
    with pytest.raises(ValueError, match="posterior given"):
        acc.update(torch.zeros(2, 4, 2, 2), post)
