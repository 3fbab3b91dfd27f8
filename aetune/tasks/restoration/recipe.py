"""The paired restoration recipe (``--task restoration``): any 2-D family encodes LQ and decodes GT.

Generator phase: encode the degraded input, decode (a posterior sample for KL families, as HYPIR samples its
VAE latent; the plain latents otherwise), and score the output against the clean target with
``aetune.losses.restoration_objective`` (L1, L2, LPIPS, SSIM, a fixed-weight GAN term after ``disc_start``).
Discriminator phase: PatchGAN hinge loss on GT (real) and the detached output (fake), two calls as the
reconstruction recipes. The fork alternates G and D batches; here both run on every batch, as every recipe.
Logged names follow the fork's dashboards: ``val/PSNR``, ``val/<Type>/PSNR``, ``grad_norm/conv_out_l1``, ...
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from aetune.config import Config
from aetune.data.cache import to_model_range
from aetune.data.kinds.pair import register_pair_kind
from aetune.errors import AetuneError
from aetune.losses import build_lpips, discriminator_objective
from aetune.models import create_autoencoder
from aetune.nn.patchgan import NLayerDiscriminator
from aetune.recipes import get_recipe, register_task_recipe
from aetune.recipes.base import Networks, PhaseResult, Recipe, StepContext, frozen
from aetune.tasks.restoration.losses import TERMS, RestorationWeights, restoration_objective
from aetune.tasks.restoration.metrics import restoration_metrics
from aetune.tasks.restoration.options import TASK

VAL_NAMES = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "final_score": "Final_Score"}
"""Metric -> the fork's validation key (``val/PSNR``, ``val/Blur/PSNR``): runs compare on the fork's dashboards."""
GRAD_NORM_NAMES = {t: f"conv_out_{'disc' if t == 'gan' else t}" for t in TERMS}
"""Term -> the fork's gradient-norm key (``grad_norm/conv_out_l1``; it names the GAN term ``disc``)."""


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
        disc = None
        if self.loss.gan_weight > 0 and self.loss.disc_start >= 0:
            disc = NLayerDiscriminator(ndf=cfg.discriminator.ndf, n_layers=cfg.discriminator.n_layers)
        nets: dict[str, nn.Module] = {}
        if self.loss.lpips_weight > 0 or self.loss.lpips_pretrained:
            nets["perceptual"] = build_lpips(self.loss.lpips_pretrained)
        return Networks(autoencoder, disc, nets)

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
        logits_fake = None
        if self.discriminator is not None and self.phase_active("d", ctx.batch):
            with frozen(self.discriminator):  # the G loss must not leave gradients in D
                logits_fake = self.discriminator(out)
        terms = restoration_objective(target, out, self.weights, self.perceptual, logits_fake)
        total = terms.pop("total")
        parts = {GRAD_NORM_NAMES[k[2:]]: v for k, v in terms.items() if k.startswith("w_")} if ctx.parts else {}
        logs = {k: v for k, v in terms.items() if not k.startswith("w_")}
        return PhaseResult(total, logs, parts, {"real": target, "fake": out})

    def discriminator_step(self, x: Tensor, target: Tensor, g: PhaseResult, ctx: StepContext) -> PhaseResult:
        """Hinge loss on GT and the detached output (two calls: per-call BatchNorm statistics)."""
        assert self.discriminator is not None
        terms = discriminator_objective(
            self.discriminator(g.carry["real"]), self.discriminator(g.carry["fake"].detach())
        )
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
        """The family's own loader of released weights (it reads ``self.autoencoder`` and ``self.discriminator``)."""
        return get_recipe(self.cfg.model.family).load_pretrained(self, path)  # type: ignore[arg-type]


register_task_recipe(TASK, RestorationRecipe)
