"""``taesd``: the tiny autoencoder of madebyollin/taesd (~1.2 M parameters per half), f8 or f16.

The layout is TAESD's exactly: ``Block`` = ReLU(conv3 -> ReLU -> conv3 -> ReLU -> conv3 + skip), stride-2
convs down, nearest upsampling up, and a tanh clamp of the latents before decoding. Its latents are
meant to equal a big autoencoder's latents, so the latent channels and the downsampling factor are
options that follow the teacher: f8 with 4 channels (SD, SDXL) or 16 (FLUX.1, SD3), f8 with 32 channels and
``midblock_gn`` for FLUX.2 (the released ``taef2``), and f16 with 32 channels to match our own VA-VAE
(f16d32). At f8 the module indices, hence the state-dict keys, are those of the released
``taesd_encoder.pth`` / ``taesd_decoder.pth`` under ``encoder.`` / ``decoder.`` (``aetune.families.tiny.loading``
maps every released layout onto them).

TAESD works on images in [0, 1]; this project's images are in [-1, 1]. The conversion happens once, in
``encode`` and ``decode`` (as diffusers' ``AutoencoderTiny`` does), so callers never see [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from aetune.families.tiny.init import init_from_scratch
from aetune.models.base import Autoencoder, FamilyConfig, ModelConfigError, run_block
from aetune.models.outputs import DecoderOutput, EncoderOutput
from aetune.models.registry import register_family

LATENT_CLAMP = 3.0
"""Decoder input clamp: ``tanh(z / 3) * 3`` keeps the latents in (-3, 3) (TAESD's ``Clamp``)."""
OUTPUT_BIAS_INIT = 0.5
"""Start value of the decoder's last bias: mid-grey in [0, 1] (Seraena's initialisation), so a decoder
trained from scratch does not spend its first steps learning the mean colour (``init_from_scratch``)."""


def to_unit(x: Tensor) -> Tensor:
    """Images in [-1, 1] -> [0, 1] (TAESD's input convention)."""
    return x.add(1).div(2)


def from_unit(x: Tensor) -> Tensor:
    """Images in [0, 1] -> [-1, 1] (this project's convention)."""
    return x.mul(2).sub(1)


def conv(n_in: int, n_out: int, **kwargs: object) -> nn.Conv2d:
    """3x3 convolution with padding 1 (resolution kept unless ``stride=2``)."""
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)  # type: ignore[arg-type]


class Clamp(nn.Module):
    """Soft clamp of the latents to (-3, 3) before decoding."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / LATENT_CLAMP) * LATENT_CLAMP


GN_GROUPS = 4
"""GroupNorm groups of the ``midblock_gn`` branch (taef2)."""


class Block(nn.Module):
    """Residual block: (B, n_in, H, W) -> (B, n_out, H, W); the skip is a bias-free 1x1 conv when widths differ.

    With ``midblock_gn`` (FLUX.2's ``taef2``) a residual branch ``pool`` (1x1 conv to 4 x n_in -> GroupNorm(4)
    -> ReLU -> 1x1 conv back, no biases) first adds per-group normalised statistics, which the reference needed
    to distil FLUX.2's latents accurately.
    """

    def __init__(self, n_in: int, n_out: int, midblock_gn: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential(conv(n_in, n_out), nn.ReLU(), conv(n_out, n_out), nn.ReLU(), conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()
        wide = 4 * n_in
        self.pool = (
            nn.Sequential(
                nn.Conv2d(n_in, wide, 1, bias=False),
                nn.GroupNorm(GN_GROUPS, wide),
                nn.ReLU(),
                nn.Conv2d(wide, n_in, 1, bias=False),
            )  # fmt: skip
            if midblock_gn
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def down_stage(w: int, midblock_gn: bool = False) -> list[nn.Module]:
    """One encoder resolution stage: stride-2 conv (no bias), 3 Blocks; (B, w, H, W) -> (B, w, H/2, W/2)."""
    return [conv(w, w, stride=2, bias=False), *(Block(w, w, midblock_gn) for _ in range(3))]


def up_stage(w: int, midblock_gn: bool = False) -> list[nn.Module]:
    """One decoder resolution stage: 3 Blocks, nearest x2, conv (no bias); (B, w, h, w) -> (B, w, 2h, 2w)."""
    return [*(Block(w, w, midblock_gn) for _ in range(3)), nn.Upsample(scale_factor=2), conv(w, w, bias=False)]


def tiny_encoder(latent_channels: int, stages: int, width: int, midblock_gn: bool = False) -> nn.Sequential:
    """TAESD encoder: (B, 3, H, W) in [0, 1] -> (B, latent_channels, H / 2**stages, W / 2**stages).

    ``midblock_gn`` adds the GroupNorm branch to the Blocks of the lowest resolution (taef2: blocks 11-13 at f8).
    """
    return nn.Sequential(
        conv(3, width), Block(width, width),  # full resolution
        *[m for s in range(stages) for m in down_stage(width, midblock_gn and s == stages - 1)],  # one row per halving
        conv(width, latent_channels),
    )  # fmt: skip


def tiny_decoder(latent_channels: int, stages: int, width: int, midblock_gn: bool = False) -> nn.Sequential:
    """TAESD decoder: (B, latent_channels, h, w) -> (B, 3, h * 2**stages, w * 2**stages), nominally [0, 1].

    ``midblock_gn`` adds the GroupNorm branch to the Blocks of the lowest resolution (taef2: blocks 3-5).
    """
    return nn.Sequential(
        Clamp(), conv(latent_channels, width), nn.ReLU(),
        *[m for s in range(stages) for m in up_stage(width, midblock_gn and s == 0)],  # one row per doubling
        Block(width, width), conv(width, 3),  # full resolution
    )  # fmt: skip


@dataclass
class TAESDConfig(FamilyConfig):
    """Options of ``taesd``; the defaults are the released ``taesd`` (SD 1.x / 2.x latents)."""

    latent_channels: int = 4  # the teacher's: 4 SD/SDXL, 16 FLUX.1/SD3, 32 our VA-VAE f16d32 and FLUX.2
    downsample_factor: int = 8  # the teacher's, a power of two >= 2: 8 released TAESDs, 16 our VA-VAE
    width: int = 64  # channels of every stage (released: 64; tests use 8)
    midblock_gn: bool = False  # GroupNorm branch in the lowest-resolution Blocks: True for FLUX.2's taef2

    def validate(self) -> None:
        f = self.downsample_factor
        if f < 2 or f & (f - 1):
            raise ModelConfigError(f"downsample_factor must be a power of two >= 2 (8 or 16), got {f}")
        if self.midblock_gn and (4 * self.width) % GN_GROUPS:
            raise ModelConfigError(f"midblock_gn needs 4 x width divisible by {GN_GROUPS}, got width {self.width}")
        if self.latent_channels <= 0 or self.width <= 0:
            raise ModelConfigError(
                f"latent_channels and width must be positive, got {self.latent_channels} and {self.width}"
            )


@register_family(
    "taesd",
    TAESDConfig,
    "TAESD: tiny distilled image autoencoder (madebyollin/taesd layout), f8 or f16",
    tiny={"width": 8, "latent_channels": 4, "downsample_factor": 8},
)
class TAESD(Autoencoder):
    """``encoder`` and ``decoder`` are plain ``nn.Sequential``s: their indices are the released keys."""

    encoder_modules = ("encoder",)
    """What maps images to latents (``aetune.evaluate.export``: the DiT encoder export): the encoder alone."""

    def __init__(self, config: TAESDConfig) -> None:
        super().__init__(config)
        stages = config.downsample_factor.bit_length() - 1  # log2 of a power of two
        self.encoder = tiny_encoder(config.latent_channels, stages, config.width, config.midblock_gn)
        self.decoder = tiny_decoder(config.latent_channels, stages, config.width, config.midblock_gn)
        blocks = [m for m in self.modules() if isinstance(m, Block)]
        ends = [b.conv[-1] for b in blocks] + [b.pool[-1] for b in blocks if b.pool is not None]
        init_from_scratch(self, ends, self.decoder[-1], OUTPUT_BIAS_INIT)
        self.in_channels = 3
        self.latent_channels = config.latent_channels
        self.downsample_factor = config.downsample_factor
        self.gradient_checkpointing = False

    def encode(self, x: Tensor) -> EncoderOutput:
        """Images (B, 3, H, W) in [-1, 1] -> latents (B, latent_channels, H/f, W/f) (no posterior).

        Raises:
            ValueError: wrong shape, or H, W not multiples of ``downsample_factor``.
        """
        self.check_images(x)
        return EncoderOutput(latent_dist=None, latents=self._run(self.encoder, to_unit(x)))

    def decode(self, z: Tensor) -> DecoderOutput:
        """Latents (B, latent_channels, h, w) -> images (B, 3, h*f, w*f), nominally [-1, 1] (not clamped)."""
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(f"{self.family} decodes latents (B, {self.latent_channels}, h, w), got {tuple(z.shape)}")
        return DecoderOutput(sample=from_unit(self._run(self.decoder, z)))

    def _run(self, layers: nn.Sequential, h: Tensor) -> Tensor:
        for layer in layers:
            h = run_block(layer, h, self.gradient_checkpointing and isinstance(layer, Block))
        return h

    @property
    def gan_last_layer(self) -> nn.Parameter:
        return self.decoder[-1].weight

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute each ``Block`` in backward (same outputs, less activation memory)."""
        self.gradient_checkpointing = enabled
