"""GAN terms of the PatchGAN discriminator (hinge loss, as LightningDiT / taming)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

GAN_MAX_WEIGHT = 1e4
"""Clamp of the adaptive GAN weight (taming / LightningDiT)."""


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Discriminator hinge loss ``0.5 (mean relu(1 - D(x)) + mean relu(1 + D(x_rec)))``, float32."""
    real = torch.mean(F.relu(1.0 - logits_real.float()))
    fake = torch.mean(F.relu(1.0 + logits_fake.float()))
    return 0.5 * (real + fake)


def generator_loss(logits_fake: Tensor) -> Tensor:
    """Generator term ``-mean D(x_rec)``, float32."""
    return -torch.mean(logits_fake.float())
