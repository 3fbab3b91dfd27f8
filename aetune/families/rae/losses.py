"""The RAE decoder objective (bytetriper/RAE ``train_stage1.py``) as pure functions of the networks' outputs.

Generator: ``L1 + perceptual_weight * LPIPS + disc_weight * w * G``. L1 is the mean absolute error on [0, 1]
pixels, which is half the one on [-1, 1]. LPIPS is the batch mean on [-1, 1]. G = -mean D(x_rec). The
adaptive weight w = ||d rec / dW|| / ||d G / dW|| at ``decoder_pred.weight``, clamped to [0, 1e4].
Discriminator: the hinge loss ``aetune.losses.hinge_d_loss``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from aetune.losses.adaptive import adaptive_weight
from aetune.losses.adversarial import GAN_MAX_WEIGHT, generator_loss


def quantize_fakes(x: Tensor) -> Tensor:
    """Reconstructions (B, 3, H, W) -> clamped to [-1, 1] and rounded to the 256 levels real images have."""
    return torch.round((x.clamp(-1.0, 1.0) + 1.0) * 127.5) / 127.5 - 1.0


def rae_generator_objective(
    x: Tensor,
    x_rec: Tensor,
    *,
    perceptual: nn.Module | None,
    perceptual_weight: float,
    logits_fake: Tensor | None,
    disc_weight: float,
    last_layer: nn.Parameter,
    with_parts: bool = False,
    eps: float = 1e-6,
) -> dict[str, Tensor]:
    """The generator phase's loss and its logged terms.

    Args:
        x, x_rec: (B, 3, H, W) images and reconstructions in [-1, 1].
        perceptual: LPIPS (``build_lpips``); required when ``perceptual_weight > 0``.
        logits_fake: the discriminator's logits of the (augmented) reconstruction, or None before ``gan_start``.
        last_layer: ``decoder_pred.weight``, where the adaptive weight compares the gradients.
        eps: under the GAN term's gradient norm in the adaptive weight (released: 1e-6; LightningDiT: 1e-4).
        with_parts: also return the weighted terms with their graphs under ``"parts"`` (grad-norm logging).

    Returns:
        ``total`` (with graph) and detached ``rec_loss`` (L1 on [0, 1]), ``lpips_loss``, ``g_loss``, ``d_weight``.
    """
    x, x_rec = x.float(), x_rec.float()
    l1 = (x_rec - x).abs().mean() / 2  # |a - b| on [0, 1] = |a' - b'| / 2 on [-1, 1]
    lp = torch.zeros((), device=x.device)
    if perceptual_weight > 0:
        if perceptual is None:
            raise ValueError(f"perceptual_weight={perceptual_weight} needs a perceptual network (build_lpips())")
        lp = perceptual(x, x_rec).float().mean()
    rec = l1 + perceptual_weight * lp
    g_loss = d_weight = torch.zeros((), device=x.device)
    total = rec
    if logits_fake is not None:
        g_loss = generator_loss(logits_fake)
        d_weight = adaptive_weight(rec, g_loss, last_layer, GAN_MAX_WEIGHT, eps)
        total = rec + disc_weight * d_weight * g_loss
    out = {"total": total, "rec_loss": l1.detach(), "lpips_loss": lp.detach(), "g_loss": g_loss.detach()}
    out["d_weight"] = d_weight.detach()
    if with_parts:
        parts = {"l1": l1, "lpips": perceptual_weight * lp}
        if logits_fake is not None:
            parts["gan"] = disc_weight * d_weight * g_loss
        out["parts"] = parts  # type: ignore[assignment]
    return out
