"""The trained heads and the loss of the fork's CLIP ConvNeXt discriminator (``HYPIR/model/D.py``).

The frozen trunk (``aetune.tasks.restoration.clip_features``) gives one feature map per ConvNeXt stage but the
last, and the pooled, projected CLIP embedding; ``MultiLevelDConv`` turns each into logits and
``multilevel_loss`` scores them against a target (vision-aided-loss's ``multilevel_loss(alpha=0.8)``). Only the
heads train. State-dict keys are the fork's (``decoder.decoder.0.1.weight_orig``, ...), with
``torch.nn.utils.spectral_norm``'s parametrisation, so the fork's trained heads load strictly.

BlurPool and the loss are written here rather than imported from ``vision-aided-loss``: that package pins
``gdown==4.4.0`` and ``antialiased-cnns`` and has not been maintained since 2022, for two dozen lines.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import spectral_norm

REAL_TARGET = 0.8
"""The target of real images and of the generator's fakes (vision-aided ``multilevel_loss(alpha=0.8)``: one-sided
label smoothing); fakes in the discriminator phase have target 0."""
BINOMIAL_4 = (1.0, 3.0, 3.0, 1.0)
"""BlurPool's filter taps (``filt_size=4``), outer product and normalised to sum 1."""


class BlurPool(nn.Module):
    """Antialiasing blur (Zhang 2019), as vision-aided-loss's ``BlurPool(pad_type="zero", filt_size=4)``.

    Zero-pads each side by ``1 + pad_off`` and convolves each channel with the normalised 4 x 4 binomial filter:
    (B, C, H, W) -> (B, C, (H + 2 pad_off - 2) // stride + 1, same for W); values are weighted means of the input.
    The ``filt`` buffer (C, 1, 4, 4) is in the state dict, as the fork's.
    """

    def __init__(self, channels: int, stride: int = 1, pad_off: int = 0) -> None:
        super().__init__()
        self.stride, self.pad = stride, 1 + pad_off  # (filt_size - 1) // 2 + pad_off on every side
        a = torch.tensor(BINOMIAL_4)
        filt = a[:, None] * a[None, :]
        self.register_buffer("filt", (filt / filt.sum())[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, [self.pad] * 4), self.filt.to(x.dtype), stride=self.stride, groups=x.shape[1])


def _conv_level(channels: int, width: int) -> nn.Sequential:
    """One feature map's head (the fork's ``down=2``): (B, C, h, w) -> logits (B, 1, h / 4, w / 4) for h, w
    divisible by 4 (ConvNeXt stages of a 512 px image: 128, 64, 32 -> 32, 16, 8)."""
    return nn.Sequential(
        BlurPool(channels, stride=1, pad_off=1),  # (h, w) -> (h + 1, w + 1)
        spectral_norm(nn.Conv2d(channels, width, kernel_size=3, stride=2, padding=0)),  # -> (h / 2, w / 2)
        nn.LeakyReLU(0.2),
        BlurPool(width, stride=1),  # -> (h / 2 - 1, w / 2 - 1)
        spectral_norm(nn.Conv2d(width, 1, kernel_size=1, stride=2)),  # -> (h / 4, w / 4): one logit per window
    )


class MultiLevelDConv(nn.Module):
    """The fork's ``MultiLevelDConv(level=4, in_ch1=[384, 768, 1536], in_ch2=1024, out_ch=512, down=2)``.

    Args:
        map_channels: channels of each feature map (ConvNeXt stages but the last; XXLarge: 384, 768, 1536).
        embed_dim: the pooled embedding's width (CLIP's ``embed_dim``; XXLarge: 1024).
        width: hidden channels of every head (the fork's ``out_ch``: 512).
    """

    def __init__(self, map_channels: list[int], embed_dim: int, width: int = 512) -> None:
        super().__init__()
        self.decoder = nn.ModuleList(_conv_level(c, width) for c in map_channels)
        self.decoder.append(nn.Sequential(spectral_norm(nn.Linear(embed_dim, width)), nn.LeakyReLU(0.2)))
        self.out = spectral_norm(nn.Linear(width, 1))

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """Feature maps (B, C_i, h_i, w_i) and the embedding (B, D), float32 -> logits: (B, h_i', w_i') per map,
        then (B, 1) for the embedding (real high, fake low)."""
        *maps, pooled = features
        assert len(maps) == len(self.decoder) - 1, f"{len(maps)} feature maps for {len(self.decoder) - 1} heads"
        logits = [
            head(f).squeeze(1) for head, f in zip(self.decoder[:-1], maps, strict=True)
        ]  # (B, 1, h, w) -> (B, h, w)
        return [*logits, self.out(self.decoder[-1](pooled))]


class ClipConvNextHeads(nn.Module):
    """What trains of the fork's ``ImageConvNextDiscriminator``: its ``decoder`` (the frozen ``model`` is not here).

    The fork's discriminator state dict less ``model.*`` and the ``image_mean`` / ``image_std`` buffers loads
    strictly into this module.
    """

    def __init__(self, map_channels: list[int], embed_dim: int, width: int = 512) -> None:
        super().__init__()
        self.decoder = MultiLevelDConv(map_channels, embed_dim, width)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """Trunk features (``ClipConvNextFeatures``) -> logits per level (``MultiLevelDConv.forward``), float32.

        Autocast is off: the heads and their spectral norms run in float32 whatever the training precision.
        """
        with torch.autocast(device_type=features[0].device.type, enabled=False):
            return self.decoder([f.float() for f in features])


def multilevel_loss(logits: list[Tensor], target: float) -> Tensor:
    """Binary cross-entropy of every level's logits against ``target``, summed over levels: (B, 1).

    A map's per-position losses are averaged over its positions first (vision-aided ``multilevel_loss``), so
    each level weighs the same whatever its size.

    Args:
        logits: per level (B, h, w) or (B, 1) (``MultiLevelDConv.forward``).
        target: ``REAL_TARGET`` for real images and the generator's fakes, 0 for fakes in the D phase.
    """
    total = torch.zeros(logits[0].shape[0], 1, device=logits[0].device)
    for level in logits:
        loss = F.binary_cross_entropy_with_logits(
            level.float(), torch.full_like(level.float(), target), reduction="none"
        )
        total = total + (loss.mean(dim=(1, 2)).reshape(-1, 1) if loss.ndim > 2 else loss)
    return total


def mean_logit(logits: list[Tensor]) -> Tensor:
    """The fork's logged ``D_logits_real`` / ``D_logits_fake``: the mean over levels of each level's mean (detached)."""
    return torch.stack([level.detach().float().mean() for level in logits]).mean()


def clip_generator_loss(logits_fake: list[Tensor]) -> Tensor:
    """The generator's GAN term (0-dim): fakes against the real target (the fork's ``D(x, for_G=True).mean()``)."""
    return multilevel_loss(logits_fake, REAL_TARGET).mean()


def clip_discriminator_objective(logits_real: list[Tensor], logits_fake: list[Tensor]) -> dict[str, Tensor]:
    """The discriminator loss of the fork: ``real.mean() + fake.mean()`` with targets 0.8 and 0.

    Returns:
        ``total`` (0-dim, with graph), ``logits_real`` and ``logits_fake`` (``mean_logit``), as the PatchGAN's
        ``discriminator_objective`` names them.
    """
    total = multilevel_loss(logits_real, REAL_TARGET).mean() + multilevel_loss(logits_fake, 0.0).mean()
    return {"total": total, "logits_real": mean_logit(logits_real), "logits_fake": mean_logit(logits_fake)}
