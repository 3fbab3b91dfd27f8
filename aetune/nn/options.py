"""Config sections of the blocks families share (torch-free: steps 1 and 2 read presets before torch works)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aetune.config import bounds


@dataclass
class DiscriminatorConfig:
    """PatchGAN discriminator (taming NLayerDiscriminator), loadable from ``loss.discriminator.*``."""

    ndf: int = field(default=64, metadata=bounds(1, 1024))  # released VA-VAE value
    n_layers: int = field(default=3, metadata=bounds(1, 8))  # released VA-VAE value: 30x30 patches at 256 px
