"""Config sections of the ``hypir`` family (torch-free).

``--task restoration`` (presets ``hypir``, ``hypir_demo``) replaces the loss section by the task's and keeps the
discriminator section. The family's own recipe (``--task reconstruction``) trains HYPIR's released objective,
``configs/sd2_train.yaml`` of XPixelGroup/HYPIR: 1 MSE + 5 LPIPS + 0.5 GAN.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aetune.config import Config, bounds, register_schema
from aetune.families.hypir.weights import SD2_FILES, sd2_weight_name
from aetune.nn.options import DiscriminatorConfig

FAMILY = "hypir"


@dataclass
class HypirLossConfig:
    """Weights of HYPIR's objective (every term a batch mean on [-1, 1] images; the GAN weight is fixed)."""

    l2_weight: float = field(default=1.0, metadata=bounds(0.0))  # HYPIR sd2_train.yaml: lambda_l2 1
    lpips_weight: float = field(default=5.0, metadata=bounds(0.0))  # lambda_lpips 5
    gan_weight: float = field(default=0.5, metadata=bounds(0.0))  # lambda_gan 0.5
    disc_start: int = field(default=0, metadata=bounds(0, allow=(-1,)))  # batches before GAN + D updates; -1 = no GAN
    lpips_pretrained: bool = True  # False = no trustworthy LPIPS (demo, tests): only by explicit choice


def sd2_parts_needed(cfg: Config) -> list[str]:
    """Step 2's SD2.1-base entries a run builds its frozen parts from: none for the random demo parts."""
    if cfg.model.args.get("tiny_random", False):
        return []
    return [sd2_weight_name(part) for part in SD2_FILES]


register_schema(
    FAMILY,
    FAMILY,
    needs=sd2_parts_needed,
    tiny={
        "model": {"args": {"tiny_random": True, "lora_rank": 4}, "gradient_checkpointing": True},
        "discriminator": {"ndf": 8, "n_layers": 2},
        "loss": {"lpips_weight": 0.0, "lpips_pretrained": False, "disc_start": 0},
    },
    loss=HypirLossConfig,
    discriminator=DiscriminatorConfig,
)
