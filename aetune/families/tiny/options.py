"""Config sections of the tiny autoencoders ``taesd`` (images) and ``taehv`` (video), distilled from a teacher.

Loss weights are the seed's finding for tiny decoders (reconstruction 10, LPIPS 0.1, adversarial 0.1,
encoder and decoder distillation 0.1; PSNR > 25 dB by batch 1,000 is the health bar): with a lower
adversarial weight self-trained decoders come out blurry (madebyollin/taesd issue 19), with a higher one
the reconstruction stalls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aetune.config import bounds, choices, register_schema
from aetune.nn.options import DiscriminatorConfig


@dataclass
class TinyLossConfig:
    """Weights of the tiny-autoencoder objective (every term a mean, so the weights compare directly)."""

    rec_weight: float = field(default=10.0, metadata=bounds(0.0))  # the seed: 10
    rec_kind: str = field(default="l1", metadata=choices("l1", "l2"))  # per-pixel |x - y| or (x - y)^2
    perceptual_weight: float = field(default=0.1, metadata=bounds(0.0))  # LPIPS-VGG, the seed: 0.1
    lpips_pretrained: bool = True  # False = no trustworthy LPIPS: only by explicit choice, and outputs say so
    adv_weight: float = field(default=0.1, metadata=bounds(0.0))  # fixed (not adaptive) GAN weight, the seed: 0.1
    disc_start: int = field(default=0, metadata=bounds(0, allow=(-1,)))  # batches before GAN + D updates; -1 = no GAN
    enc_distill_weight: float = field(default=0.1, metadata=bounds(0.0))  # MSE of the latents to the teacher's
    dec_distill_weight: float = field(default=0.1, metadata=bounds(0.0))  # MSE of the output to the teacher's decode


@dataclass
class DistillConfig:
    """The frozen teacher autoencoder whose latent space the tiny one learns; none = train from pixels alone."""

    teacher: str | None = None  # an aetune model file (*_final.pt or a stage checkpoint) of any registered family
    latent_stats: str | None = None  # the teacher's latents_stats.pt (step 5): latents (z - mean) / std per channel
    latent_scale: float = field(default=1.0, metadata=bounds(0.0))  # without latent_stats: z * scale (SD: 0.18215)
    latent_shift: float = 0.0  # without latent_stats: subtracted before scaling
    cache: bool = True  # the teacher's latents of the training images from the frozen-feature cache (images only)
    latents: str = field(default="sample", metadata=choices("sample", "mode"))  # of the teacher's posterior: the
    # reference notebooks sample it (a teacher without a posterior gives its latents either way)


@dataclass
class TinyDiscriminatorConfig(DiscriminatorConfig):
    """The adversarial critic: Seraena's latent-conditioned one (the references'), or the unconditional PatchGAN."""

    kind: str = field(default="seraena", metadata=choices("seraena", "patchgan"))  # patchgan: ndf and n_layers
    buffer: int = field(default=128, metadata=bounds(1, 16384))  # seraena: fakes replayed (reference 16384, in RAM;
    # here they are checkpointed: 128 at 256 px is ~50 MB of float16 per checkpoint)
    frames: int = field(default=3, metadata=bounds(1, 64))  # seraena, taehv: frames per discriminator input


@dataclass
class ClipConfig:
    """Video clips step 4 trains on (``taehv``): frames per clip, temporal subsampling and, for training clips only
    (validation stays fixed), the TAEHV notebook's random frame delta and random resized crops
    (``aetune.data.kinds.video.RandomClips``)."""

    frames: int = field(default=12, metadata=bounds(1, 256))  # the seed: 12 frames (TAEHV notebook: 12)
    stride: int = field(default=1, metadata=bounds(1, 64))  # keep every stride-th frame of a video
    max_delta: int = field(default=1, metadata=bounds(1, 64))  # training: every d-th (strided) frame, d uniform in
    # 1..max_delta per clip (TAEHV notebook: 5); 1 = consecutive frames
    crop: bool = False  # training: one random square crop per clip, side uniform in [image_size, short side],
    # resized to image_size (TAEHV notebook); off = whole frames squashed to squares
    crop_source: int = field(default=256, metadata=bounds(16, 4096))  # crops: short side of the cached frames they
    # are cut from (aspect kept, never upscaled); the notebook cuts from native frames (a 720p frame is 2.7 MB raw)


_TINY_LOSS = {"perceptual_weight": 0.0, "lpips_pretrained": False, "disc_start": 0}
register_schema(
    "taesd",
    "taesd",
    tiny={"model": {"args": {"width": 8}}, "discriminator": {"ndf": 8, "n_layers": 2}, "loss": _TINY_LOSS},
    loss=TinyLossConfig,
    distill=DistillConfig,
    discriminator=TinyDiscriminatorConfig,
)
register_schema(
    "taehv",
    "taehv",
    data_kind="video",
    tiny={
        "model": {"args": {"latent_channels": 4, "encoder_width": 8, "decoder_widths": [16, 8, 8, 8]}},
        "discriminator": {"ndf": 8, "n_layers": 2},
        "loss": _TINY_LOSS,
        "clip": {"frames": 5},
    },
    loss=TinyLossConfig,
    distill=DistillConfig,
    discriminator=TinyDiscriminatorConfig,
    clip=ClipConfig,
)
