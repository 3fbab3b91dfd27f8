"""What ``encode`` and ``decode`` return: small named dataclasses, never tuples of varying length."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0
"""Clamp of the posterior log-variance (LDM ``DiagonalGaussianDistribution``): keeps ``exp`` finite."""


class DiagonalGaussian:
    """Diagonal Gaussian posterior q(z|x) of a KL autoencoder.

    Args:
        moments: (B, 2C, *spatial) encoder output; the first C channels are the mean, the last C the
            log-variance (clamped to [-30, 20], as LDM does). Any number of spatial dims (2-D images,
            3-D volumes).
    """

    def __init__(self, moments: Tensor) -> None:
        if moments.ndim < 3 or moments.shape[1] % 2:
            raise ValueError(f"moments must be (B, 2C, ...) with an even channel count, got {tuple(moments.shape)}")
        self.mean, logvar = torch.chunk(moments, 2, dim=1)  # (B, 2C, ...) -> 2 x (B, C, ...)
        self.logvar = torch.clamp(logvar, LOGVAR_MIN, LOGVAR_MAX)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterised sample ``mean + std * eps``, eps ~ N(0, I): (B, C, ...), differentiable."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> Tensor:
        """The posterior mode (= mean): (B, C, ...)."""
        return self.mean

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) per item, summed over channels and spatial dims: (B,) in float32."""
        mean, var, logvar = self.mean.float(), self.var.float(), self.logvar.float()
        return 0.5 * torch.sum(mean.pow(2) + var - 1.0 - logvar, dim=tuple(range(1, mean.ndim)))


@dataclass
class EncoderOutput:
    """Result of ``Autoencoder.encode``.

    Attributes:
        latent_dist: the posterior for families that have one (KL, VA-VAE), else None (RAE, tiny).
        latents: (B, C, h, w) deterministic latents: the posterior mode, or the plain encoder output.
    """

    latent_dist: DiagonalGaussian | None
    latents: Tensor


@dataclass
class DecoderOutput:
    """Result of ``Autoencoder.decode``.

    Attributes:
        sample: (B, 3, H, W) reconstruction, nominally in [-1, 1] (not clamped: losses see the raw output).
    """

    sample: Tensor
