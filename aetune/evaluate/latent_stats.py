"""Latent statistics a diffusion model needs: per-channel mean/std, the scale factor, dead channels.

Statistics are accumulated batch by batch (Chan et al.'s parallel mean/variance update, in float64),
so a whole split never has to sit in memory. The standard deviation is the unbiased one, as
``torch.std`` computes it, because LightningDiT's ``latents_stats.pt`` is ``latents.std(dim=[0, 2, 3])``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from aetune.models.outputs import DiagonalGaussian

NEAR_DEAD_STD = 1e-3
"""A channel whose latent std over the split is below this carries (almost) no information."""

LATENT_SOURCES = ("mode", "sample")
"""Which latents the statistics describe: the posterior mean, or one posterior sample per image."""


@dataclass(frozen=True)
class LatentStatistics:
    """Statistics of a split's latents, every channel over all images and positions.

    Attributes:
        num_images: images seen.
        latent_shape: (C, h, w) of one latent.
        source: ``"mode"`` or ``"sample"`` (see ``LATENT_SOURCES``).
        channel_mean, channel_std, channel_min, channel_max: (C,) float64.
        channel_kl: (C,) KL(q || N(0, I)) per image, summed over positions, in nats; None without a
            posterior (deterministic families).
        posterior_std: (C,) mean posterior standard deviation; None without a posterior.
        global_mean, global_std: over every element of every channel (unbiased std).
    """

    num_images: int
    latent_shape: tuple[int, ...]
    source: str
    channel_mean: Tensor
    channel_std: Tensor
    channel_min: Tensor
    channel_max: Tensor
    channel_kl: Tensor | None
    posterior_std: Tensor | None
    global_mean: float
    global_std: float

    @property
    def scale_factor(self) -> float:
        """``1 / global_std``: multiply ``latents - shift`` by it for unit variance (LDM's scale_factor)."""
        return 1.0 / self.global_std

    @property
    def shift(self) -> float:
        """The global mean, subtracted before scaling."""
        return self.global_mean

    @property
    def near_dead_channels(self) -> list[int]:
        """Indices of channels with std below ``NEAR_DEAD_STD``."""
        return [int(i) for i in torch.nonzero(self.channel_std < NEAR_DEAD_STD).flatten()]

    def lightningdit_stats(self) -> dict[str, Tensor]:
        """LightningDiT's ``latents_stats.pt``: {"mean", "std"}, each float32 (1, C, 1, 1)."""
        return {
            "mean": self.channel_mean.float().reshape(1, -1, 1, 1),
            "std": self.channel_std.float().reshape(1, -1, 1, 1),
        }

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary (the content of ``latent_statistics.json``)."""

        def values(t: Tensor | None) -> list[float] | None:
            return None if t is None else [float(v) for v in t]

        dead = self.near_dead_channels
        return {
            "num_images": self.num_images,
            "latent_shape": list(self.latent_shape),
            "source": self.source,
            "source_meaning": "posterior mean (mode)" if self.source == "mode" else "one posterior sample",
            "global_mean": self.global_mean,
            "global_std": self.global_std,
            "scale_factor": self.scale_factor,
            "shift": self.shift,
            "normalisation": "z_dit = (z - shift) * scale_factor, or per channel (z - mean[c]) / std[c]",
            "min": float(self.channel_min.min()),
            "max": float(self.channel_max.max()),
            "near_dead_threshold": NEAR_DEAD_STD,
            "near_dead_channels": len(dead),
            "near_dead_channel_indices": dead,
            "kl_per_image": None if self.channel_kl is None else float(self.channel_kl.sum()),
            "channel_mean": values(self.channel_mean),
            "channel_std": values(self.channel_std),
            "channel_min": values(self.channel_min),
            "channel_max": values(self.channel_max),
            "channel_kl": values(self.channel_kl),
            "channel_posterior_std": values(self.posterior_std),
        }


class LatentStatsAccumulator:
    """Streaming per-channel statistics of (B, C, h, w) latents (on any device; results on the CPU).

    Args:
        source: ``"mode"`` or ``"sample"``, recorded in the result.
    """

    def __init__(self, source: str = "mode") -> None:
        if source not in LATENT_SOURCES:
            raise ValueError(f"latent source must be one of {LATENT_SOURCES}, got {source!r}")
        self.source = source
        self.num_images = 0
        self._count = 0  # elements per channel seen so far
        self._shape: tuple[int, ...] | None = None
        self._mean: Tensor | None = None
        self._m2: Tensor | None = None  # sum of squared deviations from the running mean, per channel
        self._min: Tensor | None = None
        self._max: Tensor | None = None
        self._kl: Tensor | None = None  # summed over images
        self._post_std: Tensor | None = None  # summed over images and positions
        self._has_posterior: bool | None = None

    def update(self, latents: Tensor, posterior: DiagonalGaussian | None = None) -> None:
        """Add a batch.

        Args:
            latents: (B, C, h, w) the latents described (mode or sample, as ``source`` says).
            posterior: the batch's posterior, for the per-channel KL and posterior std; None for
                deterministic families. Must be given for every batch or for none.
        """
        if latents.ndim not in (4, 5):
            raise ValueError(f"latents must be (B, C, h, w) or (B, C, d, h, w) (volumes), got {tuple(latents.shape)}")
        shape = tuple(latents.shape[1:])
        if self._shape is not None and shape != self._shape:
            raise ValueError(f"latent shape changed from {self._shape} to {shape} between batches")
        if self._has_posterior is not None and self._has_posterior != (posterior is not None):
            raise ValueError("posterior given for some batches and not for others")
        # Kept on the CPU in float64: latents are small, and the results must load on machines without a GPU.
        z = latents.detach().to("cpu", torch.float64).transpose(0, 1).flatten(1)  # (B, C, h, w) -> (C, B*h*w)
        n_b = z.shape[1]
        mean_b = z.mean(dim=1)
        m2_b = ((z - mean_b[:, None]) ** 2).sum(dim=1)
        if self._mean is None:
            self._shape, self._has_posterior = shape, posterior is not None  # type: ignore[assignment]
            self._mean, self._m2 = mean_b, m2_b
            self._min, self._max = z.min(dim=1).values, z.max(dim=1).values
        else:
            # Chan et al. (1979): merge two (count, mean, M2) summaries exactly.
            n = self._count + n_b
            delta = mean_b - self._mean
            self._mean = self._mean + delta * n_b / n
            self._m2 = self._m2 + m2_b + delta**2 * self._count * n_b / n
            self._min = torch.minimum(self._min, z.min(dim=1).values)
            self._max = torch.maximum(self._max, z.max(dim=1).values)
        self._count += n_b
        self.num_images += latents.shape[0]
        if posterior is not None:
            mu, var, logvar, std = (
                t.detach().to("cpu", torch.float64)
                for t in (posterior.mean, posterior.var, posterior.logvar, posterior.std)
            )
            dims = (0, *range(2, mu.ndim))  # every dim but the channels
            kl = 0.5 * (mu**2 + var - 1.0 - logvar).sum(dim=dims)  # (B, C, h, w) -> (C,)
            std = std.sum(dim=dims)  # (B, C, h, w) -> (C,)
            self._kl = kl if self._kl is None else self._kl + kl
            self._post_std = std if self._post_std is None else self._post_std + std

    def result(self) -> LatentStatistics:
        """The statistics of everything added so far.

        Raises:
            ValueError: fewer than two latent elements per channel were added.
        """
        if self._mean is None or self._count < 2:
            raise ValueError("latent statistics need at least two latent values per channel")
        assert self._shape is not None and self._m2 is not None and self._min is not None
        assert self._max is not None
        channels = self._shape[0]
        var = self._m2 / (self._count - 1)
        total = self._count * channels
        global_mean = float(self._mean.mean())
        # All channels hold the same number of elements, so the pooled M2 is the sum of the channels'
        # M2 plus the spread of the channel means around the global mean.
        global_m2 = float(self._m2.sum() + self._count * ((self._mean - global_mean) ** 2).sum())
        positions = math.prod(self._shape[1:])
        return LatentStatistics(
            num_images=self.num_images,
            latent_shape=self._shape,
            source=self.source,
            channel_mean=self._mean.clone(),
            channel_std=var.sqrt(),
            channel_min=self._min.clone(),
            channel_max=self._max.clone(),
            channel_kl=None if self._kl is None else self._kl / self.num_images,
            posterior_std=None if self._post_std is None else self._post_std / (self.num_images * positions),
            global_mean=global_mean,
            global_std=(global_m2 / (total - 1)) ** 0.5,
        )
