"""The paired restoration objective (HYPIR fork): weighted L1, L2, LPIPS, SSIM and GAN terms of output vs GT.

``total = w_l1 |y - gt|_1 + w_l2 |y - gt|_2^2 + w_lpips LPIPS(y, gt) + w_ssim (1 - SSIM(y, gt)) + w_gan G(y)``,
every term a batch mean on [-1, 1] images (``F.l1_loss`` / ``F.mse_loss`` / ``lpips(...).mean()`` of the fork);
``G(y)`` is the discriminator's generator loss (the fork's CLIP discriminator: its multi-level BCE against 0.8;
the PatchGAN: ``-mean D(y)``). The GAN weight is fixed, as in the fork (no adaptive weight). Unlike the fork's,
the SSIM term has a gradient (``aetune.losses.ssim``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aetune.losses.ssim import ssim_differentiable

TERMS = ("l1", "l2", "lpips", "ssim", "gan")
"""Names of the terms: ``train/<term>`` (unweighted values); the recipe logs the weighted terms' gradient norms
at the last layer as the fork names them (``grad_norm/conv_out_<term>``, ``gan`` as ``disc``)."""


@dataclass(frozen=True)
class RestorationWeights:
    """Term weights; defaults are the seed's recipe, the fork's ``sd2_finetune_5k_improved.yaml`` (its
    ``sd2_finetune_5k.yaml``: 1, 1, 5, 0, 0.5)."""

    l1: float = 2.0
    l2: float = 2.0
    lpips: float = 3.0
    ssim: float = 1.0
    gan: float = 0.3


def restoration_objective(
    gt: Tensor,
    out: Tensor,
    weights: RestorationWeights,
    perceptual: nn.Module | None = None,
    gan: Tensor | None = None,
) -> dict[str, Tensor]:
    """The generator loss of a restoration batch.

    Computed in float32 with autocast off (LPIPS' channel normalisation overflows in float16). A term with
    weight 0 is neither computed nor logged; the GAN term needs ``gan`` (None: not active yet).

    Args:
        gt: (B, 3, H, W) clean targets in [-1, 1].
        out: (B, 3, H, W) restored outputs (with graph), nominally [-1, 1].
        weights: the term weights.
        perceptual: LPIPS taking [-1, 1] images (required when ``weights.lpips > 0``).
        gan: the generator's adversarial loss of ``out`` (0-dim, with graph; the discriminator frozen), or None.

    Returns:
        ``total`` (0-dim, with graph); per term, ``<term>`` the unweighted value (detached; for ``ssim`` the SSIM
        itself, not the loss) and ``w_<term>`` the weighted term (with graph: the part for gradient norms).
    """
    if weights.lpips > 0 and perceptual is None:
        raise ValueError(f"lpips weight {weights.lpips} needs a perceptual network (build_lpips())")
    with torch.autocast(device_type=gt.device.type, enabled=False):
        y, t = out.float(), gt.float()
        raw: dict[str, Tensor] = {}
        losses: dict[str, Tensor] = {}
        if weights.l1 > 0:
            losses["l1"] = raw["l1"] = F.l1_loss(y, t)
        if weights.l2 > 0:
            losses["l2"] = raw["l2"] = F.mse_loss(y, t)
        if weights.lpips > 0:
            losses["lpips"] = raw["lpips"] = perceptual(y, t).float().mean()  # type: ignore[misc]  # checked above
        if weights.ssim > 0:
            raw["ssim"] = ssim_differentiable(t, y).mean()
            losses["ssim"] = 1.0 - raw["ssim"]
        if weights.gan > 0 and gan is not None:
            losses["gan"] = raw["gan"] = gan.float()
        weighted = {k: getattr(weights, k) * v for k, v in losses.items()}
        total = sum(weighted.values(), torch.zeros((), device=gt.device))
    return {"total": total, **{k: v.detach() for k, v in raw.items()}, **{f"w_{k}": v for k, v in weighted.items()}}
