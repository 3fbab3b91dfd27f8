"""``rae``: Representation Autoencoder (Zheng et al. 2025): a frozen representation encoder + a trained ViT decoder.

The latent is the encoder's patch tokens, (768, 16, 16) for the released encoders: [0, 1] pixels, bicubic
resize to the encoder's size, its normalisation, the transformers ViT with a non-affine final LayerNorm,
prefix tokens dropped (``rae_encoders``). The decoder (``rae_decoder``) maps tokens back to 256 px; its
output, in the encoder's normalised pixel space, is mapped back to [0, 1] and then to our [-1, 1].

Token noise (``z + tau * u * n``) is training-only and on the raw tokens, so ``encode`` never adds it:
the recipe calls ``add_noise`` in the generator phase (and decodes with ``decode_tokens``). Optional latent
normalisation ``(z - mean) / sqrt(var + 1e-5)`` with per-(C, H, W) statistics lives in the buffers
``latent_mean`` / ``latent_var``, so an exported model carries the statistics the DiT was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from aetune.families.rae.decoder import DECODER_SIZES, RAEDecoder
from aetune.families.rae.encoders import ENCODERS, FrozenEncoder
from aetune.families.rae.weights import DEFAULT_ENCODER
from aetune.models.base import Autoencoder, FamilyConfig, ModelConfigError
from aetune.models.outputs import DecoderOutput, EncoderOutput
from aetune.models.registry import register_family

LATENT_NORM_EPS = 1e-5  # the reference's eps in (z - mean) / sqrt(var + eps)


@dataclass
class RAEConfig(FamilyConfig):
    """Options of ``rae``; the defaults are the released DINOv2-B + ViT-XL decoder (256 px, tau 0.8)."""

    encoder: str = DEFAULT_ENCODER  # frozen encoder: dinov2-reg-b | siglip2-b16-256 | mae-b16
    decoder_size: str = "XL"  # B | L | XL: the released decoder sizes (XL is the released RAE)
    patch_size: int = 16  # decoder pixels per token side: 16 x 16 tokens -> 256 px
    noise_tau: float = 0.8  # max std of the training noise on the tokens (the released n08 decoders)
    normalize_latents: bool = False  # apply latent_mean / latent_var (the released training config: off)
    # Smaller random networks for CPU tests and demos (0 = the released value; no released weights fit them)
    encoder_width: int = 0  # token width C (768)
    encoder_depth: int = 0  # encoder blocks (12)
    encoder_heads: int = 0  # encoder attention heads (12)
    encoder_input_size: int = 0  # encoder input side in px (224 DINOv2, 256 SigLIP2 / MAE)
    decoder_width: int = 0  # decoder width (from decoder_size)
    decoder_depth: int = 0  # decoder blocks (from decoder_size)
    decoder_heads: int = 0  # decoder heads (from decoder_size)
    decoder_mlp: int = 0  # decoder MLP hidden size (from decoder_size)

    def validate(self) -> None:
        if self.encoder not in ENCODERS:
            raise ModelConfigError(f"unknown RAE encoder '{self.encoder}'; valid: {', '.join(ENCODERS)}")
        if self.decoder_size not in DECODER_SIZES:
            raise ModelConfigError(f"unknown RAE decoder_size '{self.decoder_size}'; valid: {', '.join(DECODER_SIZES)}")
        if self.patch_size <= 0:
            raise ModelConfigError(f"patch_size must be positive, got {self.patch_size}")
        if self.noise_tau < 0:
            raise ModelConfigError(f"noise_tau must be >= 0, got {self.noise_tau}")
        small = [
            f for f in ("encoder_width", "encoder_depth", "encoder_heads", "encoder_input_size") if getattr(self, f)
        ]
        small += [f for f in ("decoder_width", "decoder_depth", "decoder_heads", "decoder_mlp") if getattr(self, f)]
        if any(getattr(self, f) < 0 for f in small):
            raise ModelConfigError(f"{', '.join(small)} must be >= 0 (0 keeps the released value)")
        patch = ENCODERS[self.encoder].patch
        size = self.encoder_input_size or ENCODERS[self.encoder].input_size
        if size % patch:
            raise ModelConfigError(f"encoder_input_size {size} is not a multiple of the encoder's {patch} px patches")
        width, _, heads, _ = self.decoder_dims
        if width % heads or width % 4:
            raise ModelConfigError(f"decoder width {width} must be a multiple of its {heads} heads and of 4")
        enc_width = self.encoder_width or ENCODERS[self.encoder].width
        if enc_width % (self.encoder_heads or ENCODERS[self.encoder].heads):
            raise ModelConfigError(f"encoder_width {enc_width} is not a multiple of its heads")

    @property
    def decoder_dims(self) -> tuple[int, int, int, int]:
        """(width, depth, heads, MLP) after the overrides."""
        w, d, h, m = DECODER_SIZES[self.decoder_size]
        return self.decoder_width or w, self.decoder_depth or d, self.decoder_heads or h, self.decoder_mlp or m


def apply_token_noise(z: Tensor, tau: float, u: Tensor, n: Tensor) -> Tensor:
    """RAE's noise augmentation ``z + tau * u * n``.

    Args:
        z: raw tokens (B, ...). u: (B,) levels in [0, 1], one per sample. n: standard normal, shape of ``z``.
    """
    return z + tau * u.view(-1, *([1] * (z.ndim - 1))).to(z.dtype) * n


def sample_token_noise(z: Tensor, tau: float, generator: torch.Generator | None = None) -> Tensor:
    """``apply_token_noise`` with u ~ U(0, 1) per sample, then n ~ N(0, I), drawn in that order from ``generator``."""
    u = torch.rand(z.shape[0], generator=generator, device=z.device, dtype=z.dtype)
    n = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    return apply_token_noise(z, tau, u, n)


@register_family(
    "rae",
    RAEConfig,
    "RAE: frozen DINOv2-reg-B / SigLIP2 / MAE encoder + trained ViT decoder (nyu-visionx/RAE-collections)",
    tiny={
        "encoder_width": 64, "encoder_depth": 2, "encoder_heads": 2, "encoder_input_size": 56,
        "decoder_width": 64, "decoder_depth": 2, "decoder_heads": 2, "decoder_mlp": 128, "patch_size": 8,
    },
)  # fmt: skip
class RAE(Autoencoder):
    """``encoder`` (frozen, never trained) -> tokens (B, C, g, g) -> ``decoder`` -> (B, 3, g * p, g * p).

    Attributes:
        image_size: the one square size it reconstructs (g * patch_size: 256 released).
        latent_mean, latent_var: (C, g, g) normalisation statistics (0 and 1 until set).
    """

    encoder_modules = ("encoder", "latent_mean", "latent_var")
    """What a DiT encoder export keeps (``aetune.evaluate.export``): the frozen encoder and the latent normalisation."""

    def __init__(self, config: RAEConfig) -> None:
        super().__init__(config)
        c = config
        self.encoder = FrozenEncoder(c.encoder, c.encoder_width, c.encoder_depth, c.encoder_heads, c.encoder_input_size)
        g, width = self.encoder.grid, self.encoder.width
        self.decoder = RAEDecoder(width, *c.decoder_dims, grid=g, patch=c.patch_size)
        self.register_buffer("latent_mean", torch.zeros(width, g, g))
        self.register_buffer("latent_var", torch.ones(width, g, g))
        self.in_channels, self.latent_channels, self.downsample_factor = 3, width, c.patch_size
        self.image_size = g * c.patch_size
        self.noise_tau = c.noise_tau

    def check_images(self, x: Tensor) -> None:
        """``Autoencoder.check_images``, and the size must be ``image_size`` (the decoder's fixed output)."""
        super().check_images(x)
        if tuple(x.shape[2:]) != (self.image_size, self.image_size):
            s = self.image_size
            raise ValueError(
                f"image size {x.shape[2]}x{x.shape[3]} is not the {s}x{s} that {self.family} reconstructs "
                f"({self.encoder.grid} tokens per side x downsample factor {self.downsample_factor}): resize or "
                f"crop to {s}x{s}"
            )

    @torch.no_grad()
    def encode_tokens(self, x: Tensor) -> Tensor:
        """Images (B, 3, S, S) in [-1, 1] -> raw tokens (B, C, g, g), no normalisation, no noise, no gradient."""
        self.check_images(x)
        tokens = self.encoder((x + 1) / 2)  # the reference's encoders take [0, 1]
        b, n, c = tokens.shape
        g = self.encoder.grid
        return tokens.transpose(1, 2).reshape(b, c, g, g)  # (B, N, C) -> (B, C, g, g), row-major

    def encode(self, x: Tensor) -> EncoderOutput:
        """Images (B, 3, S, S) in [-1, 1] -> latents (B, C, g, g), normalised when ``normalize_latents``."""
        return EncoderOutput(latent_dist=None, latents=self.normalize(self.encode_tokens(x)))

    def normalize(self, z: Tensor) -> Tensor:
        """Raw tokens -> ``(z - mean) / sqrt(var + 1e-5)`` when ``normalize_latents``, else unchanged."""
        if not self._config.normalize_latents:
            return z
        return (z - self.latent_mean.to(z.dtype)) / torch.sqrt(self.latent_var.to(z.dtype) + LATENT_NORM_EPS)

    def denormalize(self, z: Tensor) -> Tensor:
        """Inverse of ``normalize``."""
        if not self._config.normalize_latents:
            return z
        return z * torch.sqrt(self.latent_var.to(z.dtype) + LATENT_NORM_EPS) + self.latent_mean.to(z.dtype)

    def add_noise(self, tokens: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Raw tokens + the training noise (``sample_token_noise`` with ``noise_tau``); generator phase only."""
        return sample_token_noise(tokens, self.noise_tau, generator)

    def decode_tokens(self, tokens: Tensor) -> Tensor:
        """Raw tokens (B, C, h, w) -> images (B, 3, S, S), nominally [-1, 1] (any h = w; resized to g)."""
        x = self.decoder(tokens.flatten(2).transpose(1, 2))  # (B, C, h, w) -> (B, h*w, C) -> (B, 3, S, S)
        return self.encoder.denormalize(x) * 2 - 1  # normalised pixels -> [0, 1] -> [-1, 1]

    def decode(self, z: Tensor) -> DecoderOutput:
        """Latents (B, C, h, w) (normalised when ``normalize_latents``) -> images (B, 3, S, S)."""
        if z.ndim != 4 or z.shape[1] != self.latent_channels or z.shape[2] != z.shape[3]:
            raise ValueError(f"{self.family} decodes latents (B, {self.latent_channels}, h, h), got {tuple(z.shape)}")
        return DecoderOutput(sample=self.decode_tokens(self.denormalize(z)))

    def set_latent_stats(self, mean: Tensor | None, var: Tensor) -> None:
        """Store normalisation statistics (the reference's ``stat.pt`` ``mean`` / ``var``).

        Args:
            mean: broadcastable to (C, g, g): per-(C, H, W) as the reference ((1, C, H, W) accepted) or
                per channel; None means zero (the released DINOv2-B ``stat.pt`` has no mean).
            var: the same, the variance (not the std).

        Raises:
            ValueError: a shape that does not broadcast to (C, g, g), or a negative variance.
        """
        want = tuple(self.latent_mean.shape)
        mean = torch.zeros(want) if mean is None else mean
        try:
            mean, var = (torch.broadcast_to(t.detach().float().squeeze(0) if t.ndim == 4 else t.detach().float(), want)
                         for t in (mean, var))  # fmt: skip
        except RuntimeError as e:
            raise ValueError(f"latent stats must broadcast to {want} (C, H, W): {e}") from e
        if (var < 0).any():
            raise ValueError("latent variance has negative entries: pass the variance, not a log-variance")
        self.latent_mean.copy_(mean)
        self.latent_var.copy_(var)

    def per_position_stats(self, latents: Tensor | np.ndarray) -> dict[str, Tensor]:
        """The reference's ``stat.pt`` of a split: per-(C, H, W) mean and variance of the raw tokens.

        Args:
            latents: (N, C * g * g) or (N, C, g, g) latents as ``encode`` returned them (normalised when
                ``normalize_latents``: undone first, so the statistics describe raw tokens).

        Returns:
            ``{"mean": (C, g, g), "var": (C, g, g)}`` float32 (population variance, accumulated in float64);
            ``set_latent_stats(**it)`` with ``normalize_latents=True`` standardises the DiT's input.
        """
        shape = tuple(self.latent_mean.shape)
        z = torch.as_tensor(latents).reshape(-1, *shape)
        if z.shape[0] < 2:
            raise ValueError(f"per-position latent statistics need at least 2 latents, got {z.shape[0]}")
        z = self.denormalize(z.to(self.latent_mean.device, torch.float32)).double()
        return {"mean": z.mean(dim=0).float().cpu(), "var": z.var(dim=0, unbiased=False).float().cpu()}

    @property
    def gan_last_layer(self) -> nn.Parameter:
        return self.decoder.decoder_pred.weight

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute decoder blocks in backward (the XL decoder at batch 16+ on a T4 needs it)."""
        self.decoder.gradient_checkpointing = enabled
