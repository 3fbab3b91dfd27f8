"""The frozen representation encoders of RAE, built from transformers, the reference's own classes.

RAE (bytetriper/RAE, ``src/stage1/encoders``) wraps transformers models: ``Dinov2WithRegistersModel``,
``SiglipModel(...).vision_model`` and ``ViTMAEForPreTraining(...).vit``, each with its final LayerNorm's
affine removed, and keeps the patch tokens only. We build exactly those classes rather than timm's ports.
For DINOv2-reg-B, timm gives the same numbers: with the same weights, timm's ``vit_base_patch14_reg4_dinov2``
(cls position folded into the cls token) matched transformers exactly (0.0 relative difference, measured
once). The choice rests on the other reasons. (1) The released encoder files and diffusers' ``AutoencoderRAE``
files are transformers state dicts, and transformers' own loader renames their keys for the installed
version. (2) All three encoders run the reference's code path: SigLIP2 through its vision tower, MAE with
``noise = arange`` and no masking. timm's SigLIP2 and MAE weights are separate conversions that we have not
checked against these files. The models are built from configs written here (the released architectures),
so no ``config.json`` is needed offline; weights come from ``rae_loading``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aetune.optional import require

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderSpec:
    """One released encoder: its architecture, input convention and where its weights live.

    Attributes:
        kind: ``dinov2`` | ``siglip2`` | ``mae`` (which transformers class).
        hub_repo: the Hugging Face repo of the released weights (the reference's ``encoder_config_path``).
        width, depth, heads, patch: the ViT (MLP = 4 x width for all three).
        input_size: square input the reference resizes to (bicubic); tokens = (input_size / patch)^2.
        mean, std: the encoder's image-processor normalisation of [0, 1] pixels.
        prefix_tokens: tokens before the patch tokens in ``last_hidden_state`` (dropped).
        file_prefix: prefix of the encoder's keys in its released file (text tower / MAE decoder excluded).
        hub_file: the weights file in ``hub_repo`` (step 2's registry entry fetches the same file).
    """

    kind: str
    hub_repo: str
    width: int
    depth: int
    heads: int
    patch: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    prefix_tokens: int
    file_prefix: str
    hub_file: str = "model.safetensors"


ENCODERS: dict[str, EncoderSpec] = {
    # DINOv2-B with 4 registers: [cls, 4 registers, 256 patches] at 224 px (the released RAE's encoder).
    "dinov2-reg-b": EncoderSpec(
        "dinov2", "facebook/dinov2-with-registers-base", 768, 12, 12, 14, 224, IMAGENET_MEAN, IMAGENET_STD, 5, ""
    ),
    # SigLIP2-B/16 at 256 px: no cls token; its processor normalises with mean = std = 0.5.
    "siglip2-b16-256": EncoderSpec(
        "siglip2", "google/siglip2-base-patch16-256", 768, 12, 12, 16, 256, (0.5,) * 3, (0.5,) * 3, 0, "vision_model."
    ),
    # MAE-B/16 fed 256 px (position table interpolated from 14x14), no masking, cls dropped.
    "mae-b16": EncoderSpec(
        "mae",
        "facebook/vit-mae-base",
        768,
        12,
        12,
        16,
        256,
        IMAGENET_MEAN,
        IMAGENET_STD,
        1,
        "vit.",
        "pytorch_model.bin",
    ),
}


def _build(spec: EncoderSpec, width: int, depth: int, heads: int) -> nn.Module:
    """The transformers module for ``spec`` (random weights), final LayerNorm without affine."""
    tf = require("transformers", "--family rae")
    common = {"hidden_size": width, "num_hidden_layers": depth, "num_attention_heads": heads}
    if spec.kind == "dinov2":
        # image_size 518: the released position table is 37x37 (resized to the input grid at every call)
        cfg = tf.Dinov2WithRegistersConfig(
            **common, patch_size=spec.patch, image_size=518, num_register_tokens=4, attn_implementation="sdpa"
        )
        model, norm = (m := tf.Dinov2WithRegistersModel(cfg)), m.layernorm
    elif spec.kind == "siglip2":
        # the attention-pooling head is not used by RAE (last_hidden_state only): not built
        cfg = tf.SiglipVisionConfig(
            **common, intermediate_size=4 * width, patch_size=spec.patch, image_size=spec.input_size,
            vision_use_head=False, attn_implementation="sdpa",
        )  # fmt: skip
        vision = tf.SiglipVisionModel(cfg)
        model = getattr(vision, "vision_model", vision)  # transformers < 5 nests the tower one level deeper
        norm = model.post_layernorm
    elif spec.kind == "mae":
        cfg = tf.ViTMAEConfig(
            **common, intermediate_size=4 * width, patch_size=spec.patch, image_size=224, mask_ratio=0.0,
            attn_implementation="sdpa",
        )  # fmt: skip
        model, norm = (m := tf.ViTMAEModel(cfg)), m.layernorm
    else:
        raise ValueError(f"unknown encoder kind {spec.kind!r}")
    # RAE's "wNorm" encoders: a LayerNorm that only standardises (no learned scale/shift)
    norm.elementwise_affine = False
    norm.weight = None
    norm.bias = None
    return model


class FrozenEncoder(nn.Module):
    """A frozen representation encoder: [0, 1] images -> patch tokens, always in eval mode, no gradient.

    Args:
        name: a key of ``ENCODERS``.
        width, depth, heads, input_size: 0 keeps the released value; other values build a smaller random
            encoder of the same kind (CPU tests and demos only: no released weights fit it).

    Attributes:
        model: the transformers module (its state-dict keys are the released file's, minus ``file_prefix``).
        width: token width C. grid: tokens per side (input_size / patch).
    """

    def __init__(self, name: str, width: int = 0, depth: int = 0, heads: int = 0, input_size: int = 0) -> None:
        super().__init__()
        self.name = name
        self.spec = spec = ENCODERS[name]
        self.width = width or spec.width
        self.input_size = input_size or spec.input_size
        self.grid = self.input_size // spec.patch
        self.model = _build(spec, self.width, depth or spec.depth, heads or spec.heads)
        self.model.requires_grad_(False)
        self.model.eval()

    def _mean_std(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """The normalisation as (1, 3, 1, 1) tensors on ``like``'s device (constants, not buffers: nothing to
        export or load, and a model built on the meta device needs none)."""
        mean = torch.tensor(self.spec.mean, device=like.device, dtype=like.dtype).view(1, 3, 1, 1)
        return mean, torch.tensor(self.spec.std, device=like.device, dtype=like.dtype).view(1, 3, 1, 1)

    def train(self, mode: bool = True) -> FrozenEncoder:
        """Stay in eval mode whatever the parent does (frozen: no dropout, no drop-path)."""
        return super().train(False)

    def normalize(self, x: Tensor) -> Tensor:
        """[0, 1] images (B, 3, H, W) -> bicubic resize to ``input_size`` (when different) -> mean/std."""
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bicubic", align_corners=False)
        mean, std = self._mean_std(x)
        return (x - mean) / std

    def denormalize(self, x: Tensor) -> Tensor:
        """Encoder-normalised pixels -> [0, 1] scale (what the RAE decoder's output is mapped back with)."""
        mean, std = self._mean_std(x)
        return x * std + mean

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] -> patch tokens (B, grid * grid, width), row-major over the grid."""
        x = self.normalize(x)
        if self.spec.kind == "dinov2":
            hidden = self.model(pixel_values=x).last_hidden_state
        elif self.spec.kind == "siglip2":
            hidden = self.model(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state
        else:
            # MAE shuffles tokens by argsort(noise): an increasing noise keeps all 256 in their order
            n = self.grid * self.grid
            noise = torch.arange(n, device=x.device, dtype=x.dtype).expand(x.shape[0], n)
            hidden = self.model(pixel_values=x, noise=noise, interpolate_pos_encoding=True).last_hidden_state
        tokens = hidden[:, self.spec.prefix_tokens :]  # (B, prefix + N, C) -> (B, N, C)
        if tokens.shape[1] != self.grid * self.grid:
            raise ValueError(
                f"encoder {self.name} returned {tokens.shape[1]} patch tokens, expected {self.grid}x{self.grid}"
            )
        return tokens
