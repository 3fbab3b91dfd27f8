"""Loss terms as pure functions (inputs in any dtype, outputs float32), and their composition."""

from aetune.losses.adaptive import adaptive_weight
from aetune.losses.adversarial import GAN_MAX_WEIGHT, generator_loss, hinge_d_loss
from aetune.losses.alignment import VF_MAX_WEIGHT, vf_loss, vf_loss_parts
from aetune.losses.kl import kl_loss
from aetune.losses.objective import ObjectiveWeights, discriminator_objective, generator_objective
from aetune.losses.reconstruction import FrozenLPIPS, build_lpips, nll_loss

__all__ = [
    "GAN_MAX_WEIGHT",
    "VF_MAX_WEIGHT",
    "FrozenLPIPS",
    "ObjectiveWeights",
    "adaptive_weight",
    "build_lpips",
    "discriminator_objective",
    "generator_loss",
    "generator_objective",
    "hinge_d_loss",
    "kl_loss",
    "nll_loss",
    "vf_loss",
    "vf_loss_parts",
]
