"""``vavae``: the KL autoencoder aligned to a frozen vision foundation model (VA-VAE, Yao et al. 2025).

The network is ``kl`` plus ``linear_proj``, a bias-free 1x1 conv from the latent (32 channels) to the
teacher's width (1024 for DINOv2 ViT-L): the VF loss compares ``linear_proj(z)`` with the teacher's patch
features, and the decoder still gets the unprojected ``z`` (LightningDiT's ``reverse_proj=True``). The
teacher itself is not part of this module: it is a frozen sibling built by ``FrozenTeacher``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from aetune.families.vavae.kl import KLAutoencoder, KLConfig
from aetune.models.base import ModelConfigError
from aetune.models.registry import get_family, register_family


@dataclass
class VAVAEConfig(KLConfig):
    """``kl`` options plus the width of the teacher the latents are aligned to."""

    align_dim: int = 1024  # teacher feature width: DINOv2 ViT-L/14 (the released model's teacher)

    def validate(self) -> None:
        super().validate()
        if self.align_dim <= 0:
            raise ModelConfigError(f"align_dim must be positive, got {self.align_dim}")


@register_family(
    "vavae",
    VAVAEConfig,
    "VA-VAE: KL-VAE aligned to a frozen ViT (LightningDiT hustvl/vavae-imagenet256-f16d32-dinov2)",
    tiny={**get_family("kl").tiny, "align_dim": 384},
)
class VAVAE(KLAutoencoder):
    """KL autoencoder with ``linear_proj`` (embed_dim -> align_dim, 1x1, no bias) for the VF loss."""

    aligns = True

    def __init__(self, config: VAVAEConfig) -> None:
        super().__init__(config)
        self.linear_proj = nn.Conv2d(config.embed_dim, config.align_dim, kernel_size=1, bias=False)
        self.align_dim = config.align_dim

    def project(self, z: Tensor) -> Tensor:
        """Latents (B, embed_dim, h, w) -> (B, align_dim, h, w), compared with the teacher's features."""
        return self.linear_proj(z)
