"""``kl3d``: MONAI's 3-D ``AutoencoderKL`` (the first stage of a 3-D latent diffusion model) behind our interface.

The network is ``monai.networks.nets.AutoencoderKL(spatial_dims=3, ...)``: its five parts (``encoder``,
``quant_conv_mu``, ``quant_conv_log_sigma``, ``post_quant_conv``, ``decoder``) become this model's children under
the same names, so the state-dict keys are MONAI's and a MONAI checkpoint loads as it is. ``encode`` and
``decode`` are MONAI's few lines of glue between them (activation checkpointing, the log-variance clamp), checked
against MONAI's own methods bit for bit (``tests/test_kl3d.py``). MONAI is imported when a model is built, not
when this module is imported, so ``aetune`` imports (and lists ``kl3d``) without MONAI installed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from aetune.models.base import Autoencoder, FamilyConfig, ModelConfigError, run_block
from aetune.models.outputs import DecoderOutput, DiagonalGaussian, EncoderOutput
from aetune.models.registry import register_family
from aetune.optional import require


@dataclass
class KL3DConfig(FamilyConfig):
    """Options of the 3-D KL autoencoder; defaults are MONAI's 3-D LDM notebook's first stage (96 x 96 x 64 MRI).

    MONAI's 3-D AutoencoderKL notebook has the same network except ``norm_num_groups=32``; the 3-D LDM script
    (``train_autoencoder.py``, ``config_train_32g.json``) a larger one (64/128/256, 2 res blocks, 8 latents).
    """

    in_channels: int = 1  # single-channel volumes (CT, MR); the decoder outputs the same count
    channels: tuple[int, ...] = (32, 64, 64)  # width per level (both notebooks); downsampling 2^(len - 1)
    latent_channels: int = 3  # both notebooks; the 3-D LDM script's config uses 8
    num_res_blocks: int = 1  # per level, encoder and decoder (both notebooks)
    attention_levels: tuple[bool, ...] = (False, False, True)  # one per level; at the last (both notebooks)
    norm_num_groups: int = 16  # GroupNorm groups, must divide every width (3-D LDM notebook; AutoencoderKL one: 32)
    norm_eps: float = 1e-6  # MONAI's default
    with_encoder_nonlocal_attn: bool = True  # MONAI's default: res + attention + res block at the bottom
    with_decoder_nonlocal_attn: bool = True
    # PyTorch SDPA instead of an explicit (N, N) attention matrix: 256 x 256 x 64 at f4 is 65,536 tokens,
    # a 16 GiB fp32 matrix per attention block without it (MONAI's default is False).
    use_flash_attention: bool = True
    use_checkpoint: bool = False  # MONAI's activation checkpointing of encoder and decoder (seed: -30-40 % memory)

    def validate(self) -> None:
        if not self.channels or any(c <= 0 for c in self.channels):
            raise ModelConfigError(f"channels must be a non-empty list of positive widths, got {list(self.channels)}")
        if len(self.attention_levels) != len(self.channels):
            raise ModelConfigError(
                f"attention_levels has {len(self.attention_levels)} entries and channels {len(self.channels)} "
                f"({list(self.channels)}): give one true/false per level"
            )
        if self.norm_num_groups <= 0:
            raise ModelConfigError(f"norm_num_groups must be positive, got {self.norm_num_groups}")
        bad = [c for c in self.channels if c % self.norm_num_groups]
        if bad:
            raise ModelConfigError(
                f"norm_num_groups={self.norm_num_groups} must divide every entry of channels {list(self.channels)}, "
                f"but not {', '.join(map(str, bad))}: pick a common divisor (e.g. 8) or other widths"
            )
        for name in ("in_channels", "latent_channels", "num_res_blocks"):
            if getattr(self, name) <= 0:
                raise ModelConfigError(f"autoencoder option '{name}' must be positive, got {getattr(self, name)}")


@register_family(
    "kl3d",
    KL3DConfig,
    "MONAI 3-D AutoencoderKL for voxel volumes (B, C, D, H, W), f4 latents by default",
    tiny={"channels": [8, 16], "latent_channels": 2, "attention_levels": [False, False], "norm_num_groups": 4},
)
class KL3DAutoencoder(Autoencoder):
    """Volumes (B, C, D, H, W) in [-1, 1] -> diagonal Gaussian over (B, latent_channels, D/f, H/f, W/f) -> volumes."""

    spatial_dims = 3
    encoder_modules = ("encoder", "quant_conv_mu", "quant_conv_log_sigma")
    """What maps volumes to the posterior (``aetune.evaluate.export``: the encoder export)."""

    def __init__(self, config: KL3DConfig) -> None:
        super().__init__(config)
        c = config
        nets = require("monai.networks.nets", "--family kl3d")
        require("einops", "--family kl3d: MONAI's attention blocks")  # MONAI imports it lazily, with a long message
        net = nets.AutoencoderKL(
            spatial_dims=3,
            in_channels=c.in_channels,
            out_channels=c.in_channels,
            num_res_blocks=c.num_res_blocks,
            channels=c.channels,
            attention_levels=c.attention_levels,
            latent_channels=c.latent_channels,
            norm_num_groups=c.norm_num_groups,
            norm_eps=c.norm_eps,
            with_encoder_nonlocal_attn=c.with_encoder_nonlocal_attn,
            with_decoder_nonlocal_attn=c.with_decoder_nonlocal_attn,
            use_flash_attention=c.use_flash_attention,
        )
        for name in (*self.encoder_modules, "post_quant_conv", "decoder"):
            setattr(self, name, getattr(net, name))  # MONAI's modules, MONAI's key names
        self.use_checkpoint = c.use_checkpoint
        self.in_channels = c.in_channels
        self.latent_channels = c.latent_channels
        self.downsample_factor = 2 ** (len(c.channels) - 1)

    def encode(self, x: Tensor) -> EncoderOutput:
        """Volumes (B, C, D, H, W) in [-1, 1] -> posterior over (B, latent_channels, D/f, H/f, W/f) latents.

        Raises:
            ValueError: wrong shape, or D, H, W not multiples of ``downsample_factor``.
        """
        self.check_images(x)
        h = self._run(self.encoder, x)  # (B, L, d, h, w)
        # MONAI's encode: z_mu and z_log_var from two 1x1x1 convolutions, the log-variance clamped to [-30, 20]
        # (DiagonalGaussian applies that same clamp), sigma = exp(logvar / 2).
        posterior = DiagonalGaussian(torch.cat([self.quant_conv_mu(h), self.quant_conv_log_sigma(h)], dim=1))
        return EncoderOutput(latent_dist=posterior, latents=posterior.mode())

    def decode(self, z: Tensor) -> DecoderOutput:
        """Latents (B, latent_channels, d, h, w) -> volumes (B, C, d*f, h*f, w*f), nominally [-1, 1]."""
        if z.ndim != 5 or z.shape[1] != self.latent_channels:
            raise ValueError(
                f"{self.family} decodes latents (B, {self.latent_channels}, d, h, w), got {tuple(z.shape)}"
            )
        return DecoderOutput(sample=self._run(self.decoder, self.post_quant_conv(z)))

    def _run(self, module: nn.Module, h: Tensor) -> Tensor:
        """``module(h)``, recomputed in backward when checkpointing (MONAI's ``use_checkpoint``)."""
        return run_block(module, h, self.use_checkpoint)

    @property
    def gan_last_layer(self) -> nn.Parameter:
        return self.decoder.blocks[-1].conv.weight  # MONAI Convolution(conv_only=True) wraps an nn.Conv3d

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.use_checkpoint = enabled
