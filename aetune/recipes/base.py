"""What a family's recipe provides to the generic training module (``aetune.train.module``).

A recipe builds the networks of one stage (the autoencoder, an optional discriminator, frozen networks) and
computes each phase's objective from a batch. The module owns everything else: optimisers and schedules,
accumulation, clipping, loss scaling, the non-finite guard, EMA, checkpoints and validation. A recipe never
steps an optimizer and never calls ``backward``.

Phases: ``g`` (the autoencoder's trainable part) always; ``d`` when the recipe has a discriminator and
:meth:`Recipe.phase_active` says so for the batch (e.g. after ``disc_start``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from aetune import metrics
from aetune.config import Config
from aetune.data.feature_cache import FeatureCache, fingerprint
from aetune.errors import AetuneError
from aetune.models import Autoencoder


def pretrained_files(path: str) -> list[str]:
    """The files of ``--pretrained_path`` (comma-separated: the parts of one released model, e.g. its two halves)."""
    return [p.strip() for p in path.split(",") if p.strip()]


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Run ``module`` without recording gradients for its parameters (inputs still get gradients)."""
    states = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in states:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, state in states:
            p.requires_grad_(state)


@dataclass
class Networks:
    """The networks of a stage, registered by the module as its own children under these names.

    Attributes:
        autoencoder: the family's autoencoder (trained where ``requires_grad``).
        discriminator: trained in the ``d`` phase; None for recipes without one.
        frozen: frozen networks by attribute name (teacher, LPIPS, ...): never checkpointed, never in an
            optimizer, rebuilt from their own weights every stage.
    """

    autoencoder: Autoencoder
    discriminator: nn.Module | None = None
    frozen: dict[str, nn.Module] = field(default_factory=dict)


@dataclass
class StepContext:
    """What a phase knows about the batch it is computing.

    Attributes:
        batch: batches of the stage trained before this one (every schedule counts these).
        generator: noise for this batch, seeded by (seed, stage, batch, rank): identical after a resume.
        parts: return the weighted loss terms with their graphs (``PhaseResult.parts``) for gradient norms.
        keys: content hashes (B,) of the batch's input images, taken on the host before the batch moved to the
            device (:meth:`Recipe.host_keys`), for ``FeatureCache.lookup``; None without a feature cache.
    """

    batch: int
    generator: torch.Generator
    parts: bool = False
    keys: Tensor | None = None


@dataclass
class PhaseResult:
    """One phase's objective.

    Attributes:
        total: the loss to backpropagate (float32, 0-dim, with graph).
        logs: detached 0-dim tensors logged as ``train/<name>``.
        parts: the weighted terms of ``total`` with graphs (when ``StepContext.parts``), e.g. ``rec``, ``gan``.
        carry: what the next phase needs from this one (e.g. the reconstruction for the discriminator).
    """

    total: Tensor
    logs: dict[str, Tensor] = field(default_factory=dict)
    parts: dict[str, Tensor] = field(default_factory=dict)
    carry: dict[str, Any] = field(default_factory=dict)


class Recipe:
    """Base of every family's recipe; subclasses implement :meth:`build`, :meth:`generator_step` and, with a
    discriminator, :meth:`discriminator_step`.

    Args:
        cfg: the resolved config.
        stage: the stage being trained (``cfg.stage_loss(stage)`` holds its loss options).
    """

    data_kind: ClassVar[str] = "image"
    """The batches this recipe consumes: ``image`` | ``pair`` | ``video`` | ``volume``."""
    progress_keys: ClassVar[tuple[str, ...]] = ("rec_loss",)
    """Logged terms shown in the progress bar (besides the phase totals)."""

    def __init__(self, cfg: Config, stage: str) -> None:
        self.cfg, self.stage = cfg, stage
        self.loss = cfg.stage_loss(stage)
        self.nets: Networks | None = None

    # --- networks -------------------------------------------------------------------------------
    def build(self) -> Networks:
        """Create the stage's networks (random weights; frozen ones from their own weights)."""
        raise NotImplementedError

    def build_discriminator(self) -> nn.Module | None:
        """The stage's discriminator alone (random weights), or None: ``build`` uses it, and the disk budget
        sizes checkpoints with it on the meta device."""
        return None

    feature_cache: FeatureCache | None = None
    """The frozen network's outputs of the training images (:meth:`prepare_feature_cache`); None: it runs."""

    def host_keys(self, batch: Any) -> Tensor | None:
        """The content hashes (B,) of a loader batch's uint8 images, on the host, when a feature cache is in use:
        hashing there spares the step a device-to-host read (a sync) in ``FeatureCache.lookup``."""
        if self.feature_cache is None or self.data_kind != "image":
            return None
        return fingerprint(batch[0])

    def prepare_feature_cache(self, images: np.ndarray, work_dir: Path, device: torch.device, progress: bool) -> Any:
        """Build or load the frozen-network outputs of the training images (``aetune.data.feature_cache``) and
        use them from now on; the module calls it once per stage on every rank, when the data kind serves a uint8
        image array ``images`` (N, S, S, 3). Default: no cache (None)."""
        return None

    def attach(self, nets: Networks) -> None:
        """Keep references to the networks the module registered (it owns them; the recipe uses them)."""
        self.nets = nets

    @property
    def autoencoder(self) -> Autoencoder:
        assert self.nets is not None, "attach() the networks first"
        return self.nets.autoencoder

    @property
    def discriminator(self) -> nn.Module | None:
        assert self.nets is not None, "attach() the networks first"
        return self.nets.discriminator

    def trainable(self, phase: str) -> list[nn.Parameter]:
        """Parameters the ``phase`` optimizer updates (every trainable parameter belongs to one phase)."""
        if phase == "g":
            return [p for p in self.autoencoder.parameters() if p.requires_grad]
        assert self.discriminator is not None
        return list(self.discriminator.parameters())

    @property
    def phases(self) -> tuple[str, ...]:
        """``("g", "d")`` with a discriminator, else ``("g",)``."""
        return ("g", "d") if self.discriminator is not None else ("g",)

    def phase_active(self, phase: str, batch: int) -> bool:
        """Whether ``phase`` runs at stage batch ``batch`` (the generator always does)."""
        return phase == "g"

    @property
    def grad_norm_layer(self) -> nn.Parameter:
        """The model's last layer, where ``grad_norm/<term>`` compares the loss terms' gradients."""
        return self.autoencoder.gan_last_layer

    # --- data -----------------------------------------------------------------------------------
    def inputs(self, batch: Any) -> tuple[Tensor, Tensor]:
        """A loader batch -> (autoencoder input, target), float in [-1, 1]; the same tensor for reconstruction."""
        raise NotImplementedError

    # --- objectives -----------------------------------------------------------------------------
    def generator_step(self, x: Tensor, target: Tensor, ctx: StepContext) -> PhaseResult:
        """The ``g`` phase: networks forward and the generator objective."""
        raise NotImplementedError

    def backward(self, phase: str, result: PhaseResult, backward: Callable[[Tensor], None]) -> None:
        """Backpropagate ``result.total`` through ``backward`` (the module's: checked, scaled, accumulated).

        A recipe may instead make several calls whose losses sum to ``result.total``, e.g. to read a gradient
        left by the first call (one decoder backward fewer for an adaptive weight). Each call's loss must be
        part of this batch's objective only; the module divides each by the accumulation count.
        """
        backward(result.total)

    def discriminator_step(self, x: Tensor, target: Tensor, g: PhaseResult, ctx: StepContext) -> PhaseResult:
        """The ``d`` phase, given the generator phase's result (its ``carry``)."""
        raise NotImplementedError(f"{type(self).__name__} has no discriminator phase")

    def fake_after_g_step(self) -> bool:
        """Whether the ``d`` phase makes its fake with the generator this batch updates: in a batch that closes an
        accumulation window the module then steps ``g`` before the ``d`` phase runs. False (default): both phases
        run first, and the optimizers step together when the window closes (the fake is one ``g`` step older)."""
        return False

    # --- validation and metadata ----------------------------------------------------------------
    def reconstruct(self, autoencoder: Autoencoder, x: Tensor) -> Tensor:
        """Deterministic reconstruction for validation: ``x`` in [-1, 1] -> output in [-1, 1] (float32)."""
        return autoencoder(x).float().clamp(-1.0, 1.0)

    def validation_values(
        self, target: Tensor, output: Tensor, labels: Tensor | None, names: dict[int, str]
    ) -> dict[str, Tensor]:
        """Per-image validation metrics, logged as ``val/<key>`` (epoch means over the images of each key).

        Args:
            target: (B, C, ...) in [0, 1]; output: the reconstruction, same shape and range.
            labels: (B,) the items' integer labels; names: label -> user / class / degradation name.

        Returns:
            key -> (N,) values: PSNR, SSIM on the Y channel and, with trustworthy weights, LPIPS.
        """
        values = {"psnr": metrics.psnr(target, output), "ssim": metrics.ssim(target, output, y_channel=True)}
        if self.lpips is not None:
            values["lpips"] = metrics.lpips_distance(self.lpips, target, output)
        return values

    @property
    def perceptual(self) -> nn.Module | None:
        """The frozen perceptual network registered as ``frozen["perceptual"]``, if the recipe built one."""
        assert self.nets is not None, "attach() the networks first"
        return self.nets.frozen.get("perceptual")

    @property
    def lpips(self) -> nn.Module | None:
        """The LPIPS network validation reports with: the perceptual network when ``loss.lpips_pretrained``
        says its weights are trustworthy, else None."""
        return self.perceptual if getattr(self.loss, "lpips_pretrained", False) else None

    def notes(self) -> dict[str, Any]:
        """Facts every checkpoint and validation record carries (e.g. a random teacher)."""
        return {}

    def load_pretrained(self, path: str) -> str:
        """Load released weights for a stage that starts from ``--pretrained_path``; return what, in words."""
        raise AetuneError(
            f"--pretrained_path is not supported for the {self.cfg.model.family} family: start it from random "
            "weights (leave the flag out) or from an earlier stage's checkpoint"
        )
