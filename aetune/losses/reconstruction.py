"""Reconstruction term: per-pixel L1 plus LPIPS-VGG, summed per image (LightningDiT's ``nll_loss``)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from aetune.errors import AetuneError

VGG16_FILE = "vgg16-397923af.pth"
"""torchvision's ImageNet VGG16 weights, which ``lpips`` loads from the torch hub cache."""


class FrozenLPIPS(nn.Module):
    """``lpips.LPIPS(net="vgg")``, frozen and pinned to eval mode.

    LPIPS's linear heads contain dropout: the released VA-VAE's Lightning loop switched its LPIPS to
    train mode, which made the perceptual term stochastic. Pinning eval keeps it a deterministic metric.

    Args:
        pretrained_backbone: ImageNet VGG16 (torch hub cache) if True, random weights if False.
    """

    def __init__(self, pretrained_backbone: bool) -> None:
        super().__init__()
        import lpips

        with warnings.catch_warnings():
            # lpips calls torchvision's deprecated vgg16(pretrained=...); the warning is about lpips' code.
            warnings.filterwarnings("ignore", message="Arguments other than a weight enum", category=UserWarning)
            warnings.filterwarnings("ignore", message="The parameter 'pretrained' is deprecated", category=UserWarning)
            # pretrained=True: the linear heads, shipped inside the lpips package (no download).
            self.net = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=not pretrained_backbone, verbose=False)
        self.net.requires_grad_(False)
        self.pretrained_backbone = pretrained_backbone
        self.eval()

    def train(self, mode: bool = True) -> FrozenLPIPS:
        """Stay in eval mode whatever the parent module does."""
        return super().train(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """LPIPS distance of images (B, 3, H, W) in [-1, 1]: (B, 1, 1, 1) float32.

        Always float32, also inside a mixed-precision step: LPIPS unit-normalises each VGG feature map and
        sums squared differences of small numbers, which fp16 / bf16 round to a different distance (and the
        metric must not change with the training precision).
        """
        with torch.autocast(x.device.type, enabled=False):
            return self.net(x.float(), y.float())


def build_lpips(pretrained: bool = True) -> FrozenLPIPS:
    """LPIPS-VGG for the perceptual term (what LightningDiT's ``LPIPSWithDiscriminator`` uses).

    Args:
        pretrained: take VGG16 from the torch hub cache (filled by step 2; nothing is downloaded here).
            False builds a random backbone (tests, CPU demo) and warns: its values mean nothing.

    Raises:
        AetuneError: pretrained and ``vgg16-397923af.pth`` is not in the torch hub cache.
    """
    if pretrained:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE
        if not cached.is_file():
            raise AetuneError(
                f"LPIPS needs torchvision's VGG16 weights at {cached}: run step 2 to fetch "
                f"https://download.pytorch.org/models/{VGG16_FILE}, or copy that file there"
            )
    else:
        warnings.warn("LPIPS with a random VGG backbone: the perceptual term is meaningless", stacklevel=2)
    return FrozenLPIPS(pretrained_backbone=pretrained)


def nll_loss(
    x: Tensor, x_rec: Tensor, perceptual: nn.Module | None = None, perceptual_weight: float = 0.0
) -> tuple[Tensor, Tensor]:
    """LightningDiT's reconstruction nll with its fixed ``logvar`` = 0.

    ``rec = |x - x_rec| + perceptual_weight * LPIPS(x, x_rec)``, where the (B, 1, 1, 1) LPIPS value is
    broadcast onto every pixel as in the reference, so it effectively weighs C*H*W times per image.

    Args:
        x, x_rec: (B, C, H, W) images in [-1, 1], any float dtype (computed in float32).
        perceptual: the LPIPS module; required when ``perceptual_weight > 0``.
        perceptual_weight: LPIPS weight (1.0 in the released model).

    Returns:
        (nll, rec_loss): ``rec.sum() / B`` (the optimised term) and ``rec.mean()`` (for logging).
    """
    x, x_rec = x.float(), x_rec.float()
    rec = torch.abs(x - x_rec)  # (B, C, H, W)
    if perceptual_weight > 0:
        if perceptual is None:
            raise ValueError(f"perceptual_weight={perceptual_weight} needs a perceptual network (build_lpips())")
        rec = rec + perceptual_weight * perceptual(x, x_rec).float()  # (B, 1, 1, 1) broadcast per pixel
    return rec.sum() / rec.shape[0], rec.mean()
