"""Config sections of the paired restoration task (LQ -> GT), usable with every 2-D family.

Torch-free. The task replaces the family's loss (and teacher) sections by these; the family's architecture
(``model.family``, ``model.args``) is unchanged. ``restoration_schema`` composes them with a family's schema:
the config loader uses it when ``--task restoration`` is asked (see docs/restoration.md, "Wiring").

Presets ``restoration`` (the seed's recipe: the HYPIR fork's ``sd2_finetune_5k_improved.yaml``, loaded by
``--task restoration``), ``restoration_5k`` (its ``sd2_finetune_5k.yaml``) and ``restoration_demo`` select the task
with ``model.task``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from aetune.config import Config, FamilySchema, bounds, choices, register_task
from aetune.nn.options import DiscriminatorConfig
from aetune.tasks.restoration.weights import CLIP_MODEL, CLIP_WEIGHT

TASK = "restoration"
DATA_KIND = "pair"
CLIP_CONVNEXT, PATCHGAN = "clip_convnext", "patchgan"
"""``discriminator.kind``: the fork's frozen CLIP ConvNeXt with multi-level heads, or the PatchGAN (CPU, tests)."""


@dataclass
class RestorationLossConfig:
    """Weights of the restoration objective (``aetune.tasks.restoration.losses``); defaults: the seed's recipe.

    The seed trains with the fork's ``sd2_finetune_5k_improved.yaml`` (more pixel supervision, a weaker GAN than
    ``sd2_finetune_5k.yaml``'s 1 / 1 / 5 / 0 / 0.5: preset ``restoration_5k``).
    """

    l1_weight: float = field(default=2.0, metadata=bounds(0.0))  # improved: lambda_l1 2 (5k: 1)
    l2_weight: float = field(default=2.0, metadata=bounds(0.0))  # improved: lambda_l2 2, to raise PSNR (5k: 1)
    lpips_weight: float = field(default=3.0, metadata=bounds(0.0))  # improved: lambda_lpips 3 (5k and HYPIR: 5)
    ssim_weight: float = field(default=1.0, metadata=bounds(0.0))  # improved: 1 (a real gradient here; 5k: 0)
    gan_weight: float = field(default=0.3, metadata=bounds(0.0))  # improved: lambda_gan 0.3, fixed (5k: 0.5)
    disc_start: int = field(default=0, metadata=bounds(0, allow=(-1,)))  # batches before GAN + D updates; -1 = no GAN
    lpips_pretrained: bool = True  # False = no trustworthy LPIPS (demo, tests): only by explicit choice


@dataclass
class RestorationConfig:
    """How restoration pairs are augmented and validated (the data kind ``pair``, ``...restoration.metrics``).

    Pairs are resized to ``data.image_size`` with Pillow's bilinear filter (``aetune.data.kinds.pair``); the
    fork trains and validates at 512.
    """

    rot90: bool = False  # fork use_rot: random vertical flip + transpose of each pair (with data.hflip: 8 views)
    native_val: bool = False  # validate at the stored size, no resize (pairs of one size); fork: 512 x 512
    num_samples_per_type: int | None = field(default=None, metadata=bounds(1))  # first n val pairs per type; all
    crop_border: int = field(default=0, metadata=bounds(0, 64))  # pixels cut per side before PSNR/SSIM (SR: scale)


@dataclass
class RestorationDiscriminatorConfig(DiscriminatorConfig):
    """The task's discriminator (``aetune.tasks.restoration.discriminator``); ``ndf``, ``n_layers``: the PatchGAN's.

    ``clip_convnext`` (the fork's ``ImageConvNextDiscriminator``) needs ``open-clip-torch`` and the CLIP weights of
    step 2 (``--only clip_convnext_xxlarge``); ``patchgan`` needs neither (CPU demos, tests).
    """

    kind: str = field(default=CLIP_CONVNEXT, metadata=choices(CLIP_CONVNEXT, PATCHGAN))  # the fork's D
    clip_model: str = CLIP_MODEL  # an open_clip model name with a timm ConvNeXt tower (fork: convnext_xxlarge)
    pretrained: bool = True  # False: a random CLIP tower (tests only: a GAN against random features)
    weights_path: str | None = None  # the open_clip file; None: the one step 2 recorded (attached by step 4)
    trunk_dtype: str = field(default="auto", metadata=choices("auto", "bfloat16", "float16", "float32"))
    # auto: bfloat16 (the fork's) on GPUs with bf16 kernels (compute capability >= 8), float16 on older GPUs (T4),
    # float32 without CUDA; the heads always run in float32

    def step2_weight(self, cfg: Config) -> str | None:
        """The step 2 entry of the CLIP trunk when the run trains against it (``weights_registry.section_weight``:
        step 2 ``--config`` fetches it, step 4 sets ``weights_path`` to the recorded file); None otherwise."""
        gan = cfg.loss.gan_weight > 0 and cfg.loss.disc_start >= 0
        return CLIP_WEIGHT if gan and self.kind == CLIP_CONVNEXT and self.clip_model == CLIP_MODEL else None


def restoration_schema(base: FamilySchema) -> FamilySchema:
    """``base`` (a 2-D family's schema) with the task's sections and data kind in place of its own.

    Kept from the family: its name and its other sections; replaced: ``loss`` and ``discriminator`` (the task
    builds its own, whatever the family's is); dropped: ``teacher``; added: ``restoration``.
    """
    sections = {k: v for k, v in base.sections.items() if k not in ("loss", "teacher")}
    sections |= {
        "loss": RestorationLossConfig,
        "discriminator": RestorationDiscriminatorConfig,
        TASK: RestorationConfig,
    }
    tiny = {k: v for k, v in base.tiny.items() if k not in ("loss", "teacher", "discriminator")}
    tiny["discriminator"] = {"kind": PATCHGAN, "ndf": 8, "n_layers": 2}  # CPU-sized, no CLIP weights
    tiny["loss"] = {"lpips_weight": 0.0, "lpips_pretrained": False, "ssim_weight": 1.0, "disc_start": 0}
    tiny["train"] = {**base.tiny.get("train", {}), "monitor": "val/PSNR"}  # no LPIPS: no val/Final_Score
    return replace(base, sections=sections, data_kind=DATA_KIND, default_preset=TASK, tiny=tiny)


register_task(TASK, restoration_schema)
