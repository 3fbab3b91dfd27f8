"""The frozen parts of HYPIR: the SD2.1-base VAE, UNet and CLIP text encoder, from step 2's files or tiny and random.

Where SD2.1-base comes from (``model.args.sd2_dir``), first match wins, per part:

- a diffusers snapshot of ``stabilityai/stable-diffusion-2-1-base`` (``<dir>/unet/config.json`` ...): read
  with its own configs, as HYPIR's ``from_pretrained(base_model_path, subfolder=...)``;
- step 2's models folder or a ``--bundle``: the flat files ``sd21-base.<part>.safetensors`` (step 2 fetches the
  weights only: its registry holds binary weight files), read with the SD2.1-base configs below;
- no ``sd2_dir``: the Hugging Face cache (``local_files_only``: never a download here). Step 4 leaves it unset
  only when step 2 has not recorded the three files in one folder (``aetune.setup.hub.attach_recorded_weights``).

A part found nowhere is one error line naming the step 2 entry to fetch. Random weights only with
``tiny_random`` (the demo preset and the tests), never as a fallback.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch import Tensor
from transformers import CLIPTextConfig, CLIPTextModel

from aetune.errors import AetuneError
from aetune.families.hypir.weights import SD2_FILES, SD2_REPO, sd2_filename, sd2_weight_name
from aetune.setup.hub import get_spec, missing_message

_DOWN = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
_UP = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
SD2_CONFIGS: dict[str, dict[str, Any]] = {
    "unet": {
        "_class_name": "UNet2DConditionModel",
        "sample_size": 64,  # 512 px / 8
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": _DOWN,
        "up_block_types": _UP,
        "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2,
        "attention_head_dim": [5, 10, 20, 20],  # diffusers' legacy name: heads per level (64 channels each)
        "cross_attention_dim": 1024,  # OpenCLIP ViT-H text width
        "use_linear_projection": True,  # SD2: linear proj_in / proj_out (SD1: 1x1 convs)
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "act_fn": "silu",
    },
    "vae": {
        "_class_name": "AutoencoderKL",
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "act_fn": "silu",
        "sample_size": 768,
        "scaling_factor": 0.18215,
    },
    "text_encoder": {
        "model_type": "clip_text_model",
        "architectures": ["CLIPTextModel"],
        "vocab_size": 49408,
        "hidden_size": 1024,  # OpenCLIP ViT-H/14 text tower, its last layer dropped (23 of 24)
        "intermediate_size": 4096,
        "num_hidden_layers": 23,
        "num_attention_heads": 16,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": 512,
    },
}
"""``config.json`` of each part of ``stabilityai/stable-diffusion-2-1-base`` (the flat step 2 files have none)."""
SD2_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
}
"""The DDPM noise schedule of SD2.1-base (``scheduler/scheduler_config.json``); the tiny parts share it."""

TINY_UNET: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "attention_head_dim": [2, 4],
    "cross_attention_dim": 32,
    "use_linear_projection": True,
    "norm_num_groups": 8,
}
TINY_VAE: dict[str, Any] = {
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 16, 16, 16],  # four levels: the SD2 VAE's factor 8
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 32,
}
TINY_TEXT: dict[str, Any] = {
    "vocab_size": 1000,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 77,
    "projection_dim": 32,
    "bos_token_id": 998,  # CLIP's layout: start and end of text are the vocabulary's last two ids
    "eos_token_id": 999,
    "pad_token_id": 0,
}
"""A tiny random UNet / VAE / text encoder with SD2's interfaces (CPU demo and tests; ``tiny_random``)."""
TINY_SEED = 0
"""The tiny parts are drawn from this seed, so a model file rebuilds the same frozen weights."""


@dataclass
class FrozenParts:
    """The SD2 networks HYPIR composes, all frozen (the LoRA is added to ``unet`` by the model)."""

    vae: AutoencoderKL
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    alphas_cumprod: Tensor  # (1000,) float32: the DDPM schedule's cumulative alpha products


def empty_prompt_ids(vocab_size: int, length: int) -> Tensor:
    """The token ids of SD2's tokenizer for the empty prompt, padded to ``length``: (1, length) int64.

    CLIP's BPE vocabulary ends with ``<|startoftext|>`` and ``<|endoftext|>`` (49406, 49407 of 49408), and SD2's
    tokenizer pads with ``!`` (id 0, the vocabulary's first entry; SD1 pads with ``<|endoftext|>``), so the empty
    prompt is ``[49406, 49407, 0, ..., 0]`` - as ``tokenizer("", padding="max_length")`` gives in HYPIR.
    """
    ids = torch.zeros(1, length, dtype=torch.long)
    ids[0, :2] = torch.tensor([vocab_size - 2, vocab_size - 1])
    return ids


def build_parts(sd2_dir: str, tiny_random: bool) -> FrozenParts:
    """The frozen parts, in float32, in eval mode (see the module docstring for where they come from).

    Raises:
        AetuneError: a part of SD2.1-base that is nowhere to be found (naming its step 2 entry), or ``sd2_dir``
            given together with ``tiny_random``.
    """
    if tiny_random and sd2_dir:
        raise AetuneError("model.args.sd2_dir is given but tiny_random is true: drop one of them")
    with torch.device("cpu"):  # a number of the schedule, also when the model is built on the meta device
        alphas = DDPMScheduler(**SD2_SCHEDULER).alphas_cumprod.float()
    if tiny_random:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            vae = AutoencoderKL(**TINY_VAE)
            unet = UNet2DConditionModel(**TINY_UNET)
            text = CLIPTextModel(CLIPTextConfig(**TINY_TEXT))
    elif torch.empty(0).device.type == "meta":  # sizing only (step 4's disk budget): shapes, no weights read
        vae = AutoencoderKL.from_config(SD2_CONFIGS["vae"])
        unet = UNet2DConditionModel.from_config(SD2_CONFIGS["unet"])
        text = CLIPTextModel(CLIPTextConfig(**SD2_CONFIGS["text_encoder"]))
    else:
        vae = _load("vae", sd2_dir)
        unet = _load("unet", sd2_dir)
        text = _load("text_encoder", sd2_dir)
    for net in (vae, unet, text):
        net.float().eval().requires_grad_(False)
    return FrozenParts(vae, unet, text, alphas)


def _load(part: str, sd2_dir: str) -> Any:
    """One SD2.1-base part, by diffusers' / transformers' own loaders (strict: missing weights are errors)."""
    cls: Any = CLIPTextModel if part == "text_encoder" else (UNet2DConditionModel if part == "unet" else AutoencoderKL)
    name = sd2_weight_name(part)
    if not sd2_dir:
        try:
            return cls.from_pretrained(SD2_REPO, subfolder=part, local_files_only=True)
        except OSError as e:
            raise AetuneError(
                f"{missing_message(get_spec(name))}; step 4 then sets model.args.sd2_dir from step 2's records "
                f"(the Hugging Face cache has no {SD2_REPO}/{part}: {str(e).splitlines()[0]})"
            ) from e
    root = Path(sd2_dir)
    if (root / part / "config.json").is_file():
        return cls.from_pretrained(root, subfolder=part)
    flat = root / sd2_filename(part)
    if not flat.is_file():
        raise AetuneError(
            f"{missing_message(get_spec(name))}; model.args.sd2_dir={sd2_dir} has neither {sd2_filename(part)} nor "
            f"{part}/config.json"
        )
    with tempfile.TemporaryDirectory() as tmp:  # the diffusers folder layout, around step 2's flat file
        (Path(tmp) / "config.json").write_text(json.dumps(SD2_CONFIGS[part]), encoding="utf-8")
        (Path(tmp) / Path(SD2_FILES[part]).name).symlink_to(flat.resolve())
        return cls.from_pretrained(tmp)
