"""Config sections of the 3-D KL autoencoder (``kl3d``): MONAI's AutoencoderKL objective (torch-free module).

Numbers: the MONAI 3-D AutoencoderKL tutorial (kl 1e-8, perceptual 1.0 at slice ratio 0.25, adversarial
0.02, least squares) unless noted; ``../shared/FAMILIES.md`` has the sources.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aetune.config import bounds, choices, register_schema


@dataclass
class KL3DLossConfig:
    """Weights of the kl3d objective: L1 + kl * KL + perceptual * fake-3-D LPIPS + adversarial * patch GAN."""

    l1_weight: float = field(default=1.0, metadata=bounds(0.0))  # voxel L1 (MONAI tutorial's reconstruction)
    kl_weight: float = field(default=1e-8, metadata=bounds(0.0))  # tutorial; MONAI's 3-D LDM uses 1e-7
    perceptual_weight: float = field(default=0.0, metadata=bounds(0.0))  # seed: off early (memory); tutorial 1.0
    perceptual_pretrained: bool = True  # False = random SqueezeNet trunk: only by explicit choice (demo, tests)
    fake_3d_ratio: float = field(default=0.25, metadata=bounds(0.0, 1.0))  # slices per axis the LPIPS sees (tutorial)
    adversarial_weight: float = field(default=0.02, metadata=bounds(0.0))  # tutorial; MONAI 3-D LDM 0.01
    adversarial_criterion: str = field(
        default="least_squares", metadata=choices("least_squares", "hinge", "bce")
    )  # MONAI PatchAdversarialLoss criterion (tutorial: least squares)
    disc_start: int = field(default=0, metadata=bounds(0, allow=(-1,)))  # batches before GAN + D updates; -1 = none


@dataclass
class KL3DDiscriminatorConfig:
    """MONAI ``PatchDiscriminator(spatial_dims=3)``: the seed's 24 GB recipe uses 2 layers of 16 channels."""

    num_layers_d: int = field(default=3, metadata=bounds(1, 6))  # MONAI tutorial; seed 24 GB: 2
    channels: int = field(default=32, metadata=bounds(1, 512))  # first-layer width (tutorial); seed 24 GB: 16
    norm: str = field(default="INSTANCE", metadata=choices("INSTANCE", "BATCH"))  # tutorial; INSTANCE needs no DDP sync


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
