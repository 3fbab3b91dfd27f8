"""The frozen CLIP ConvNeXt trunk of the restoration discriminator (the fork's ``ImageOpenCLIPConvNext``).

open_clip's ``convnext_xxlarge`` visual tower (846.5 M parameters; its 354 M-parameter text tower is never built),
loaded from a local file only: the one step 2 recorded (``clip_convnext_xxlarge``) or ``discriminator.weights_path``.
A frozen network of the recipe (``Networks.frozen``): never checkpointed, never in an optimizer, always in eval
mode (its stochastic depth must stay off), rebuilt from its file every stage. The trained heads are
``aetune.tasks.restoration.discriminator``.

Features as the fork's ``_visual_forward(..., return_pooled_feats=True)``: the outputs of the ConvNeXt stages but
the last, then the pooled, projected embedding ``visual.head(trunk.forward_head(x))``. The fork takes them as
``forward_intermediates(indices=None)[1:]``, written for timm 1.0.15, whose list starts with the stem's output;
timm >= 1.0.16 leaves the stem out, so there ``[1:]`` would drop stage 0 and feed 768 channels to the heads of 384.
Asking for the last ``len(stages)`` intermediates gives the stage outputs under both.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from aetune.errors import AetuneError
from aetune.optional import require
from aetune.tasks.restoration.weights import CLIP_MODEL, CLIP_WEIGHT

log = logging.getLogger(__name__)

PURPOSE = "discriminator.kind clip_convnext; --set discriminator.kind=patchgan trains without it"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""OpenAI CLIP's normalisation, the fork's ``image_mean`` / ``image_std`` (open_clip's ``OPENAI_DATASET_*``)."""


def trunk_dtype(name: str) -> torch.dtype:
    """``discriminator.trunk_dtype`` -> the trunk's dtype. ``auto``: bfloat16 (the fork's) where the GPU has bf16
    kernels (compute capability >= 8), float16 on older GPUs (T4: no bf16 there), float32 without CUDA."""
    if name != "auto":
        return DTYPES[name]
    if not torch.cuda.is_available():
        return torch.float32
    return torch.bfloat16 if torch.cuda.get_device_capability()[0] >= 8 else torch.float16


def clip_weights_file(model: str, weights_path: str | None) -> Path:
    """The local open_clip file of ``model``: ``weights_path``, which step 4 sets to step 2's recorded file.

    Raises:
        AetuneError: no such file, or none given (naming the step 2 command).
    """
    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise AetuneError(f"discriminator.weights_path {path} does not exist (the open_clip file of {model})")
        return path
    if model != CLIP_MODEL:
        raise AetuneError(
            f"discriminator.clip_model {model} has no step 2 entry: pass its open_clip file as "
            "--set discriminator.weights_path=FILE"
        )
    raise AetuneError(
        f"the CLIP discriminator's weights are missing: run `python step2_download_models.py --only {CLIP_WEIGHT}` "
        f"(step 4 then finds them) or pass --set discriminator.weights_path=FILE; {PURPOSE.split('; ')[1]}"
    )


def clip_tower(model: str, pretrained: bool, weights_path: str | None) -> tuple[nn.Module, int]:
    """open_clip's visual tower of ``model`` alone (``trunk``: the timm ConvNeXt, ``head``: the projection to the
    CLIP embedding), and the embedding's width.

    Raises:
        AetuneError: open_clip missing, an unknown model or one without a timm ConvNeXt tower, a missing file, or
            a file whose ``visual.*`` tensors do not fit the tower.
    """
    open_clip = require("open_clip", PURPOSE)
    # open_clip builds a tower alone only through this helper; create_model would also build the text tower.
    from open_clip.model import _build_vision_tower

    cfg = open_clip.get_model_config(model)
    vision = (cfg or {}).get("vision_cfg", {})
    if not str(vision.get("timm_model_name", "")).startswith("convnext"):
        raise AetuneError(f"discriminator.clip_model {model!r} is not an open_clip model with a timm ConvNeXt tower")
    if not pretrained:
        return _build_vision_tower(cfg["embed_dim"], vision), cfg["embed_dim"]
    path = clip_weights_file(model, weights_path)
    state = {
        k[len("visual.") :]: v
        for k, v in open_clip.factory.load_state_dict(str(path)).items()
        if k.startswith("visual.")
    }
    with torch.device("meta"):  # no random initialisation of 846 M parameters: the file's tensors replace them
        tower = _build_vision_tower(cfg["embed_dim"], vision)
    expected = tower.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    bad = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or bad:
        raise AetuneError(
            f"{path} is not open_clip {model}'s visual tower: {len(missing)} tensors missing (e.g. {missing[:1]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:1]}), {len(bad)} of another shape (e.g. {bad[:1]})"
        )
    tower.load_state_dict(state, strict=True, assign=True)
    log.info("CLIP discriminator trunk: %s from %s", model, path)
    return tower, cfg["embed_dim"]


class ClipConvNextFeatures(nn.Module):
    """Images (B, 3, H, W) in [-1, 1] -> the fork's discriminator features, float32 (``forward``).

    Args:
        model: the open_clip model name (``convnext_xxlarge``; a small registered config in tests).
        pretrained: load ``weights_path``; False: random weights (tests only, with a warning).
        weights_path: the open_clip file (``open_clip_pytorch_model.bin``).
        dtype: the trunk's dtype (``trunk_dtype``); it runs in it with autocast off.
    """

    def __init__(self, model: str, pretrained: bool, weights_path: str | None, dtype: torch.dtype) -> None:
        super().__init__()
        if not pretrained:
            if weights_path is not None:
                raise AetuneError("discriminator.weights_path is given but pretrained=false: set pretrained=true")
            log.warning("RANDOMLY INITIALISED CLIP discriminator trunk (discriminator.pretrained: false)")
        tower, self.embed_dim = clip_tower(model, pretrained, weights_path)
        """``embed_dim``: the width of the pooled embedding (XXLarge: 1024)."""
        self.tower = tower.to(dtype).requires_grad_(False).eval()
        info: list[dict[str, Any]] = self.tower.trunk.feature_info  # one entry per stage: channels, stride
        self.map_channels = [int(i["num_chs"]) for i in info[:-1]]
        """Channels of the feature maps (stages but the last; XXLarge: 384, 768, 1536)."""
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))
        # [-1, 1] -> [0, 1] -> CLIP-normalised in one affine map: ((x + 1) / 2 - mean) / std
        self.register_buffer("x_scale", 0.5 / std, persistent=False)
        self.register_buffer("x_shift", (0.5 - mean) / std, persistent=False)

    def train(self, mode: bool = True) -> ClipConvNextFeatures:
        """Stay in eval mode whatever the parent does (frozen; ConvNeXt's stochastic depth must stay off)."""
        return super().train(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, 3, H, W) in [-1, 1] -> [stage i output (B, C_i, H / 2^(i + 2), W / 2^(i + 2)) for i < n - 1, embedding
        (B, D)], float32. Differentiable with respect to ``x`` (the generator's GAN term)."""
        trunk, dtype = self.tower.trunk, next(self.tower.parameters()).dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            h = (x.float() * self.x_scale + self.x_shift).to(dtype)
            final, maps = trunk.forward_intermediates(
                h, indices=len(trunk.stages), norm=False, stop_early=False, intermediates_only=False
            )
            pooled = self.tower.head(trunk.forward_head(final))  # (B, D): the CLIP image embedding
        return [*(m.float() for m in maps[:-1]), pooled.float()]
