"""Adaptive loss weights: balance a term against the nll by their gradient norms at one layer.

VQGAN (Esser et al. 2021, eq. 7) weighs the GAN term by ||grad nll|| / ||grad g|| at the decoder's last
layer; VA-VAE (Yao et al. 2025, eq. 5) does the same for the alignment (VF) term at the encoder's last
layer, so that neither term's raw scale decides how much it pulls.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

EPS = 1e-4
"""LightningDiT's (taming's) epsilon under the term's gradient norm; the released RAE uses 1e-6."""


def adaptive_weight(
    nll: Tensor, term: Tensor, last_layer: nn.Parameter | None, max_weight: float, eps: float = EPS
) -> Tensor:
    """``clamp(||d nll / d W|| / (||d term / d W|| + eps), 0, max_weight)``, detached, float32.

    Args:
        nll: the reconstruction loss (scalar with a graph through ``last_layer``).
        term: the loss to balance (scalar with a graph through ``last_layer``).
        last_layer: the weight W at which the gradients are compared.
        max_weight: clamp (1e4 for the GAN term, 1e8 for VF, as LightningDiT).
        eps: added to the term's gradient norm (:data:`EPS`).

    Returns:
        A 0-dim float32 tensor; 0 when gradients are not being recorded (validation under
        ``torch.no_grad``), as the reference reports in validation.

    Raises:
        ValueError: gradients are recorded but ``last_layer`` is None or frozen.
    """
    if not torch.is_grad_enabled():
        return torch.zeros((), device=nll.device)
    if last_layer is None or not last_layer.requires_grad:
        what = "no layer" if last_layer is None else f"a frozen layer {tuple(last_layer.shape)}"
        raise ValueError(f"the adaptive weight compares gradients at {what}: give a trainable last layer")
    (g_nll,) = torch.autograd.grad(nll, last_layer, retain_graph=True)
    (g_term,) = torch.autograd.grad(term, last_layer, retain_graph=True)
    return grad_ratio(g_nll, g_term, max_weight, eps)


def grad_ratio(g_nll: Tensor, g_term: Tensor, max_weight: float, eps: float = EPS) -> Tensor:
    """``clamp(||g_nll|| / (||g_term|| + eps), 0, max_weight)`` of two gradients at one layer, detached float32."""
    weight = torch.norm(g_nll.float()) / (torch.norm(g_term.float()) + eps)
    return torch.clamp(weight, 0.0, max_weight).detach()
