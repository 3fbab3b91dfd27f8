"""Config sections of ``rae`` (Representation Autoencoder, bytetriper/RAE stage 1: decoder training)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aetune.config import Config, bounds, register_schema
from aetune.families.rae.weights import DEFAULT_ENCODER, DISCRIMINATOR_WEIGHT, ENCODER_WEIGHTS


@dataclass
class RAEEncoderConfig:
    """Where the frozen encoder's released weights come from (``model.args.encoder`` picks which encoder)."""

    pretrained: bool = True  # False = random encoder: only by explicit choice (demo preset), and outputs say so
    weights_path: str | None = None  # encoder file; None: step 4 sets step 2's, else the Hugging Face cache
    cache_tokens: bool = True  # tokens of the training images from the shared on-disk feature cache (whole images)

    def step2_weight(self, cfg: Config) -> str | None:
        """The step 2 entry of the encoder ``model.args.encoder`` names (``aetune.setup.hub`` attaches it)."""
        return ENCODER_WEIGHTS.get(cfg.model.args.get("encoder", DEFAULT_ENCODER))


@dataclass
class RAEAugmentConfig:
    """What the decoder trains on (the reference: resize to 384 bicubic, random crop 256)."""

    random_crop: bool = False  # True: a random window of the 1.5 x resize per step (needs encoder.cache_tokens false)


@dataclass
class RAEDiscriminatorConfig:
    """The DINO discriminator: frozen ViT-S/8 features + trained SN-Conv1d heads."""

    pretrained: bool = True  # DINO ViT-S/8 weights; False = random backbone (demo, tests), and outputs say so
    weights_path: str | None = None  # vit_small_patch8_224.dino file; None: step 4 sets step 2's, else the HF cache
    kernel_size: int = field(default=9, metadata=bounds(1, 63))  # residual head conv, released value
    tanh_gelu: bool = True  # the reference's tanh GELU in the DINO MLP; False: exact, as DINO was trained
    img_size: int = field(default=0, metadata=bounds(0, 1024))  # 0 = 224; smaller only for a random backbone
    depth: int = field(default=0, metadata=bounds(0, 12))  # 0 = 12 blocks; fewer only for a random backbone
    width: int = field(default=0, metadata=bounds(0, 1024))  # 0 = 384; smaller only for a random backbone
    heads: int = field(default=0, metadata=bounds(0, 16))  # 0 = 6; only for a random backbone

    def step2_weight(self, cfg: Config) -> str | None:
        """The step 2 entry of the DINO ViT-S/8 backbone (``aetune.setup.hub`` attaches it)."""
        return DISCRIMINATOR_WEIGHT


@dataclass
class RAELossConfig:
    """The released RAE decoder objective (configs/stage1 of bytetriper/RAE) unless noted."""

    perceptual_weight: float = field(default=1.0, metadata=bounds(0.0))  # LPIPS-VGG from the start, released
    lpips_pretrained: bool = True  # False = no trustworthy LPIPS: only by explicit choice, and outputs say so
    disc_weight: float = field(default=0.75, metadata=bounds(0.0))  # times the adaptive weight, released
    adaptive_eps: float = field(default=1e-6, metadata=bounds(0.0, 1.0))  # under ||grad G||: released 1e-6 (LDM 1e-4)
    disc_start: int = field(default=-1, metadata=bounds(0, allow=(-1,)))  # batches before D updates; -1 = never
    gan_start: int = field(default=-1, metadata=bounds(0, allow=(-1,)))  # batches before the GAN term; -1 = never
    token_noise: bool = True  # z + tau * u * n on the tokens in the generator phase (tau: model.args.noise_tau)
    diffaug_prob: float = field(default=1.0, metadata=bounds(0.0, 1.0))  # DiffAugment probability, released
    quantize_fakes: bool = True  # D sees reconstructions clamped and rounded to 8 bit, as real images
    fake_after_g_step: bool = True  # D's fake decoded by the decoder this batch's G step updated, as released;
    # False: by the decoder before that step (one step older), both optimizers stepping after the D phase


register_schema(
    "rae",
    "rae",
    tiny={
        "model": {
            "args": {
                "encoder_width": 64,
                "encoder_depth": 2,
                "encoder_heads": 2,
                "encoder_input_size": 56,
                "decoder_width": 64,
                "decoder_depth": 2,
                "decoder_heads": 2,
                "decoder_mlp": 128,
                "patch_size": 8,
            }
        },
        "encoder": {"pretrained": False, "cache_tokens": False},
        "augment": {"random_crop": True},  # the preset's path: crops drawn per batch must resume exactly
        "discriminator": {"pretrained": False, "img_size": 32, "depth": 3, "width": 32, "heads": 2},
        "loss": {"perceptual_weight": 0.0, "lpips_pretrained": False, "disc_start": 0, "gan_start": 0},
    },  # fmt: skip
    loss=RAELossConfig,
    encoder=RAEEncoderConfig,
    discriminator=RAEDiscriminatorConfig,
    augment=RAEAugmentConfig,
)
