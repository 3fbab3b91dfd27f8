"""The paired restoration recipe (``--task restoration``): any 2-D family encodes LQ and decodes GT.

Generator phase: encode the degraded input, decode (a posterior sample for KL families, as HYPIR samples its
VAE latent; the plain latents otherwise), and score the output against the clean target with
``aetune.losses.restoration_objective`` (L1, L2, LPIPS, SSIM, a fixed-weight GAN term after ``disc_start``).
Discriminator (``discriminator.kind``): the fork's frozen CLIP ConvNeXt with trained multi-level heads and its
BCE loss (targets 0.8 / 0; ``aetune.tasks.restoration.discriminator``), or a PatchGAN with the hinge loss. Its
phase scores GT (real) and the detached output (fake), one call each. The fork alternates G and D batches; here
both run on every batch, as every recipe.
Logged names follow the fork's dashboards: ``val/PSNR``, ``val/<Type>/PSNR``, ``grad_norm/conv_out_l1``, ...
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from aetune.config import Config
from aetune.data.cache import to_model_range
from aetune.data.kinds.pair import register_pair_kind
from aetune.errors import AetuneError
from aetune.losses import build_lpips, discriminator_objective, generator_loss
from aetune.models import create_autoencoder
from aetune.nn.patchgan import NLayerDiscriminator
from aetune.recipes import get_recipe, register_task_recipe
from aetune.recipes.base import Networks, PhaseResult, Recipe, StepContext, frozen
from aetune.tasks.restoration.clip_features import ClipConvNextFeatures, trunk_dtype
from aetune.tasks.restoration.discriminator import (
    ClipConvNextHeads,
    clip_discriminator_objective,
    clip_generator_loss,
)
from aetune.tasks.restoration.losses import TERMS, RestorationWeights, restoration_objective
from aetune.tasks.restoration.metrics import restoration_metrics
from aetune.tasks.restoration.options import CLIP_CONVNEXT, TASK

log = logging.getLogger(__name__)

VAL_NAMES = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "final_score": "Final_Score"}
"""Metric -> the fork's validation key (``val/PSNR``, ``val/Blur/PSNR``): runs compare on the fork's dashboards."""
GRAD_NORM_NAMES = {t: f"conv_out_{'disc' if t == 'gan' else t}" for t in TERMS}
"""Term -> the fork's gradient-norm key (``grad_norm/conv_out_l1``; it names the GAN term ``disc``)."""
CLIP_MIN_SIZE = 64
"""The smallest training size of the CLIP discriminator: its last map head needs 4 x 4 features (stride 16)."""


def check_logged_names(cfg: Config, stage: str) -> None:
    """Refuse settings that read validation keys under the reconstruction recipes' names (``val/psnr``).

    Raises:
        AetuneError: a monitor naming ``val/psnr`` & co (the best checkpoint would watch a key never logged), or
            the health gate on (it reads ``psnr``).
    """
    for monitor in (cfg.train.monitor, cfg.stage(stage).monitor):
        name = (monitor or "").rsplit("/", 1)[-1]
        if name in VAL_NAMES:
            raise AetuneError(
                f"train.monitor {monitor}: --task restoration logs the fork's names (val/PSNR, val/SSIM, val/LPIPS, "
                f"val/Final_Score): use {monitor[: -len(name)]}{VAL_NAMES[name]}"
            )
    if cfg.train.health_min_psnr is not None:
        raise AetuneError("train.health_min_psnr reads val/psnr; --task restoration logs val/PSNR: unset it")


class RestorationRecipe(Recipe):
    """LQ -> GT training of the family ``cfg.model.family`` with the task's loss section (``cfg.loss``)."""

    data_kind = "pair"
    progress_keys = ("l1", "ssim")

    def __init__(self, cfg: Config, stage: str) -> None:
        super().__init__(cfg, stage)
        check_logged_names(cfg, stage)
        # The kind API carries only the image size: bind the validation options now, before any data module (every
        # rank builds its recipe first), also for recipes that subclass this one.
        register_pair_kind(cfg.restoration.native_val, cfg.restoration.num_samples_per_type)
        self.clip = cfg.discriminator.kind == CLIP_CONVNEXT
        if self.clip and cfg.data.image_size < CLIP_MIN_SIZE:
            raise AetuneError(
                f"discriminator.kind clip_convnext needs data.image_size >= {CLIP_MIN_SIZE} (got "
                f"{cfg.data.image_size}): use --set discriminator.kind=patchgan"
            )

    def build(self) -> Networks:
        cfg = self.cfg
        autoencoder = create_autoencoder(cfg.model.family, **cfg.model.args)
        if autoencoder.spatial_dims != 2:
            raise AetuneError(
                f"--task restoration needs a 2-D family; {cfg.model.family} is {autoencoder.spatial_dims}-D"
            )
        if cfg.model.freeze_encoder_levels:
            autoencoder.freeze_encoder_levels(cfg.model.freeze_encoder_levels)
        if cfg.model.gradient_checkpointing:
            autoencoder.set_gradient_checkpointing(True)
        nets: dict[str, nn.Module] = {}
        if self.loss.lpips_weight > 0 or self.loss.lpips_pretrained:
            nets["perceptual"] = build_lpips(self.loss.lpips_pretrained)
        disc = None
        if self.loss.gan_weight > 0 and self.loss.disc_start >= 0:
            if self.clip:  # the trunk is a frozen network: not checkpointed, not in the D optimizer, not averaged
                d = cfg.discriminator
                nets["clip_trunk"] = trunk = ClipConvNextFeatures(
                    d.clip_model, d.pretrained, d.weights_path, trunk_dtype(d.trunk_dtype)
                )
                disc = ClipConvNextHeads(trunk.map_channels, trunk.embed_dim)
            else:
                disc = NLayerDiscriminator(ndf=cfg.discriminator.ndf, n_layers=cfg.discriminator.n_layers)
        return Networks(autoencoder, disc, nets)

    def d_logits(self, images: Tensor) -> Any:
        """Discriminator logits of (B, 3, H, W) images in [-1, 1]: a list per level (CLIP; ``MultiLevelDConv``) or
        (B, 1, h, w) (PatchGAN). Gradients reach ``images`` through the frozen trunk."""
        assert self.discriminator is not None
        if self.clip:
            return self.discriminator(self.nets.frozen["clip_trunk"](images))  # type: ignore[union-attr]
        return self.discriminator(images)

    @property
    def weights(self) -> RestorationWeights:
        return RestorationWeights(**{t: getattr(self.loss, f"{t}_weight") for t in TERMS})

    def phase_active(self, phase: str, batch: int) -> bool:
        """The GAN term and D updates are on from ``disc_start`` (-1: never)."""
        return phase == "g" or 0 <= self.loss.disc_start <= batch

    def inputs(self, batch: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """(LQ uint8 (B, 3, H, W), GT uint8 (B, 3, H, W), labels) -> (LQ, GT) in [-1, 1]."""
        return to_model_range(batch[0]), to_model_range(batch[1])

    def augment(self, x: Tensor, target: Tensor, ctx: StepContext) -> tuple[Tensor, Tensor]:
        """The same random flips of LQ and GT (B, 3, S, S) in [-1, 1], as the fork's ``augment`` (BasicSR).

        ``data.hflip``: a horizontal flip with probability 1/2 (off by default: a flip reverses a spectrogram's
        time); ``restoration.rot90``: a vertical flip and a transpose, each with probability 1/2 (with hflip: the
        8 rotations and flips of a square, equally likely). Each image of the batch draws its own.
        """
        for on, flip in (
            (self.cfg.data.hflip, lambda t: t.flip(-1)),
            (self.cfg.restoration.rot90, lambda t: t.flip(-2)),
            (self.cfg.restoration.rot90, lambda t: t.transpose(-2, -1)),  # training pairs are square (S x S)
        ):
            if on:
                pick = (torch.rand(x.shape[0], generator=ctx.generator, device=x.device) < 0.5)[:, None, None, None]
                x, target = torch.where(pick, flip(x), x), torch.where(pick, flip(target), target)
        return x, target

    def generator_step(self, x: Tensor, target: Tensor, ctx: StepContext) -> PhaseResult:
        x, target = self.augment(x, target, ctx)
        enc = self.autoencoder.encode(x)
        z = enc.latents if enc.latent_dist is None else enc.latent_dist.sample(generator=ctx.generator)
        out = self.autoencoder.decode(z).sample  # (B, 3, H, W)
        gan = None
        if self.discriminator is not None and self.phase_active("d", ctx.batch):
            if self.clip:
                self.discriminator.eval()  # as the fork: no spectral-norm power iteration in the G phase
            with frozen(self.discriminator):  # the G loss must not leave gradients in D
                logits = self.d_logits(out)
                gan = clip_generator_loss(logits) if self.clip else generator_loss(logits)
        terms = restoration_objective(target, out, self.weights, self.perceptual, gan)
        total = terms.pop("total")
        parts = {GRAD_NORM_NAMES[k[2:]]: v for k, v in terms.items() if k.startswith("w_")} if ctx.parts else {}
        logs = {k: v for k, v in terms.items() if not k.startswith("w_")}
        return PhaseResult(total, logs, parts, {"real": target, "fake": out})

    def discriminator_step(self, x: Tensor, target: Tensor, g: PhaseResult, ctx: StepContext) -> PhaseResult:
        """GT real, the detached output fake, one call each (the PatchGAN's per-call BatchNorm statistics): the
        fork's BCE (CLIP; the trunk without a graph, only the heads train) or the hinge loss (PatchGAN)."""
        assert self.discriminator is not None
        real, fake = g.carry["real"], g.carry["fake"].detach()
        if self.clip:
            self.discriminator.train()
            with torch.no_grad():
                trunk = self.nets.frozen["clip_trunk"]  # type: ignore[union-attr]
                features = trunk(real), trunk(fake)
            terms = clip_discriminator_objective(*(self.discriminator(f) for f in features))
        else:
            terms = discriminator_objective(self.discriminator(real), self.discriminator(fake))
        return PhaseResult(terms["total"], {"logits_real": terms["logits_real"], "logits_fake": terms["logits_fake"]})

    def validation_values(
        self, target: Tensor, output: Tensor, labels: Tensor, names: dict[int, str]
    ) -> dict[str, Tensor]:
        """Per-image validation values keyed as the fork logs them (``val/<key>``), overall and per degradation type.

        The module logs each key's mean weighted by its number of values, which over a validation epoch gives
        the mean over that type's images (``val/Blur/PSNR``). Conventions: ``aetune.tasks.restoration.metrics``.

        Args:
            target, output: (B, 3, H, W) GT and restored images in [0, 1].
            labels: (B,) degradation labels; ``names`` maps them to the type names (``data/labels.json``).

        Returns:
            ``{"PSNR": (B,), "SSIM", ["LPIPS", "Final_Score"], "<Type>/PSNR": (n_type,), ...}``.
        """
        crop = self.cfg.restoration.crop_border
        values = {VAL_NAMES[k]: v for k, v in restoration_metrics(output, target, self.lpips, crop).items()}
        out = dict(values)
        for label in labels.unique().tolist():
            mask = labels == label
            out |= {f"{names[int(label)]}/{k}": v[mask] for k, v in values.items()}
        return out

    def notes(self) -> dict[str, Any]:
        return {"task": TASK, "lpips": self.loss.lpips_pretrained}

    def load_pretrained(self, path: str) -> str:
        """The family's own loader of released weights (it reads ``self.autoencoder`` and ``self.discriminator``).

        A CLIP discriminator is hidden from it: a released PatchGAN (VA-VAE's ``loss.discriminator.*``) does not
        fit the CLIP heads, so the loader skips those keys as for a model without a discriminator.
        """
        load = get_recipe(self.cfg.model.family).load_pretrained
        if not self.clip or self.discriminator is None:
            return load(self, path)  # type: ignore[arg-type]
        assert self.nets is not None
        nets, self.nets = self.nets, replace(self.nets, discriminator=None)
        try:
            what = load(self, path)  # type: ignore[arg-type]
        finally:
            self.nets = nets
        log.info("discriminator.kind clip_convnext: any released PatchGAN weights in %s were skipped", path)
        return f"{what}; the CLIP discriminator's heads start from random weights"


register_task_recipe(TASK, RestorationRecipe)
