"""The generator objective's backward with one decoder (and LPIPS) backward fewer, gradients unchanged.

The reference composition (``generator_objective``) computes each adaptive weight with two ``autograd.grad``
calls and then backpropagates the total: with the GAN off and the VF weight adaptive (the seed's stage 1),
``d nll / d encoder.conv_out.weight`` runs LPIPS and the whole decoder backward, and the total backward runs
them again. Here the graph is cut (:class:`Cut`: the tensor detached into a leaf that the rest of the forward
uses) at the decoder's input ``z`` (GAN off) or at its output ``x_rec`` (GAN on), and the step makes two
backward calls whose graphs do not overlap (the module's calls free their graph):

1. ``nll`` (+ a zero probe): LPIPS and, with the cut at ``z``, the decoder, once. The gradient gathered at the
   cut gives the nll's gradient at the weight layers by cheap ``autograd.grad`` calls from the cut down
   (``encoder.conv_out`` is three small layers below ``z``; ``decoder.conv_out`` is one below ``x_rec``).
2. ``kl_weight kl + d_weight g_loss + vf_weight vf`` plus a surrogate that carries the cut's gradient on
   (value 0, gradient at the cut's source = what was gathered): the rest of the network, once.

Backward passes per generator step:

    phase                      reference                       split
    GAN off, VF adaptive       LPIPS 2, decoder 2, encoder 1   LPIPS 1, decoder 1, encoder 1
    GAN on, VF adaptive        LPIPS 3, decoder 2, encoder 1,  LPIPS 1, decoder 2, encoder 1,
                               discriminator 2                 discriminator 1
    GAN on, no adaptive VF     LPIPS 2, decoder 1, encoder 1,  LPIPS 1, decoder 1, encoder 1,
                               discriminator 2                 discriminator 1

With the GAN on and the VF weight adaptive the decoder still runs backward twice: the VF weight needs the
nll's gradient alone at ``encoder.conv_out``, and the GAN term's gradient must pass the decoder too; one pass
could carry both only as a batched vector-Jacobian product (two cotangents), which costs what two passes cost.
(An ``autograd.grad`` of the nll alone through the decoder, as the reference's, is the first of the two.)

Each call goes through the training module's ``backward`` (checked, divided by the accumulation count, scaled
by the fp16 loss scale): the probe's gradient is that factor, so the gradient read at the cut is unscaled
exactly. The cut is a fresh leaf every batch and the weight-layer gradients come from ``autograd.grad``, so
gradients accumulated in ``.grad`` over an accumulation window never enter the adaptive weights.

Under fp16 the gradient gathered at the cut is the loss-scaled one, and at the scaler's start scale (65536) it
overflows. Then the adaptive weights of that batch are taken as 0 (never NaN), and the overflow is carried on
to the parameters, so the loss scaler sees it, skips the step and backs off, exactly as after the reference's
single backward of the total, which overflows in the same place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from aetune.losses.adaptive import grad_ratio
from aetune.losses.adversarial import GAN_MAX_WEIGHT
from aetune.losses.alignment import VF_MAX_WEIGHT
from aetune.losses.objective import ObjectiveWeights

Backward = Callable[[Tensor], None]


@dataclass
class Cut:
    """A tensor of the forward, detached: ``leaf`` (what the rest of the forward used) and ``source`` (with the
    graph above). Backward calls stop at ``leaf``; ``leaf.grad`` holds what they gathered, carried into ``source``.
    """

    source: Tensor
    leaf: Tensor

    @classmethod
    def of(cls, source: Tensor) -> Cut:
        """Cut ``source``: the rest of the forward must use ``.leaf``."""
        return cls(source, source.detach().requires_grad_(True))

    def carry(self, grad: Tensor) -> Tensor:
        """A surrogate loss whose gradient at ``source`` is ``grad`` (float32 0-dim, value 0)."""
        return _Carry.apply(self.source, grad)


class _Carry(torch.autograd.Function):
    """Value 0, gradient ``grad`` at ``source``: an fp16 overflow in ``grad`` reaches the parameters (the loss
    scaler then skips the step, as it would after the reference backward) instead of making the loss non-finite
    (which the training module would count as a bad batch)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, source: Tensor, grad: Tensor) -> Tensor:
        ctx.save_for_backward(grad)
        ctx.dtype = source.dtype  # type: ignore[attr-defined]
        return torch.zeros((), device=source.device)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, out: Tensor) -> tuple[Tensor, None]:
        (grad,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return (grad.float() * out).to(ctx.dtype), None  # type: ignore[attr-defined]


@dataclass
class SplitObjective:
    """What :func:`split_backward` needs from the generator step.

    Attributes:
        terms: ``generator_terms`` output (``nll``, ``kl``, ``g_loss``, ``vf`` with graphs), computed from the cut's
            leaf where the cut is ``x_rec`` (LPIPS and the discriminator ran on it).
        weights: the loss weights.
        cut: at ``z`` (GAN off: the decoder ran on its leaf) or ``x_rec`` (GAN on).
        at_output: the cut is ``x_rec`` (GAN on).
        align_layer: ``encoder.conv_out.weight`` when the VF weight is adaptive, else None.
        gan_layer: ``decoder.conv_out.weight`` (used with the GAN on).
        logs: ``d_weight``, ``vf_weight`` and ``total`` (0-dim tensors logged after the backward): filled in place
            by :func:`split_backward`, the only time the adaptive weights are known.
    """

    terms: dict[str, Tensor]
    weights: ObjectiveWeights
    cut: Cut
    at_output: bool
    align_layer: nn.Parameter | None
    gan_layer: nn.Parameter
    logs: dict[str, Tensor] = field(default_factory=dict)


def _vjp(cut: Cut, grad: Tensor, layer: nn.Parameter) -> Tensor:
    """The gradient at ``layer`` of a loss whose gradient at ``cut.source`` is ``grad`` (graph kept)."""
    (g,) = torch.autograd.grad(cut.source, layer, grad_outputs=grad.to(cut.source.dtype), retain_graph=True)
    return g


def split_backward(obj: SplitObjective, backward: Backward) -> None:
    """Backpropagate ``nll + kl_weight kl + d_weight g_loss + vf_weight vf`` through ``backward`` in two calls.

    Leaves in every parameter's ``.grad`` what one ``backward(total)`` of ``generator_objective``'s total leaves
    (equal to float32 rounding; ``tests/test_one_backward.py``). Stops after the first call when ``backward``
    did not run it (no gradient reached the cut).
    """
    t, w, cut = obj.terms, obj.weights, obj.cut
    probe = torch.zeros((), device=t["nll"].device, requires_grad=True)
    backward(t["nll"] + probe)  # LPIPS (and, cut at z, the decoder): the only time
    if probe.grad is None or cut.leaf.grad is None:
        return
    scale = probe.grad.detach()  # what the module multiplied the loss by: 1 / accumulation x loss scale
    nll_at_cut = cut.leaf.grad.detach().float() / scale
    finite = torch.isfinite(nll_at_cut).all()  # False: an fp16 overflow (kept on the device: no host sync)
    zero = torch.zeros((), device=scale.device)
    at_cut = nll_at_cut
    d_weight = zero
    if obj.at_output:
        (gan_at_cut,) = torch.autograd.grad(t["g_loss"], cut.leaf, retain_graph=True)  # the discriminator: once
        g_nll, g_gan = _vjp(cut, nll_at_cut, obj.gan_layer), _vjp(cut, gan_at_cut, obj.gan_layer)
        d_weight = torch.where(finite, grad_ratio(g_nll, g_gan, GAN_MAX_WEIGHT) * w.disc_weight, zero)
        at_cut = nll_at_cut + d_weight * gan_at_cut.float()
    vf_weight = torch.tensor(w.vf_weight, device=scale.device)
    if obj.align_layer is not None:
        g_nll = _vjp(cut, nll_at_cut, obj.align_layer)  # cut at x_rec: the decoder, the second of two passes
        (g_vf,) = torch.autograd.grad(t["vf"], obj.align_layer, retain_graph=True)
        vf_weight = torch.where(finite, grad_ratio(g_nll, g_vf, VF_MAX_WEIGHT) * w.vf_weight, zero)
    backward(w.kl_weight * t["kl"] + vf_weight * t["vf"] + cut.carry(at_cut))  # the rest: once
    total = t["nll"] + w.kl_weight * t["kl"] + d_weight * t["g_loss"] + vf_weight * t["vf"]
    for name, value in (("d_weight", d_weight), ("vf_weight", vf_weight), ("total", total)):
        if name in obj.logs:
            obj.logs[name].copy_(value.detach())
