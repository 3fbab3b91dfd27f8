"""The VA-VAE objective as two pure functions: the generator (autoencoder) step and the discriminator step.

Composes LightningDiT's ``LPIPSWithDiscriminator.forward`` (optimizer_idx 0 and 1) from the terms in this
package, with the same numbers (tests/test_fidelity.py). The caller runs the networks (autoencoder,
discriminator, teacher, LPIPS) and passes their outputs; nothing here holds state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from aetune.losses.adaptive import adaptive_weight
from aetune.losses.adversarial import GAN_MAX_WEIGHT, generator_loss, hinge_d_loss
from aetune.losses.alignment import VF_MAX_WEIGHT, vf_loss_parts
from aetune.losses.kl import kl_loss
from aetune.losses.reconstruction import nll_loss
from aetune.models.outputs import DiagonalGaussian


@dataclass(frozen=True)
class ObjectiveWeights:
    """Loss weights; defaults are the released VA-VAE's (LightningDiT ``vavae_f16d32.yaml``)."""

    kl_weight: float = 1e-6  # KL only keeps the latents bounded
    perceptual_weight: float = 1.0  # LPIPS inside the nll
    disc_weight: float = 0.5  # times the adaptive GAN weight
    vf_weight: float = 0.1  # times the adaptive VF weight (or the fixed VF weight)
    vf_adaptive: bool = True  # scale VF by the grad-norm ratio at encoder.conv_out
    distmat_margin: float = 0.0  # m_d of the distance-matrix term
    cos_margin: float = 0.0  # m_c of the cosine term
    distmat_weight: float = 1.0
    cos_weight: float = 1.0


def generator_objective(
    x: Tensor,
    x_rec: Tensor,
    posterior: DiagonalGaussian | None,
    *,
    weights: ObjectiveWeights,
    perceptual: nn.Module | None,
    logits_fake: Tensor | None,
    z_proj: Tensor | None,
    teacher_feat: Tensor | None,
    gan_last_layer: nn.Parameter | None,
    align_last_layer: nn.Parameter | None,
    gan_active: bool,
    with_parts: bool = False,
) -> dict[str, Tensor]:
    """Autoencoder loss: ``nll + kl_weight KL + d_weight g_loss + vf_weight vf_loss``.

    Computed in float32 with autocast off (LPIPS' channel normalisation overflows in float16).

    Args:
        x: (B, 3, H, W) input images in [-1, 1].
        x_rec: (B, 3, H, W) reconstructions (decoder output, with its graph).
        posterior: q(z|x), or None for families without one (KL term 0).
        weights: the loss weights.
        perceptual: LPIPS module (``build_lpips``); may be None only if ``weights.perceptual_weight`` is 0.
        logits_fake: D(x_rec) with its graph, when ``gan_active``; None otherwise (the discriminator is
            not run before ``disc_start``).
        z_proj: (B, D, h, w) ``model.project(z)`` of the latent the decoder got, or None (no alignment).
        teacher_feat: (B, D, h, w) teacher features of ``x``, given together with ``z_proj``.
        gan_last_layer: ``model.gan_last_layer`` (decoder.conv_out.weight).
        align_last_layer: ``model.align_last_layer`` (encoder.conv_out.weight); needed with ``z_proj``
            when ``weights.vf_adaptive``.
        gan_active: whether the GAN term is on (the batch count has reached ``disc_start``).
        with_parts: also return ``parts``: the weighted terms of ``total`` with their graphs (``rec``, ``kl``,
            ``gan``, ``vf``), for per-term gradient norms.

    Returns:
        float32 0-dim tensors: ``total`` (with graph, to backpropagate) and, detached for logging,
        ``nll_loss``, ``rec_loss``, ``kl_loss``, ``g_loss``, ``d_weight``, ``vf_loss``, ``vf_weight``,
        ``vf_distmat``, ``vf_cos``. Adaptive weights are 0 under ``torch.no_grad`` (validation).
    """
    if gan_active != (logits_fake is not None):
        raise ValueError(
            f"gan_active={gan_active} but logits_fake is {'given' if logits_fake is not None else 'None'}: run "
            "the discriminator on x_rec exactly when the GAN term is active"
        )
    if (z_proj is None) != (teacher_feat is None):
        raise ValueError("z_proj and teacher_feat go together: pass both (alignment) or neither")
    t = generator_terms(x, x_rec, posterior, weights, perceptual, logits_fake, z_proj, teacher_feat)
    nll, kl, g_loss, vf = t["nll"], t["kl"], t["g_loss"], t["vf"]
    zero = torch.zeros((), device=nll.device)
    with torch.autocast(device_type=x.device.type, enabled=False):
        total = nll + weights.kl_weight * kl
        d_weight = vf_weight = zero
        if gan_active:
            d_weight = adaptive_weight(nll, g_loss, gan_last_layer, GAN_MAX_WEIGHT) * weights.disc_weight
            total = total + d_weight * g_loss
        if z_proj is not None:
            if weights.vf_adaptive:
                vf_weight = adaptive_weight(nll, vf, align_last_layer, VF_MAX_WEIGHT) * weights.vf_weight
            else:
                vf_weight = torch.tensor(weights.vf_weight, device=nll.device)
            total = total + vf_weight * vf
    rec, distmat, cos = t["rec"], t["vf_distmat"], t["vf_cos"]
    logs = {"nll_loss": nll, "rec_loss": rec, "kl_loss": kl, "g_loss": g_loss, "d_weight": d_weight}
    logs |= {"vf_loss": vf, "vf_weight": vf_weight, "vf_distmat": distmat, "vf_cos": cos}
    out = {"total": total, **{k: v.detach() for k, v in logs.items()}}
    if with_parts:
        parts = {"rec": nll, "kl": weights.kl_weight * kl}
        if gan_active:
            parts["gan"] = d_weight.detach() * g_loss
        if z_proj is not None:
            parts["vf"] = vf_weight.detach() * vf
        out["parts"] = parts  # type: ignore[assignment]
    return out


def generator_terms(
    x: Tensor,
    x_rec: Tensor,
    posterior: DiagonalGaussian | None,
    weights: ObjectiveWeights,
    perceptual: nn.Module | None,
    logits_fake: Tensor | None,
    z_proj: Tensor | None,
    teacher_feat: Tensor | None,
) -> dict[str, Tensor]:
    """The unweighted terms of :func:`generator_objective` (float32, 0-dim, with graphs; autocast off).

    Returns:
        ``nll`` (with LPIPS inside), ``rec`` (its detached pixel + perceptual mean), ``kl``, ``g_loss`` (0 without
        ``logits_fake``), ``vf`` = ``distmat_weight vf_distmat + cos_weight vf_cos`` (0 without ``z_proj``).
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        nll, rec = nll_loss(x, x_rec, perceptual, weights.perceptual_weight)
        zero = torch.zeros((), device=nll.device)
        kl = kl_loss(posterior) if posterior is not None else zero
        g_loss = generator_loss(logits_fake) if logits_fake is not None else zero
        vf, distmat, cos = zero, zero, zero
        if z_proj is not None:
            distmat, cos = vf_loss_parts(z_proj, teacher_feat, weights.distmat_margin, weights.cos_margin)
            vf = distmat * weights.distmat_weight + cos * weights.cos_weight
    return {"nll": nll, "rec": rec, "kl": kl, "g_loss": g_loss, "vf": vf, "vf_distmat": distmat, "vf_cos": cos}


def discriminator_objective(logits_real: Tensor, logits_fake: Tensor) -> dict[str, Tensor]:
    """Discriminator hinge loss.

    Args:
        logits_real: D(x) for real images (B, 1, h', w').
        logits_fake: D(x_rec.detach()) (B, 1, h', w'). Run D on real and fake in two separate calls,
            as the reference: in train mode BatchNorm normalises with each call's own batch statistics.

    Returns:
        float32: ``total`` (with graph) and the detached means ``logits_real``, ``logits_fake``.
    """
    with torch.autocast(device_type=logits_real.device.type, enabled=False):
        total = hinge_d_loss(logits_real, logits_fake)
    return {
        "total": total,
        "logits_real": logits_real.detach().float().mean(),
        "logits_fake": logits_fake.detach().float().mean(),
    }
