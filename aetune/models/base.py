"""The interface every autoencoder family implements, and the typed config its constructor takes.

A family is a pair: a ``FamilyConfig`` dataclass (the schema: typed fields with defaults, validated before
anything heavy is built) and an ``Autoencoder`` subclass built from it. ``model.config`` is that dataclass
as plain Python values, so ``create_autoencoder(model.family, **model.config)`` rebuilds the model.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, ClassVar

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from aetune.errors import AetuneError
from aetune.models.outputs import DecoderOutput, EncoderOutput


class ModelConfigError(AetuneError, ValueError):
    """An autoencoder option that does not exist or has a bad value; the message names the fix."""


@dataclasses.dataclass
class FamilyConfig:
    """Base of every family's options. Subclasses add typed fields; values are checked on creation.

    Lists are accepted where a tuple is declared (YAML has no tuples) and stored as tuples.
    """

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _checked(getattr(self, f.name), hints[f.name], f.name))
        self.validate()

    def validate(self) -> None:
        """Cross-field checks of a family (raise ``ModelConfigError`` naming the numbers)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (tuples as lists): YAML, JSON and ``weights_only`` safe."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _checked(value: Any, tp: Any, name: str) -> Any:
    """``value`` checked against annotation ``tp`` (int, float, bool, str, tuple[int, ...])."""
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ModelConfigError(f"autoencoder option '{name}' must be a list, got {value!r}")
        (item, _) = typing.get_args(tp)
        return tuple(_checked(v, item, f"{name}[{i}]") for i, v in enumerate(value))
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }[tp](value)
    if not ok:
        raise ModelConfigError(f"autoencoder option '{name}' must be {tp.__name__}, got {value!r}")
    return float(value) if tp is float else value


class Autoencoder(nn.Module):
    """Interface of every family: images in [-1, 1], (B, C, H, W) (3-D families: (B, C, D, H, W)).

    Subclasses set ``in_channels``, ``latent_channels`` and ``downsample_factor`` in ``__init__`` and implement the
    abstract methods. ``family`` and ``config_cls`` are set by ``register_family``.
    """

    family: ClassVar[str] = ""
    config_cls: ClassVar[type[FamilyConfig]] = FamilyConfig
    aligns: ClassVar[bool] = False
    """Whether the family has a projection to a teacher's features (``project``)."""
    spatial_dims: ClassVar[int] = 2

    in_channels: int
    latent_channels: int
    downsample_factor: int

    def __init__(self, config: FamilyConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_cls):
            raise TypeError(f"{type(self).__name__} takes a {self.config_cls.__name__}, got {type(config).__name__}")
        self._config = config

    @property
    def config(self) -> dict[str, Any]:
        """Constructor options incl. defaults, as plain Python values (a fresh copy)."""
        return self._config.to_dict()

    def check_images(self, x: Tensor) -> None:
        """Raise ``ValueError`` naming the sizes unless ``x`` is (B, C, *spatial) with sizes % factor == 0."""
        if x.ndim != 2 + self.spatial_dims or x.shape[1] != self.in_channels:
            dims = ", ".join("DHW"[-self.spatial_dims :])
            raise ValueError(f"{self.family} expects images (B, {self.in_channels}, {dims}), got {tuple(x.shape)}")
        sizes = tuple(x.shape[2:])
        if any(s % self.downsample_factor for s in sizes):
            raise ValueError(
                f"image size {'x'.join(map(str, sizes))} is not a multiple of the downsample factor "
                f"{self.downsample_factor} of {self.family}: resize or crop to multiples of "
                f"{self.downsample_factor}"
            )

    def encode(self, x: Tensor) -> EncoderOutput:
        """Images (B, C, H, W) in [-1, 1] -> latents (B, latent_channels, H/f, W/f) (and posterior)."""
        raise NotImplementedError

    def decode(self, z: Tensor) -> DecoderOutput:
        """Latents (B, latent_channels, h, w) -> images (B, C, h*f, w*f), nominally [-1, 1]."""
        raise NotImplementedError

    def project(self, z: Tensor) -> Tensor:
        """Latents -> teacher feature space (families with ``aligns``); others raise ``TypeError``."""
        raise TypeError(f"family '{self.family}' has no alignment projection (aligns=False)")

    @property
    def gan_last_layer(self) -> nn.Parameter:
        """Weight at which the adaptive GAN weight compares gradients (last decoder layer)."""
        raise NotImplementedError

    @property
    def align_last_layer(self) -> nn.Parameter | None:
        """Weight at which the adaptive alignment weight compares gradients (last trained encoder layer);
        None for families whose encoder does not train (RAE)."""
        return None

    def freeze_encoder_levels(self, n: int) -> list[str]:
        """Freeze the encoder stem and its first ``n`` resolution levels; return the frozen names.

        The base class only accepts ``n=0`` (families without levels, or with a frozen encoder).
        """
        if n != 0:
            raise ValueError(f"family '{self.family}' has no encoder levels to freeze (got {n})")
        return []

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute block activations in backward instead of storing them (same outputs, less memory)."""
        if enabled:
            raise ValueError(f"family '{self.family}' does not support gradient checkpointing")

    def forward(self, x: Tensor) -> Tensor:
        """Deterministic round trip (posterior mode): (B, C, H, W) -> (B, C, H, W)."""
        return self.decode(self.encode(x).latents).sample


def frozen_names(module: nn.Module, prefix: str) -> list[str]:
    """Set ``requires_grad=False`` on every parameter of ``module`` and return their full names."""
    names = []
    for name, p in module.named_parameters(prefix=prefix):
        p.requires_grad_(False)
        names.append(name)
    return names


def run_block(block: nn.Module, h: Tensor, checkpointing: bool) -> Tensor:
    """``block(h)``, recomputed in backward when ``checkpointing`` and gradients are being recorded."""
    if checkpointing and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(block, h, use_reentrant=False)
    return block(h)
