"""Config sections of the 3-D KL autoencoder (``kl3d``): MONAI's AutoencoderKL objective (torch-free module).

Numbers: MONAI's 3-D latent diffusion notebook's first stage (kl 1e-6, perceptual 0.001 at slice ratio 0.2,
adversarial 0.01 least squares, the D loss times the adversarial weight, BATCH norm in D) unless noted; the
3-D AutoencoderKL notebook's numbers are the preset ``kl3d_ae_notebook``. ``../shared/FAMILIES.md`` and
``docs/kl3d.md`` have the sources.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aetune.config import bounds, choices, register_schema


@dataclass
class KL3DLossConfig:
    """Weights of the kl3d objective: L1 + kl * KL + perceptual * fake-3-D LPIPS + adversarial * patch GAN."""

    l1_weight: float = field(default=1.0, metadata=bounds(0.0))  # voxel L1 (both MONAI notebooks)
    kl_weight: float = field(default=1e-6, metadata=bounds(0.0))  # LDM notebook; AE notebook 1e-8, LDM script 1e-7
    perceptual_weight: float = field(default=0.001, metadata=bounds(0.0))  # LDM notebook and script; AE notebook 1.0
    perceptual_pretrained: bool = True  # False = random SqueezeNet trunk: only by explicit choice (demo, tests)
    fake_3d_ratio: float = field(default=0.2, metadata=bounds(0.0, 1.0))  # slices per axis LPIPS sees (LDM; AE: 0.25)
    adversarial_weight: float = field(default=0.01, metadata=bounds(0.0))  # LDM notebook and script; AE notebook 0.02
    adversarial_criterion: str = field(
        default="least_squares", metadata=choices("least_squares", "hinge", "bce")
    )  # MONAI PatchAdversarialLoss criterion (every MONAI 3-D recipe: least squares)
    d_loss_weighted: bool = True  # D loss times adversarial_weight, as both notebooks (with Adam: nearly no effect)
    disc_start: int = field(default=0, metadata=bounds(0, allow=(-1,)))  # batches before GAN + D updates; -1 = none


@dataclass
class KL3DDiscriminatorConfig:
    """MONAI ``PatchDiscriminator(spatial_dims=3)``: the seed's 24 GB recipe uses 2 layers of 16 channels."""

    num_layers_d: int = field(default=3, metadata=bounds(1, 6))  # both MONAI notebooks; seed 24 GB: 2
    channels: int = field(default=32, metadata=bounds(1, 512))  # first-layer width (both notebooks); seed 24 GB: 16
    # BATCH: both notebooks (MONAI's default). INSTANCE: the LDM script; per-volume statistics, so under DDP it
    # needs no synchronisation, while BATCH statistics are each rank's own.
    norm: str = field(default="BATCH", metadata=choices("INSTANCE", "BATCH"))


register_schema(
    "kl3d",
    "kl3d",
    data_kind="volume",
    tiny={
        "model": {
            "args": {
                "channels": [8, 16],
                "latent_channels": 2,
                "attention_levels": [False, False],
                "norm_num_groups": 4,
                "with_encoder_nonlocal_attn": False,
                "with_decoder_nonlocal_attn": False,
            }
        },
        "loss": {"perceptual_weight": 0.1, "perceptual_pretrained": False, "disc_start": 0},
        "discriminator": {"num_layers_d": 2, "channels": 8},
        "train": {"health_min_psnr": None},
    },
    loss=KL3DLossConfig,
    discriminator=KL3DDiscriminatorConfig,
)
