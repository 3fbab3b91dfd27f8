"""The HYPIR generator: frozen SD2 VAE encoder -> LoRA-tuned SD2 UNet, one denoising step -> frozen SD2 VAE decoder.

XPixelGroup/HYPIR ``trainer/sd2.py``::

    z_in = vae.encode(LQ).latent_dist.sample() * scaling_factor
    eps  = unet(z_in, t=model_t, encoder_hidden_states=text_embed)
    z    = DDPMScheduler.step(eps, coeff_t, z_in).pred_original_sample
    x    = vae.decode(z / scaling_factor)

Here ``encode`` is the first line (its posterior already in the scaled latent space) and ``decode`` the rest, so
``--task restoration`` trains it as any 2-D family (``decode(encode(LQ))`` against GT). Only the LoRA weights train;
they alone are the model's state dict (checkpoints, EMA and ``*_final.pt`` hold them, the frozen SD2 parts are
rebuilt from their own files), and step 5 exports them as HYPIR's ``state_dict.pth`` (``export.py``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import torch
from peft import LoraConfig
from torch import Tensor, nn

from aetune.families.hypir.options import FAMILY
from aetune.families.hypir.parts import build_parts, empty_prompt_ids
from aetune.families.hypir.weights import SD2_REPO
from aetune.models import DecoderOutput, DiagonalGaussian, EncoderOutput
from aetune.models.base import Autoencoder, FamilyConfig, ModelConfigError
from aetune.models.registry import register_family

LORA_MODULES = (
    "to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_shortcut", "conv_out", "proj_in", "proj_out",
    "ff.net.2", "ff.net.0.proj",
)  # fmt: skip
"""HYPIR's ``lora_modules`` (``configs/sd2_train.yaml``): every attention, convolution and feed-forward layer."""
BASE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass
class HypirConfig(FamilyConfig):
    """Options of the HYPIR generator (defaults: HYPIR's ``configs/sd2_train.yaml``)."""

    base_model: str = SD2_REPO  # the only base HYPIR's SD2 trainer takes; recorded in the export
    sd2_dir: str = ""  # SD2.1-base: step 2's folder (step 4 sets it when step 2 recorded the three files there),
    # a bundle or a diffusers snapshot; "": the HF cache
    tiny_random: bool = False  # a tiny RANDOM UNet / VAE / text encoder (CPU demo, tests): restores nothing
    model_t: int = 200  # the UNet's timestep input
    coeff_t: int = 200  # the timestep whose noise level the one step removes
    lora_rank: int = 256  # LoRA rank, alpha = rank (scale 1), as HYPIR
    lora_modules: tuple[str, ...] = LORA_MODULES
    base_dtype: str = "float32"  # storage of the frozen parts ("bfloat16": HYPIR's weight_dtype); LoRA stays float32

    def validate(self) -> None:
        if self.base_model != SD2_REPO:
            raise ModelConfigError(f"hypir base_model must be {SD2_REPO} (HYPIR's SD2 trainer), got {self.base_model}")
        for key in ("model_t", "coeff_t"):
            if not 0 <= getattr(self, key) < 1000:
                raise ModelConfigError(f"hypir {key} = {getattr(self, key)} is outside the schedule's 0 .. 999")
        if self.lora_rank < 1:
            raise ModelConfigError(f"hypir lora_rank must be >= 1, got {self.lora_rank}")
        if not self.lora_modules:
            raise ModelConfigError("hypir lora_modules is empty: name the UNet layers the LoRA adapts")
        if self.base_dtype not in BASE_DTYPES:
            raise ModelConfigError(f"hypir base_dtype must be one of {', '.join(BASE_DTYPES)}, got {self.base_dtype}")


@register_family(
    FAMILY,
    HypirConfig,
    "HYPIR: one-step SD2.1 UNet + LoRA restorer between the frozen SD2 VAE's encoder and decoder",
    tiny={"tiny_random": True, "lora_rank": 4},
)
class HypirGenerator(Autoencoder):
    """LQ images (B, 3, H, W) in [-1, 1] -> restored images (B, 3, H, W), nominally [-1, 1].

    ``H`` and ``W`` must be multiples of ``downsample_factor`` times the UNet's own factor (64 for SD2: 512 px fits).
    """

    encoder_modules = ("vae",)
    """What step 5's DiT encoder export holds: the frozen SD2 VAE (its encoder gives the latents)."""

    def __init__(self, config: HypirConfig) -> None:
        super().__init__(config)
        parts = build_parts(config.sd2_dir, config.tiny_random)
        dtype = BASE_DTYPES[config.base_dtype]
        self.vae = parts.vae if dtype == torch.float32 else parts.vae.to(dtype)
        self.unet = parts.unet if dtype == torch.float32 else parts.unet.to(dtype)
        names = [n for n, _ in self.unet.named_modules()]
        if not any(n == t or n.endswith(f".{t}") for n in names for t in config.lora_modules):  # peft's rule
            raise ModelConfigError(f"hypir lora_modules {list(config.lora_modules)} match no layer of the UNet")
        with torch.random.fork_rng(devices=[]):  # the LoRA start is part of the config: a file rebuilds it exactly
            torch.manual_seed(0)
            self.unet.add_adapter(
                LoraConfig(
                    r=config.lora_rank,
                    lora_alpha=config.lora_rank,
                    init_lora_weights="gaussian",
                    target_modules=list(config.lora_modules),
                )
            )
        lora = {n: p for n, p in self.named_parameters() if p.requires_grad}
        self.lora_names = tuple(lora)
        """The trained parameters' names (``unet.<HYPIR's name>``), in the model's order."""
        for p in lora.values():
            p.data = p.data.float()  # HYPIR: LoRA in float32 whatever the base's storage
        # The text embedding is a constant: the paired data has no captions, so every prompt is the empty one
        # (HYPIR with p_empty_prompt = 1). The text encoder is dropped after this (1.4 GB less for SD2).
        text = parts.text_encoder
        ids = empty_prompt_ids(text.config.vocab_size, text.config.max_position_embeddings)
        with torch.no_grad():
            embed = text(ids).last_hidden_state.float()  # (1, 77, D)
        self.register_buffer("prompt_embed", embed, persistent=False)
        a = float(parts.alphas_cumprod[config.coeff_t])
        self.sqrt_alpha, self.sqrt_one_minus_alpha = math.sqrt(a), math.sqrt(1.0 - a)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.in_channels = 3
        self.latent_channels = int(self.vae.config.latent_channels)
        self.downsample_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.unet_factor = 2 ** (len(self.unet.config.block_out_channels) - 1)
        self.register_state_dict_post_hook(_keep_lora_only)
        self.register_load_state_dict_pre_hook(_fill_frozen)

    @property
    def base_dtype(self) -> torch.dtype:
        """Storage of the frozen UNet and VAE (``base_dtype``); their inputs are cast to it."""
        return BASE_DTYPES[self._config.base_dtype]  # type: ignore[attr-defined]

    def lora_state_dict(self) -> dict[str, Tensor]:
        """The trained parameters named as ``unet.named_parameters()`` names them (HYPIR's ``state_dict.pth``)."""
        params = dict(self.named_parameters())
        return {n.removeprefix("unet."): params[n].detach() for n in self.lora_names}

    def encode(self, x: Tensor) -> EncoderOutput:
        """LQ (B, 3, H, W) in [-1, 1] -> the VAE posterior in the UNet's latent space, (B, 4, H/8, W/8).

        ``latent_dist`` samples ``vae.encode(x).latent_dist.sample() * scaling_factor`` (training, as HYPIR);
        ``latents`` is its mode (validation, export). No gradient: the VAE is frozen and nothing before it trains.
        """
        self.check_images(x)
        f = self.downsample_factor * self.unet_factor
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"hypir needs image sizes that are multiples of {f}, got {tuple(x.shape[-2:])}")
        with torch.no_grad():
            posterior = self.vae.encode(x.to(self.base_dtype)).latent_dist
        # z * s is Gaussian with mean * s and log-variance + 2 log s (diffusers clamped the raw log-variance).
        mean, logvar = posterior.mean * self.scaling_factor, posterior.logvar + 2 * math.log(self.scaling_factor)
        dist = DiagonalGaussian(torch.cat([mean, logvar], dim=1).float())  # (B, 2 * 4, h, w)
        return EncoderOutput(dist, dist.mode())

    def decode(self, z: Tensor) -> DecoderOutput:
        """Scaled latents ``z_in`` (B, 4, h, w) -> images (B, 3, 8h, 8w): one UNet step at ``model_t``, the VAE decoder.

        The step is DDPM's ``pred_original_sample`` at ``coeff_t``: ``(z_in - sqrt(1 - a) eps) / sqrt(a)`` with ``a``
        the schedule's cumulative alpha (epsilon prediction, no clipping: SD2's scheduler config).
        """
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(f"{self.family} decodes latents (B, {self.latent_channels}, h, w), got {tuple(z.shape)}")
        cfg: HypirConfig = self._config  # type: ignore[assignment]
        b = z.shape[0]
        t = torch.full((b,), cfg.model_t, dtype=torch.long, device=z.device)
        text = self.prompt_embed.expand(b, -1, -1).to(self.base_dtype)  # (1, 77, D) -> (B, 77, D)
        eps = self.unet(z.to(self.base_dtype), t, encoder_hidden_states=text).sample  # (B, 4, h, w)
        z0 = (z - self.sqrt_one_minus_alpha * eps.float()) / self.sqrt_alpha
        x = self.vae.decode((z0 / self.scaling_factor).to(self.base_dtype)).sample  # (B, 3, 8h, 8w)
        return DecoderOutput(x.float())

    @property
    def gan_last_layer(self) -> nn.Parameter:
        """The last LoRA weight (``conv_out``'s ``lora_B`` with HYPIR's modules): where per-term gradient norms are
        compared (the fork logs ``grad_norm/conv_out_*``)."""
        return dict(self.named_parameters())[self.lora_names[-1]]

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """UNet blocks (HYPIR) and the VAE decoder's (its 512 px activations dominate memory) recompute in backward."""
        for net in (self.unet, self.vae):
            if enabled:
                net.enable_gradient_checkpointing()
            else:
                net.disable_gradient_checkpointing()

    def __deepcopy__(self, memo: dict[int, Any]) -> HypirGenerator:
        """A copy sharing the frozen parameters: the EMA (``AveragedModel`` deep-copies the model) then holds the LoRA
        weights alone, not a second SD2 UNet and VAE (0.95 B parameters)."""
        lora = set(self.lora_names)
        memo.update({id(p): p for n, p in self.named_parameters() if n not in lora})
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new


def _keep_lora_only(module: HypirGenerator, state: dict[str, Tensor], prefix: str, local_metadata: Any) -> None:
    """State-dict post-hook: only the LoRA weights are the model's state (the frozen SD2 comes from its files)."""
    keep = {prefix + n for n in module.lora_names}
    for key in [k for k in state if k.startswith(prefix) and k not in keep]:
        del state[key]


def _fill_frozen(
    module: HypirGenerator,
    state: dict[str, Tensor],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing: list[str],
    unexpected: list[str],
    errors: list[str],
) -> None:
    """Load pre-hook: a LoRA-only state dict loads strictly, the frozen tensors standing for themselves."""
    lora = set(module.lora_names)
    for child_name, child in module.named_children():  # the children's state: no hook, persistent buffers only
        for name, tensor in child.state_dict(prefix=f"{child_name}.", keep_vars=True).items():
            if name not in lora and prefix + name not in state:
                state[prefix + name] = tensor
