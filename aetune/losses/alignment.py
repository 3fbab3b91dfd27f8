"""VF (vision foundation) alignment loss of VA-VAE (Yao et al. 2025, eqs. 2-4; LightningDiT's ``vf_loss``).

Both terms compare the projected latent z' = linear_proj(z) with the teacher's patch features f at each of
the h*w positions, cosines taken over channels:
- distance-matrix term: mean over (i, j) of relu(|cos(z'_i, z'_j) - cos(f_i, f_j)| - m_d), i.e. the latent
  keeps the teacher's relational structure;
- cosine term: mean over i of relu(1 - m_c - cos(z'_i, f_i)), i.e. each position points where the teacher's
  does. The margins m_d, m_c stop pulling once the terms are close enough.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

VF_MAX_WEIGHT = 1e8
"""Clamp of the adaptive VF weight (LightningDiT)."""


def vf_loss_parts(z_proj: Tensor, feat: Tensor, distmat_margin: float, cos_margin: float) -> tuple[Tensor, Tensor]:
    """The two VF terms, float32.

    Args:
        z_proj: (B, D, h, w) projected latents.
        feat: (B, D, h, w) teacher features (no gradient needed).
        distmat_margin: m_d >= 0.
        cos_margin: m_c >= 0.

    Returns:
        (distance-matrix term, cosine term), 0-dim tensors.
    """
    if z_proj.shape != feat.shape:
        raise ValueError(
            f"projected latents {tuple(z_proj.shape)} and teacher features {tuple(feat.shape)} differ: the "
            "projection width (align_dim) must equal the teacher's embed_dim and the grids must match"
        )
    z, f = z_proj.float(), feat.float()
    zn = F.normalize(z.flatten(2), dim=1)  # (B, D, h, w) -> (B, D, hw), unit over channels
    fn = F.normalize(f.flatten(2), dim=1)
    z_sim = torch.einsum("bci,bcj->bij", zn, zn)  # (B, hw, hw)
    f_sim = torch.einsum("bci,bcj->bij", fn, fn)
    distmat = F.relu(torch.abs(z_sim - f_sim) - distmat_margin).mean()
    cos = F.relu(1.0 - cos_margin - F.cosine_similarity(f, z, dim=1)).mean()  # over (B, h, w)
    return distmat, cos


def vf_loss(
    z_proj: Tensor, feat: Tensor, distmat_margin: float, cos_margin: float, distmat_weight: float, cos_weight: float
) -> Tensor:
    """``distmat_weight * distance-matrix term + cos_weight * cosine term`` (see ``vf_loss_parts``)."""
    distmat, cos = vf_loss_parts(z_proj, feat, distmat_margin, cos_margin)
    return distmat * distmat_weight + cos * cos_weight
