"""KL term of the KL autoencoders."""

from __future__ import annotations

from torch import Tensor

from aetune.models.outputs import DiagonalGaussian


def kl_loss(posterior: DiagonalGaussian) -> Tensor:
    """KL(q(z|x) || N(0, I)) summed over C, H, W, averaged over the batch: a float32 scalar.

    As LightningDiT (``torch.sum(kl) / B``); it is weighted by ``kl_weight`` (1e-6 in the released
    model), so it only keeps the latents bounded.
    """
    kl = posterior.kl()  # (B,)
    return kl.sum() / kl.shape[0]
