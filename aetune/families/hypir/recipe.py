"""The hypir family's own recipe (``--task reconstruction``): HYPIR's objective on single images.

HYPIR trains on clean images it degrades on the fly (Real-ESRGAN); this recipe has no degradation yet, so the
input is the clean image itself and the generator learns the identity through SD2's latent space: a check of the
pipeline, and a start point for ``--task restoration`` (the ``hypir`` presets), which trains it on LQ -> GT pairs.
Objective (HYPIR ``configs/sd2_train.yaml``): ``l2 MSE + lpips LPIPS + gan (-D(y))``, fixed weights; the
discriminator's hinge loss on the image and the detached output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aetune.data.cache import to_model_range
from aetune.families.hypir.loading import load_hypir_weights
from aetune.families.hypir.options import FAMILY
from aetune.losses import build_lpips, discriminator_objective, generator_loss
from aetune.models import create_autoencoder
from aetune.nn.patchgan import NLayerDiscriminator
from aetune.recipes import register_recipe
from aetune.recipes.base import Networks, PhaseResult, Recipe, StepContext, frozen


class HypirRecipe(Recipe):
    """One-step HYPIR generator (LoRA only) with a PatchGAN, on images."""

    data_kind = "image"
    progress_keys = ("l2",)

    def build(self) -> Networks:
        cfg = self.cfg
        generator = create_autoencoder(FAMILY, **cfg.model.args)
        if cfg.model.gradient_checkpointing:
            generator.set_gradient_checkpointing(True)
        nets: dict[str, nn.Module] = {}
        if self.loss.lpips_weight > 0 or self.loss.lpips_pretrained:
            nets["perceptual"] = build_lpips(self.loss.lpips_pretrained)
        return Networks(generator, self.build_discriminator(), nets)

    def build_discriminator(self) -> nn.Module | None:
        if self.loss.gan_weight == 0 or self.loss.disc_start < 0:
            return None
        return NLayerDiscriminator(ndf=self.cfg.discriminator.ndf, n_layers=self.cfg.discriminator.n_layers)

    def phase_active(self, phase: str, batch: int) -> bool:
        """The GAN term and D updates from ``disc_start``."""
        return phase == "g" or 0 <= self.loss.disc_start <= batch

    def inputs(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """uint8 images (B, 3, H, W) -> (input, target), the same [-1, 1] tensor (no degradation yet)."""
        x = to_model_range(batch[0])
        return x, x

    def generator_step(self, x: Tensor, target: Tensor, ctx: StepContext) -> PhaseResult:
        posterior = self.autoencoder.encode(x).latent_dist
        assert posterior is not None, "the hypir encoder returns the VAE posterior"
        out = self.autoencoder.decode(posterior.sample(generator=ctx.generator)).sample  # (B, 3, H, W)
        logits_fake = None
        if self.discriminator is not None and self.phase_active("d", ctx.batch):
            with frozen(self.discriminator):  # the G loss must not leave gradients in D
                logits_fake = self.discriminator(out)
        w = self.loss
        with torch.autocast(device_type=x.device.type, enabled=False):  # LPIPS overflows in float16
            y, t = out.float(), target.float()
            raw = {"l2": F.mse_loss(y, t)}
            if w.lpips_weight > 0:
                assert self.perceptual is not None, "build() makes LPIPS when its weight is positive"
                raw["lpips"] = self.perceptual(y, t).float().mean()
            if logits_fake is not None:
                raw["gan"] = generator_loss(logits_fake)
            weighted = {k: getattr(w, f"{k}_weight") * v for k, v in raw.items()}
            total = sum(weighted.values(), torch.zeros((), device=x.device))
        logs = {k: v.detach() for k, v in raw.items()}
        return PhaseResult(total, logs, weighted if ctx.parts else {}, {"real": target, "fake": out})

    def discriminator_step(self, x: Tensor, target: Tensor, g: PhaseResult, ctx: StepContext) -> PhaseResult:
        """Hinge loss on the image and the detached output (two calls: per-call BatchNorm statistics)."""
        assert self.discriminator is not None
        terms = discriminator_objective(
            self.discriminator(g.carry["real"]), self.discriminator(g.carry["fake"].detach())
        )
        return PhaseResult(terms["total"], {"logits_real": terms["logits_real"], "logits_fake": terms["logits_fake"]})

    def load_pretrained(self, path: str) -> str:
        """HYPIR LoRA weights (a released or exported ``state_dict.pth``); the task's recipe calls this too."""
        return load_hypir_weights(self.autoencoder, path).summary()


register_recipe(FAMILY, HypirRecipe)
