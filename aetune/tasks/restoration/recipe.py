"""The paired restoration recipe (``--task restoration``): any 2-D family encodes LQ and decodes GT.

Generator phase: encode the degraded input, decode (a posterior sample for KL families, as HYPIR samples its
VAE latent; the plain latents otherwise), and score the output against the clean target with
``aetune.losses.restoration_objective`` (L1, L2, LPIPS, SSIM, a fixed-weight GAN term after ``disc_start``).
Discriminator phase: PatchGAN hinge loss on GT (real) and the detached output (fake), two calls as the
reconstruction recipes. The fork alternates G and D batches; here both run on every batch, as every recipe.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from aetune.data.cache import to_model_range
from aetune.errors import AetuneError
from aetune.losses import build_lpips, discriminator_objective
from aetune.models import create_autoencoder
from aetune.nn.patchgan import NLayerDiscriminator
from aetune.recipes import get_recipe, register_task_recipe
from aetune.recipes.base import Networks, PhaseResult, Recipe, StepContext, frozen
from aetune.tasks.restoration.losses import TERMS, RestorationWeights, restoration_objective
from aetune.tasks.restoration.metrics import restoration_metrics
from aetune.tasks.restoration.options import TASK


class RestorationRecipe(Recipe):
    """LQ -> GT training of the family ``cfg.model.family`` with the task's loss section (``cfg.loss``)."""

    data_kind = "pair"
    progress_keys = ("l1", "ssim")

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
        """The same random horizontal flip of LQ and GT when ``data.hflip`` (off by default: a flip reverses time)."""
        if not self.cfg.data.hflip:
            return x, target
        flip = (torch.rand(x.shape[0], generator=ctx.generator, device=x.device) < 0.5)[:, None, None, None]
        return torch.where(flip, x.flip(-1), x), torch.where(flip, target.flip(-1), target)

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
        parts = {k[2:]: v for k, v in terms.items() if k.startswith("w_")} if ctx.parts else {}
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
        """Per-image validation values keyed as logged (``val/<key>``), overall and per degradation type.

        The module logs each key's mean weighted by its number of values, which over a validation epoch gives
        the mean over that type's images (``val/Blur/psnr``). Conventions: ``aetune.tasks.restoration.metrics``.

        Args:
            target, output: (B, 3, H, W) GT and restored images in [0, 1].
            labels: (B,) degradation labels; ``names`` maps them to the type names (``data/labels.json``).

        Returns:
            ``{"psnr": (B,), "ssim", ["lpips", "final_score"], "<Type>/psnr": (n_type,), ...}``.
        """
        crop = self.cfg.restoration.crop_border
        values = restoration_metrics(output, target, self.lpips, crop)
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
