"""RAE's discriminator: a frozen DINO ViT-S/8 whose token features feed small trained 1-D conv heads.

As bytetriper/RAE's ``DinoDisc`` (itself after StyleGAN-T / VAR): images in [-1, 1] are resized to 224 px
(bilinear) and ImageNet-normalised; the tokens after blocks 2, 5, 8, 11 and the final output (no final
LayerNorm) each go to a head SN-Conv1d(k=1) + per-sample BatchNorm + LeakyReLU(0.2), a residual
SN-Conv1d(k=9, circular) block scaled by 1/sqrt(2), and SN-Conv1d -> 1 logit per token. Only the heads
train. The frozen backbone (``DinoFeatures``) and the trained heads (``DinoHeads``) are separate modules,
so that the recipe keeps the backbone out of checkpoints and optimizers. Differences from the reference, on
purpose: the backbone is timm's ``vit_small_patch8_224.dino`` with exact GELU, as the DINO weights were
trained (the reference's MLP uses the tanh approximation: set ``tanh_gelu=True`` for its numbers); the
reference's zeroing of the attention key bias is not done because a key bias adds the same score to
every key of a query, which softmax ignores.

``diff_augment`` is the reference's DiffAugment (translation 1/8 of the size with zero fill, then colour:
brightness, saturation, contrast), applied by the recipe to real and fake images alike.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aetune.errors import AetuneError
from aetune.nn.foundation import _weights_file

DINO_BACKBONE = "vit_small_patch8_224.dino"
KEY_BLOCKS = (2, 5, 8, 11)


class LocalBatchNorm(nn.Module):
    """BatchNorm with one sample per group (the reference's ``BatchNormLocal``, virtual batch 1).

    Each sample's channels are standardised over its own tokens (float32, biased variance), then scaled
    and shifted: (B, C, L) -> (B, C, L). No running statistics, so train and eval behave the same.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        mean = h.mean(dim=2, keepdim=True)
        var = h.var(dim=2, keepdim=True, unbiased=False)
        h = (h - mean) / torch.sqrt(var + self.eps)
        return (h * self.weight[None, :, None] + self.bias[None, :, None]).to(x.dtype)


class ResidualBlock(nn.Module):
    """(fn(x) + x) / sqrt(2): keeps the variance of two unit-variance branches."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return (self.fn(x) + x) / math.sqrt(2)


def sn_conv1d(c_in: int, c_out: int, kernel_size: int) -> nn.Conv1d:
    """Spectrally normalised Conv1d (one power iteration per training forward, as the reference)."""
    conv = nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2, padding_mode="circular")
    return nn.utils.spectral_norm(conv, n_power_iterations=1, eps=1e-12, dim=0)


def _block(channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(sn_conv1d(channels, channels, kernel_size), LocalBatchNorm(channels), nn.LeakyReLU(0.2))


class DinoFeatures(nn.Module):
    """The frozen DINO ViT-S/8: images (B, 3, H, W) in [-1, 1] -> [final, block 2, 5, 8, 11] tokens, each (B, C, L).

    A frozen network of the recipe (never checkpointed, never in an optimizer); ``DinoHeads`` is what trains.
    Differentiable with respect to the images (the generator's GAN term needs it). L = (img_size / 8)^2.

    Args:
        pretrained: load the DINO weights (``weights_path``, else the Hugging Face cache filled by step 2;
            a missing file is an error naming it). False: random backbone (tests, the CPU demo only).
        weights_path: a local file for ``vit_small_patch8_224.dino`` (timm's ``model.safetensors``, or the
            original DINO ``dino_deitsmall8_pretrain.pth`` / RAE's ``discs/dino_vit_small_patch8_224.pth``).
        tanh_gelu: the reference's tanh-approximated GELU in the MLP instead of exact GELU.
        img_size, depth, width, heads: overrides for a small random backbone (only with ``pretrained=False``);
            0 keeps ViT-S/8 at 224 px. Key blocks deeper than ``depth`` are dropped.
    """

    def __init__(
        self,
        pretrained: bool = True,
        weights_path: str | None = None,
        tanh_gelu: bool = False,
        img_size: int = 0,
        depth: int = 0,
        width: int = 0,
        heads: int = 0,
    ) -> None:
        super().__init__()
        import timm

        overrides = {k: v for k, v in {"img_size": img_size, "depth": depth, "embed_dim": width}.items() if v}
        if heads:
            overrides["num_heads"] = heads
        if pretrained and overrides:
            raise AetuneError(
                f"discriminator overrides {sorted(overrides)} build a random backbone: use them with "
                "pretrained=False only"
            )
        kwargs: dict = {"num_classes": 0, **overrides}
        if tanh_gelu:
            kwargs["act_layer"] = "gelu_tanh"
        if pretrained:
            kwargs["pretrained_cfg_overlay"] = {"file": str(_weights_file(DINO_BACKBONE, weights_path))}
        elif weights_path is not None:
            raise AetuneError("discriminator weights_path is given but pretrained=False: set pretrained=True")
        self.vit = timm.create_model(DINO_BACKBONE, pretrained=pretrained, **kwargs)
        self.vit.requires_grad_(False)
        self.vit.eval()
        self.img_size = self.vit.patch_embed.img_size[0]
        self.key_blocks = tuple(b for b in KEY_BLOCKS if b < len(self.vit.blocks))
        self.embed_dim: int = self.vit.embed_dim
        cfg = self.vit.pretrained_cfg
        # [-1, 1] -> ImageNet-normalised in one affine map: ((x + 1) / 2 - m) / s
        std, mean = torch.tensor(cfg["std"]).view(1, 3, 1, 1), torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
        self.register_buffer("x_scale", 0.5 / std, persistent=False)
        self.register_buffer("x_shift", (0.5 - mean) / std, persistent=False)

    def train(self, mode: bool = True) -> DinoFeatures:
        """Stay in eval mode whatever the parent does (frozen)."""
        return super().train(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.shape[-2:] != (self.img_size, self.img_size):
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        x = x * self.x_scale.to(x.dtype) + self.x_shift.to(x.dtype)
        vit, n = self.vit, self.vit.num_prefix_tokens
        h = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))  # (B, 1 + L, C): cls + patch tokens
        picked = []
        for i, block in enumerate(vit.blocks):
            h = block(h)
            if i in self.key_blocks:
                picked.append(h[:, n:].transpose(1, 2))  # (B, L, C) -> (B, C, L)
        return [h[:, n:].transpose(1, 2), *picked]


class DinoHeads(nn.Module):
    """The trained part of RAE's discriminator: token features -> logits (B, heads * L).

    Args:
        channels: feature width C (384 for ViT-S).
        n_features: feature maps (1 + key blocks: 5 for ViT-S/8).
        kernel_size: of the residual conv (9).

    ``heads[i]`` sees feature map i: 0 the final output, then blocks 2, 5, 8, 11 (the reference's order; heads
    0 and 4 see the same tokens). State-dict keys as the reference's ``DinoDisc.heads``.
    """

    def __init__(self, channels: int = 384, n_features: int = 5, kernel_size: int = 9) -> None:
        super().__init__()
        c = channels
        self.heads = nn.ModuleList(
            nn.Sequential(_block(c, 1), ResidualBlock(_block(c, kernel_size)), sn_conv1d(c, 1, 1))
            for _ in range(n_features)
        )

    def forward(self, features: list[Tensor]) -> Tensor:
        """Features, each (B, C, L) -> logits (B, n_features * L): real high, fake low (hinge)."""
        return torch.cat([head(f).flatten(1) for head, f in zip(self.heads, features, strict=True)], dim=1)


def translate(x: Tensor, dh: Tensor, dw: Tensor) -> Tensor:
    """Per-sample integer shift with zero fill: ``out[b, :, i, j] = x[b, :, i + dh[b], j + dw[b]]`` (0 outside).

    Args:
        x: (B, C, H, W). dh, dw: (B,) integer shifts (long).
    """
    b, _, h, w = x.shape
    # index the zero-padded image: padded row i + dh + 1, clamped into the padding border
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + dh.view(b, 1, 1) + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + dw.view(b, 1, 1) + 1).clamp(0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)  # (B, H+2, W+2, C)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    return padded[batch, rows, cols].permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)


def colour(x: Tensor, brightness: Tensor, saturation: Tensor, contrast: Tensor) -> Tensor:
    """DiffAugment colour, per sample (each (B,) tensor): x + brightness, then scale the deviation from
    the per-pixel channel mean by ``saturation``, then from the per-image mean by ``contrast``."""
    view = (-1, 1, 1, 1)
    x = x + brightness.view(view)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * saturation.view(view) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * contrast.view(view) + mean


def diff_augment(x: Tensor, prob: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """DiffAugment as the reference (StyleGAN-T's ``DiffAug`` without cutout): (B, C, H, W) -> same shape.

    With probability ``prob`` each (one draw per batch): translation by up to round(H / 8) pixels each way
    (uniform integers, per sample), and colour with brightness U(-0.5, 0.5), saturation U(0, 2), contrast
    U(0.5, 1.5) per sample. Differentiable with respect to ``x``.
    """
    if prob <= 0:
        return x
    b, device = x.shape[0], x.device
    do_translate, do_colour = (torch.rand(2, generator=generator) <= prob).tolist()
    u = torch.rand(5, b, generator=generator).to(device)
    if do_translate:
        h, w = x.shape[-2:]
        th, tw = round(h * 0.125), round(w * 0.125)
        x = translate(x, (u[0] * (2 * th + 1)).floor().long() - th, (u[1] * (2 * tw + 1)).floor().long() - tw)
    if do_colour:
        x = colour(x, u[2] - 0.5, u[3] * 2, u[4] + 0.5)
    return x
