"""Config sections of the LDM KL-VAE (``kl``) and VA-VAE (``vavae``) families (LightningDiT ``vavae/``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aetune.config import bounds, choices, register_schema
from aetune.nn.options import DiscriminatorConfig


@dataclass
class TeacherConfig:
    """The frozen vision foundation model the VA-VAE latents are aligned to."""

    name: str = "vit_large_patch14_dinov2.lvd142m"  # the released VA-VAE's teacher (timm name)
    pretrained: bool = True  # False = random teacher: only by explicit choice (demo preset), and outputs say so
    normalize: str = field(default="none", metadata=choices("none", "imagenet"))  # "none": as released (raw [-1, 1])
    weights_path: str | None = None  # local teacher weights (offline Kaggle); None = timm/HF cache
    cache: bool = True  # features of un-augmented images computed once (aetune/data/feature_cache.py); off with hflip


@dataclass
class KLLossConfig:
    """Weights of the LDM KL-VAE objective (LightningDiT vavae/ defaults unless noted)."""

    kl_weight: float = field(default=1e-6, metadata=bounds(0.0))  # released value: KL only keeps latents bounded
    perceptual_weight: float = field(default=1.0, metadata=bounds(0.0))  # LPIPS-VGG inside the nll, released value
    lpips_pretrained: bool = True  # False = no trustworthy LPIPS: only by explicit choice, and outputs say so
    disc_weight: float = field(default=0.5, metadata=bounds(0.0))  # released value, times the adaptive weight
    disc_start: int = field(default=0, metadata=bounds(0, allow=(-1,)))  # batches before GAN + D updates; -1 = no GAN
    split_backward: bool = True  # same gradients, one decoder/LPIPS backward fewer (aetune/losses/split.py)


@dataclass
class VAVAELossConfig(KLLossConfig):
    """The KL-VAE objective plus the VF alignment loss to the frozen teacher."""

    vf_weight: float = field(default=0.1, metadata=bounds(0.0))  # alignment weight; seed stage 1 uses 0.5
    vf_adaptive: bool = True  # released: scale VF by the grad-norm ratio at encoder.conv_out
    distmat_margin: float = field(default=0.0, metadata=bounds(0.0, 2.0))  # seed stage 3: 0.25
    cos_margin: float = field(default=0.0, metadata=bounds(0.0, 2.0))  # seed stage 3: 0.5
    distmat_weight: float = field(default=1.0, metadata=bounds(0.0))  # released value
    cos_weight: float = field(default=1.0, metadata=bounds(0.0))  # released value


_TINY_MODEL = {"ch": 32, "ch_mult": [1, 1, 2], "num_res_blocks": 1, "attn_resolutions": [8], "resolution": 32}
_TINY_LOSS = {"perceptual_weight": 0.0, "lpips_pretrained": False, "disc_start": 0}
# Full-size parameter counts: encoder 28,413,248 + decoder 41,417,603 + quant_conv 4,160 + post_quant_conv 1,056
# (+ linear_proj 32,768 for vavae); PatchGAN (ndf 64, 3 layers) 2,765,633. The encoder and decoder counts match
# shared/fixtures/vavae_f16d32_keys.json, i.e. the released checkpoint; tests/test_disk_budget.py checks them.
register_schema(
    "kl",
    "kl",
    full_size=(69_836_067, 2_765_633),
    tiny={"model": {"args": _TINY_MODEL}, "discriminator": {"ndf": 8, "n_layers": 2}, "loss": _TINY_LOSS},
    loss=KLLossConfig,
    discriminator=DiscriminatorConfig,
)
register_schema(
    "vavae",
    "vavae",
    released=("vavae", "vavae_latents_stats"),
    full_size=(69_868_835, 2_765_633),
    tiny={
        "model": {"args": {**_TINY_MODEL, "align_dim": 64}},
        "teacher": {"name": "test_vit", "pretrained": False},
        "discriminator": {"ndf": 8, "n_layers": 2},
        "loss": _TINY_LOSS,
    },
    loss=VAVAELossConfig,
    teacher=TeacherConfig,
    discriminator=DiscriminatorConfig,
)
