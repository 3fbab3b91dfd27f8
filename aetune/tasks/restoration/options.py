"""Config sections of the paired restoration task (LQ -> GT), usable with every 2-D family.

Torch-free. The task replaces the family's loss (and teacher) sections by these; the family's architecture
(``model.family``, ``model.args``) is unchanged. ``restoration_schema`` composes them with a family's schema:
the config loader uses it when ``--task restoration`` is asked (see docs/restoration.md, "Wiring").

Presets ``restoration`` (the HYPIR fork's ``sd2_finetune_5k.yaml``), ``restoration_improved`` (its
``sd2_finetune_5k_improved.yaml``) and ``restoration_demo`` select the task with ``model.task``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from aetune.config import FamilySchema, bounds, register_task
from aetune.nn.options import DiscriminatorConfig

TASK = "restoration"
DATA_KIND = "pair"


@dataclass
class RestorationLossConfig:
    """Weights of the restoration objective (``aetune.tasks.restoration.losses``); defaults: ``sd2_finetune_5k``."""

    l1_weight: float = field(default=1.0, metadata=bounds(0.0))  # fork: lambda_l1 1 ("better pixel supervision")
    l2_weight: float = field(default=1.0, metadata=bounds(0.0))  # fork: lambda_l2 1 (HYPIR's MSE term)
    lpips_weight: float = field(default=5.0, metadata=bounds(0.0))  # fork: lambda_lpips 5 (HYPIR)
    ssim_weight: float = field(default=0.0, metadata=bounds(0.0))  # fork: 0; "improved" 1 (a real gradient here)
    gan_weight: float = field(default=0.5, metadata=bounds(0.0))  # fork: lambda_gan 0.5, a fixed weight
    disc_start: int = field(default=0, metadata=bounds(0, allow=(-1,)))  # batches before GAN + D updates; -1 = no GAN
    lpips_pretrained: bool = True  # False = no trustworthy LPIPS (demo, tests): only by explicit choice


@dataclass
class RestorationValConfig:
    """How restoration validation measures (``aetune.tasks.restoration.metrics``)."""

    crop_border: int = field(default=0, metadata=bounds(0, 64))  # pixels cut per side before PSNR/SSIM (SR: scale)


def restoration_schema(base: FamilySchema) -> FamilySchema:
    """``base`` (a 2-D family's schema) with the task's sections and data kind in place of its own.

    Kept from the family: its name and its non-loss sections other than ``teacher`` (e.g. a discriminator
    section); replaced: ``loss``; added: ``discriminator`` (PatchGAN) when the family has none, ``restoration``.
    """
    sections = {k: v for k, v in base.sections.items() if k not in ("loss", "teacher")}
    sections.setdefault("discriminator", DiscriminatorConfig)
    sections |= {"loss": RestorationLossConfig, TASK: RestorationValConfig}
    tiny = {k: v for k, v in base.tiny.items() if k not in ("loss", "teacher")}
    tiny["loss"] = {"lpips_weight": 0.0, "lpips_pretrained": False, "ssim_weight": 1.0, "disc_start": 0}
    return replace(base, sections=sections, data_kind=DATA_KIND, default_preset=TASK, tiny=tiny)


register_task(TASK, restoration_schema)
