"""The convolutional encoder and decoder of the LDM KL autoencoder, in LightningDiT's exact key layout.

Written by hand on purpose: LightningDiT's ``vavae/`` (from CompVis latent-diffusion,
``ldm/modules/diffusionmodules/model.py``) names parameters ``encoder.down.0.block.0.norm1.weight``, and
no maintained library exposes that layout (diffusers' ``AutoencoderKL`` renames every key), so the released
weights would need a fragile key translation. Same modules, same order and the same op sequence (swish as
``x * sigmoid(x)``, attention as explicit ``bmm`` + softmax): on CPU in float32 the outputs are
bit-identical to the reference fixtures.

``kernels`` picks the op sequence: ``exact`` (the above), ``fast`` (``F.silu`` and
``scaled_dot_product_attention``, which picks flash / memory-efficient kernels on a GPU and never materialises
the (hw, hw) attention matrix; they round differently, up to 1e-5 relative after the decoder) or ``auto``
(fast for CUDA tensors, exact otherwise: decided per call, so one model is exact on CPU and fast on a GPU).

Level layout of the released f16d32 model (ch=128, ch_mult 1,1,2,2,4, resolution 256):

    level   width   resolution   encoder blocks   decoder blocks   attention
    0       128     256          2                3                -
    1       128     128          2                3                -
    2       256     64           2                3                -
    3       256     32           2                3                -
    4       512     16           2                3                yes (attn_resolutions=16)
    mid     512     16           res, attn, res   res, attn, res   yes
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aetune.models.base import FamilyConfig, ModelConfigError, run_block

KERNELS = ("auto", "exact", "fast")
"""Op sequences of the encoder and decoder (``KLConfig.kernels``)."""


@dataclass
class KLConfig(FamilyConfig):
    """Options of the KL autoencoder; defaults are the released VA-VAE f16d32 (hustvl, ImageNet 256)."""

    ch: int = 128  # base width (a multiple of 32: GroupNorm uses 32 groups)
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # one entry per level: 5 levels = 16x downsampling
    num_res_blocks: int = 2  # per encoder level; the decoder has one more per level (LDM)
    attn_resolutions: tuple[int, ...] = (16,)  # levels at these nominal resolutions get attention
    resolution: int = 256  # nominal image size that places attention (level i is resolution / 2**i)
    in_channels: int = 3  # RGB; grayscale spectrograms are replicated to 3 channels by the data layer
    out_channels: int = 3  # decoder output channels
    z_channels: int = 32  # encoder output width before quant_conv (per moment)
    embed_dim: int = 32  # latent channels after quant_conv: what a DiT sees
    dropout: float = 0.0  # inside ResnetBlocks; 0 in the released model
    kernels: str = "auto"  # exact | fast | auto (fast on CUDA): see the module docstring; weights are the same

    def validate(self) -> None:
        widths = [self.ch * m for m in self.ch_mult]
        if self.ch <= 0 or not self.ch_mult or any(w <= 0 or w % 32 for w in widths):
            raise ModelConfigError(
                f"ch={self.ch} with ch_mult={list(self.ch_mult)} gives widths {widths}: every width must be a "
                "positive multiple of 32 (GroupNorm with 32 groups)"
            )
        for name in ("num_res_blocks", "resolution", "in_channels", "out_channels", "z_channels", "embed_dim"):
            if getattr(self, name) <= 0:
                raise ModelConfigError(f"autoencoder option '{name}' must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ModelConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.kernels not in KERNELS:
            raise ModelConfigError(f"kernels must be one of {', '.join(KERNELS)}, got '{self.kernels}'")


def use_fast(kernels: str, x: Tensor) -> bool:
    """Whether ``kernels`` (``KERNELS``) means the fast op sequence for input ``x``."""
    return kernels == "fast" or (kernels == "auto" and x.is_cuda)


class _Swish(torch.autograd.Function):
    """LDM's ``nonlinearity`` (``x * sigmoid(x)``, bit-exact), saving only ``x`` like ``F.silu`` does:
    the plain product would also keep ``sigmoid(x)`` for backward, a third more activation memory."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return grad * s * (1.0 + x * (1.0 - s))  # d/dx x s(x) = s + x s (1 - s)


def swish(x: Tensor, fast: bool = False) -> Tensor:
    """``x * sigmoid(x)`` (SiLU): with LDM's rounding, or ``F.silu`` (one fused kernel) when ``fast``."""
    return F.silu(x) if fast else _Swish.apply(x)


def norm(channels: int) -> nn.GroupNorm:
    """LDM ``Normalize``: 32 groups, eps 1e-6."""
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def conv3(cin: int, cout: int, stride: int = 1, padding: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=padding)


def conv1(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, plus a 1x1 ``nin_shortcut`` when the width changes (no time embedding)."""

    kernels = "exact"  # set by Encoder / Decoder from KLConfig.kernels

    def __init__(self, cin: int, cout: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = norm(cin)
        self.conv1 = conv3(cin, cout)
        self.norm2 = norm(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv3(cout, cout)
        if cin != cout:
            self.nin_shortcut = conv1(cin, cout)

    def forward(self, x: Tensor) -> Tensor:
        fast = use_fast(self.kernels, x)
        h = self.conv1(swish(self.norm1(x), fast))
        h = self.conv2(self.dropout(swish(self.norm2(h), fast)))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions, 1x1 convs for q, k, v and the output."""

    kernels = "exact"  # set by Encoder / Decoder from KLConfig.kernels

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = norm(channels)
        self.q = conv1(channels, channels)
        self.k = conv1(channels, channels)
        self.v = conv1(channels, channels)
        self.proj_out = conv1(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        if use_fast(self.kernels, x):
            # (B, C, h, w) -> (B, 1, hw, C): one head; the default scale is C**-0.5, as below. Contiguous: CUDA's
            # fused kernels want a unit-stride last dimension, which the transposed view (stride hw) lacks.
            q, k, v = (t(y).reshape(b, 1, c, h * w).transpose(2, 3).contiguous() for t in (self.q, self.k, self.v))
            y = F.scaled_dot_product_attention(q, k, v)  # (B, 1, hw, C)
            return x + self.proj_out(y.transpose(2, 3).reshape(b, c, h, w))
        q = self.q(y).reshape(b, c, h * w).permute(0, 2, 1)  # (B, C, h, w) -> (B, hw, C)
        k = self.k(y).reshape(b, c, h * w)  # (B, C, hw)
        v = self.v(y).reshape(b, c, h * w)  # (B, C, hw)
        attn = torch.softmax(torch.bmm(q, k) * c**-0.5, dim=2)  # (B, hw_q, hw_k); 256x256 at f16, 256 px
        y = torch.bmm(v, attn.permute(0, 2, 1)).reshape(b, c, h, w)  # (B, C, hw_q) -> (B, C, h, w)
        return x + self.proj_out(y)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after asymmetric zero padding (right/bottom), as LDM: halves h and w."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = conv3(channels, channels, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = conv3(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: ``block`` (ResnetBlocks), ``attn`` (one per block, or none) and an optional
    ``downsample`` / ``upsample`` (the attribute names are LDM's state-dict keys)."""

    def __init__(self, widths: list[tuple[int, int]], attention: bool, dropout: float) -> None:
        super().__init__()
        self.block = nn.ModuleList([ResnetBlock(cin, cout, dropout) for cin, cout in widths])
        self.attn = nn.ModuleList([AttnBlock(cout) for _, cout in widths] if attention else [])

    def forward(self, h: Tensor, checkpointing: bool) -> Tensor:
        for i, block in enumerate(self.block):
            h = run_block(block, h, checkpointing)
            if len(self.attn):
                h = run_block(self.attn[i], h, checkpointing)
        return h


class Mid(nn.Module):
    """ResnetBlock, attention, ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h: Tensor, checkpointing: bool) -> Tensor:
        for block in (self.block_1, self.attn_1, self.block_2):
            h = run_block(block, h, checkpointing)
        return h


def set_kernels(net: nn.Module, kernels: str) -> None:
    """Give ``net`` and its blocks the op sequence ``kernels`` (``KERNELS``); the weights do not change."""
    if kernels not in KERNELS:
        raise ModelConfigError(f"kernels must be one of {', '.join(KERNELS)}, got '{kernels}'")
    for m in net.modules():
        if isinstance(m, (Encoder, Decoder, ResnetBlock, AttnBlock)):
            m.kernels = kernels


class Encoder(nn.Module):
    """Images (B, in_channels, H, W) -> moments (B, 2 z_channels, H/f, W/f), f = 2**(len(ch_mult)-1).

    Level i has ``ch * ch_mult[i]`` channels and ``num_res_blocks`` ResnetBlocks, with attention where
    ``resolution / 2**i`` is in ``attn_resolutions`` (LDM semantics: a nominal size, not the input's).
    """

    kernels = "exact"

    def __init__(self, c: KLConfig) -> None:
        super().__init__()
        self.gradient_checkpointing = False
        self.conv_in = conv3(c.in_channels, c.ch)
        widths = [c.ch * m for m in (1, *c.ch_mult)]  # level i maps widths[i] -> widths[i + 1]
        self.down = nn.ModuleList()
        for i in range(len(c.ch_mult)):
            blocks = [(widths[i], widths[i + 1])] + [(widths[i + 1], widths[i + 1])] * (c.num_res_blocks - 1)
            level = Level(blocks, c.resolution // 2**i in c.attn_resolutions, c.dropout)
            if i != len(c.ch_mult) - 1:
                level.downsample = Downsample(widths[i + 1])
            self.down.append(level)
        self.mid = Mid(widths[-1], c.dropout)
        self.norm_out = norm(widths[-1])
        self.conv_out = conv3(widths[-1], 2 * c.z_channels)
        set_kernels(self, c.kernels)

    def forward(self, x: Tensor) -> Tensor:
        cp = self.gradient_checkpointing
        h = self.conv_in(x)  # (B, 3, H, W) -> (B, ch, H, W)
        for level in self.down:
            h = level(h, cp)
            if hasattr(level, "downsample"):
                h = level.downsample(h)  # (B, c, s, s) -> (B, c, s/2, s/2)
        h = self.mid(h, cp)
        fast = use_fast(self.kernels, h)
        return self.conv_out(swish(self.norm_out(h), fast))  # (B, C, h, w) -> (B, 2 z_channels, h, w)


class Decoder(nn.Module):
    """Latents (B, z_channels, h, w) -> images (B, out_channels, h*f, w*f).

    The mirror of ``Encoder``, with ``num_res_blocks + 1`` ResnetBlocks per level, as LDM.
    """

    kernels = "exact"

    def __init__(self, c: KLConfig) -> None:
        super().__init__()
        self.gradient_checkpointing = False
        top = c.ch * c.ch_mult[-1]
        self.conv_in = conv3(c.z_channels, top)
        self.mid = Mid(top, c.dropout)
        levels = []
        cin = top
        for i in reversed(range(len(c.ch_mult))):  # built deepest first; stored shallowest first (LDM order)
            cout = c.ch * c.ch_mult[i]
            blocks = [(cin, cout)] + [(cout, cout)] * c.num_res_blocks
            level = Level(blocks, c.resolution // 2**i in c.attn_resolutions, c.dropout)
            if i != 0:
                level.upsample = Upsample(cout)
            levels.insert(0, level)
            cin = cout
        self.up = nn.ModuleList(levels)
        self.norm_out = norm(cin)
        self.conv_out = conv3(cin, c.out_channels)
        set_kernels(self, c.kernels)

    def forward(self, z: Tensor) -> Tensor:
        cp = self.gradient_checkpointing
        h = self.mid(self.conv_in(z), cp)  # (B, z, h, w) -> (B, ch*ch_mult[-1], h, w)
        for level in reversed(self.up):
            h = level(h, cp)
            if hasattr(level, "upsample"):
                h = level.upsample(h)  # (B, c, s, s) -> (B, c, 2s, 2s)
        fast = use_fast(self.kernels, h)
        return self.conv_out(swish(self.norm_out(h), fast))  # (B, ch, H, W) -> (B, 3, H, W)
