"""Frozen vision foundation models (timm ViTs) whose patch features the VA-VAE latents are aligned to."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aetune.errors import AetuneError

NORMALIZATIONS = ("none", "imagenet")
"""Teacher input conventions: ``none`` feeds [-1, 1] pixels as they are (what the released VA-VAE was
trained with, a bug by its authors' own account); ``imagenet`` maps them to the teacher's mean/std."""


class FrozenTeacher(nn.Module):
    """A timm ViT, frozen and always in eval mode, giving patch features on the latent grid.

    Args:
        name: timm model name (``vit_large_patch14_dinov2.lvd142m`` for the released VA-VAE).
        pretrained: load the teacher's weights: from ``weights_path``, else from the local Hugging Face
            / torch hub cache (filled by step 2). Nothing is downloaded here; missing weights are an
            error naming the file to attach. False gives random weights (tests, CPU demo only).
        normalize: ``none`` or ``imagenet`` (see ``NORMALIZATIONS``).
        weights_path: a local weight file for ``name`` (``.safetensors``, or a ``.pth``/``.bin`` state
            dict loaded with ``weights_only=True``), e.g. an attached Kaggle dataset.

    Attributes:
        embed_dim: feature width (1024 for ViT-L).
        patch_size: (ph, pw) of the patch embedding.
    """

    def __init__(
        self,
        name: str = "vit_large_patch14_dinov2.lvd142m",
        pretrained: bool = True,
        normalize: str = "none",
        weights_path: str | None = None,
    ) -> None:
        super().__init__()
        import timm

        if normalize not in NORMALIZATIONS:
            raise ValueError(f"teacher normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        if not timm.is_model(name):
            raise AetuneError(f"unknown timm model '{name}' for the teacher (see timm.list_models('vit_*'))")
        kwargs: dict = {"dynamic_img_size": True, "num_classes": 0}  # any (h*p, w*p) input; no head
        if pretrained:
            kwargs["pretrained_cfg_overlay"] = {"file": str(_weights_file(name, weights_path))}
        elif weights_path is not None:
            raise ValueError("weights_path is given but pretrained=False: set pretrained=True to load it")
        self.model = timm.create_model(name, pretrained=pretrained, **kwargs)
        self.model.requires_grad_(False)
        self.model.eval()
        self.name, self.normalize, self.pretrained = name, normalize, pretrained
        self.embed_dim: int = self.model.embed_dim
        self.patch_size: tuple[int, int] = tuple(self.model.patch_embed.patch_size)
        cfg = self.model.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Stay in eval mode whatever the parent module does (frozen: no dropout, no drop-path)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """Patch features of ``x`` on a ``grid`` = (h, w) token grid.

        Args:
            x: (B, 3, H, W) images in [-1, 1].
            grid: the latent grid (H/f, W/f); the image is resized (bilinear, as LightningDiT) to
                (h * ph, w * pw), e.g. 256 px -> 16x16 -> 224 px for DINOv2's 14 px patches.

        Returns:
            (B, embed_dim, h, w) features (prefix tokens: CLS and registers dropped), no gradient.
        """
        h, w = grid
        ph, pw = self.patch_size
        if self.normalize == "imagenet":
            x = ((x + 1.0) / 2.0 - self.mean.to(x.dtype)) / self.std.to(x.dtype)  # [-1, 1] -> mean/std
        x = F.interpolate(x, size=(h * ph, w * pw), mode="bilinear", align_corners=False)
        tokens = self.model.forward_features(x)  # (B, prefix + h*w, D)
        prefix = self.model.num_prefix_tokens
        if tokens.shape[1] != prefix + h * w:
            raise ValueError(
                f"teacher {self.name} returned {tokens.shape[1]} tokens for a {h}x{w} grid "
                f"(expected {prefix} prefix + {h * w} patch tokens)"
            )
        # (B, prefix + h*w, D) -> (B, h, w, D) -> (B, D, h, w)
        return tokens[:, prefix:].reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2)


def _weights_file(name: str, weights_path: str | None) -> Path:
    """The local weight file of timm model ``name``; ``AetuneError`` naming what to attach otherwise."""
    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise AetuneError(f"teacher weights file {path} does not exist (teacher '{name}')")
        return path
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is not None and cfg.hf_hub_id:
        for filename in ("model.safetensors", "pytorch_model.bin"):
            cached = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(cached, str):
                return Path(cached)
        want = f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/model.safetensors"
        where = f"the Hugging Face cache ({HF_HUB_CACHE})"
    elif cfg is not None and cfg.url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name
        if cached.is_file():
            return cached
        want, where = cfg.url, f"the torch hub cache ({cached.parent})"
    else:
        raise AetuneError(f"timm has no pretrained weights for teacher '{name}'; pick a tagged name (e.g. '.lvd142m')")
    raise AetuneError(
        f"weights of teacher '{name}' are not in {where}: run step 2 to fetch {want}, "
        "or attach that file and pass its path as teacher weights_path"
    )
