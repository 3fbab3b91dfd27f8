"""The RAE pixel decoder: an MAE-style pre-norm ViT from encoder tokens to 16 x 16 pixel patches.

Same network as the reference's ``GeneralDecoder`` (bytetriper/RAE ``stage1/decoders/decoder.py``) and
diffusers' ``RAEDecoder``. Attribute names are the keys of the released ``model.pt`` (transformers'
``ViTMAELayer`` naming), so a released decoder loads as it is; diffusers' renamed keys are mapped in
``rae_loading``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aetune.models.base import run_block

DECODER_SIZES: dict[str, tuple[int, int, int, int]] = {
    # width, layers, heads, MLP hidden: the released ViT-B / ViT-L / ViT-XL decoders (XL is the default RAE)
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "XL": (1152, 28, 16, 4096),
}
LAYER_NORM_EPS = 1e-12  # transformers' ViT-MAE config value, kept by the reference


def sincos_pos_embed(dim: int, grid: int) -> Tensor:
    """MAE's fixed 2-D sin-cos position table with a zero cls row: (1 + grid * grid, dim), float32.

    As MAE (and the reference) computes it in float64: the first ``dim/2`` channels encode the column
    (MAE's ``meshgrid(w, h)`` puts w first), the last ``dim/2`` the row; each half is [sin | cos] of
    position x 10000^(-k / (dim/4)).
    """
    if dim % 4:
        raise ValueError(f"decoder width must be a multiple of 4 for the 2-D sin-cos table, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))  # (D/4,)
    cols, rows = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))

    def one_axis(pos: np.ndarray) -> np.ndarray:
        out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)  # (grid^2, D/4)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (grid^2, D/2)

    table = np.concatenate([one_axis(cols), one_axis(rows)], axis=1)  # (grid^2, D)
    table = np.concatenate([np.zeros((1, dim)), table], axis=0)  # cls slot: zeros
    return torch.from_numpy(table).float()


class _Dense(nn.Module):
    """A Linear under the attribute ``dense`` (transformers' key naming: ``*.dense.weight``)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)


class DecoderLayer(nn.Module):
    """Pre-norm ViT block: x + Attn(LN(x)), then x + MLP(LN(x)); exact GELU, qkv bias, no dropout."""

    def __init__(self, width: int, heads: int, mlp: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"decoder width {width} is not a multiple of its {heads} heads")
        self.heads = heads
        self.layernorm_before = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.attention = nn.ModuleDict(
            {
                "attention": nn.ModuleDict({n: nn.Linear(width, width) for n in ("query", "key", "value")}),
                "output": _Dense(width, width),
            }
        )
        self.layernorm_after = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.intermediate = _Dense(width, mlp)
        self.output = _Dense(mlp, width)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, D)."""
        b, n, d = x.shape
        h = self.layernorm_before(x)
        qkv = self.attention["attention"]
        # (B, N, D) -> (B, heads, N, D / heads)
        q, k, v = (qkv[name](h).view(b, n, self.heads, d // self.heads).transpose(1, 2) for name in qkv)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)  # -> (B, N, D)
        x = x + self.attention["output"].dense(a)
        return x + self.output.dense(F.gelu(self.intermediate.dense(self.layernorm_after(x))))


class RAEDecoder(nn.Module):
    """Encoder tokens -> pixel patches -> image, in the encoder's normalised pixel space.

    Args:
        latent_dim: encoder token width C (768 for the released encoders).
        width, depth, heads, mlp: the ViT (``DECODER_SIZES``).
        grid: tokens per side the decoder was built for (16); other grids are resized to it (bilinear).
        patch: pixels per token side (16): the output is (grid * patch)^2.
    """

    def __init__(self, latent_dim: int, width: int, depth: int, heads: int, mlp: int, grid: int, patch: int) -> None:
        super().__init__()
        self.grid, self.patch = grid, patch
        self.decoder_embed = nn.Linear(latent_dim, width)
        # fixed, never trained; persistent because the released model.pt holds it (a frozen nn.Parameter there)
        self.register_buffer("decoder_pos_embed", sincos_pos_embed(width, grid).unsqueeze(0))  # (1, 1 + N, D)
        self.decoder_layers = nn.ModuleList(DecoderLayer(width, heads, mlp) for _ in range(depth))
        self.decoder_norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.decoder_pred = nn.Linear(width, patch * patch * 3)
        self.trainable_cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.gradient_checkpointing = False

    def forward(self, tokens: Tensor) -> Tensor:
        """Tokens (B, N, C), N = h * w row-major (any square grid) -> image (B, 3, grid * patch, grid * patch).

        The output is in the encoder's normalised space (undo with the encoder's mean/std).
        """
        x = self.decoder_embed(tokens)  # (B, N, C) -> (B, N, D)
        b, n, d = x.shape
        if n != self.grid * self.grid:
            # the reference resizes the embedded tokens of another grid to its own (bilinear)
            side = int(round(n**0.5))
            if side * side != n:
                raise ValueError(f"RAE decodes a square token grid, got {n} tokens")
            x = x.transpose(1, 2).reshape(b, d, side, side)  # (B, N, D) -> (B, D, s, s)
            x = F.interpolate(x, size=(self.grid, self.grid), mode="bilinear", align_corners=False)
            x = x.flatten(2).transpose(1, 2)  # (B, D, g, g) -> (B, g*g, D)
        x = torch.cat([self.trainable_cls_token.expand(b, -1, -1), x], dim=1)  # (B, 1 + N, D)
        x = x + self.decoder_pos_embed.to(x.dtype)
        for layer in self.decoder_layers:
            x = run_block(layer, x, self.gradient_checkpointing)
        x = self.decoder_pred(self.decoder_norm(x))[:, 1:]  # (B, N, p*p*3), cls dropped
        return self.unpatchify(x)

    def unpatchify(self, x: Tensor) -> Tensor:
        """Patches (B, g*g, p*p*3), each (row, col, channel)-ordered -> image (B, 3, g*p, g*p)."""
        b, g, p = x.shape[0], self.grid, self.patch
        x = x.reshape(b, g, g, p, p, 3)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(b, 3, g * p, g * p)
