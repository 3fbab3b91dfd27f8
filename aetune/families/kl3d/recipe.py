"""Recipe of the 3-D KL autoencoder (``kl3d``): MONAI's AutoencoderKL training (the 3-D LDM notebook's first stage).

Generator phase: ``l1 |x_rec - x| + kl KL + perceptual LPIPS_2.5D(x_rec, x) + adversarial G_adv(D(x_rec))``
with x_rec decoded from a posterior sample; the adversarial term (fixed weight, as MONAI's notebooks: no
adaptive weight) and the D updates from ``disc_start``. Discriminator phase: ``(D_adv(real) + D_adv(fake)) / 2``
with MONAI's ``PatchAdversarialLoss``, times the adversarial weight (``d_loss_weighted``, as MONAI's notebooks).
Each stage builds only what its loss switches use: a stage with ``perceptual_weight: 0`` never builds (or needs
weights for) the perceptual network. Validation scores whole volumes (``validation_values``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from aetune.data.kinds.volume import axial_slices, volumes_from_slices
from aetune.families.kl3d.loading import load_kl3d_weights
from aetune.families.kl3d.losses import PatchDiscriminator3D, build_perceptual_3d
from aetune.families.kl3d.metrics import volume_l1, volume_psnr, volume_ssim
from aetune.families.kl3d.model import KL3DConfig
from aetune.models import Autoencoder, create_autoencoder
from aetune.optional import require
from aetune.recipes import register_recipe
from aetune.recipes.base import Networks, PhaseResult, Recipe, StepContext, frozen

log = logging.getLogger(__name__)


class KL3DRecipe(Recipe):
    """MONAI 3-D AutoencoderKL with a patch discriminator and the optional fake-3-D perceptual loss."""

    data_kind = "volume"
    progress_keys = ("rec_loss", "perceptual_loss")

    def __init__(self, cfg: Any, stage: str) -> None:
        super().__init__(cfg, stage)
        losses = require("monai.losses", "--family kl3d")
        self.adversarial = losses.PatchAdversarialLoss(criterion=self.loss.adversarial_criterion)

    def build(self) -> Networks:
        cfg = self.cfg
        autoencoder = create_autoencoder(cfg.model.family, **cfg.model.args)
        autoencoder.set_gradient_checkpointing(cfg.model.gradient_checkpointing)
        disc = self.build_discriminator()
        nets: dict[str, nn.Module] = {}
        if self.loss.perceptual_weight > 0:
            nets["perceptual"] = build_perceptual_3d(self.loss.fake_3d_ratio, self.loss.perceptual_pretrained)
        return Networks(autoencoder, disc, nets)

    def build_discriminator(self) -> PatchDiscriminator3D:
        d = self.cfg.discriminator
        in_channels = KL3DConfig(**self.cfg.model.args).in_channels  # the volumes' channels, one default
        return PatchDiscriminator3D(in_channels, d.num_layers_d, d.channels, d.norm)

    def phase_active(self, phase: str, batch: int) -> bool:
        """The adversarial term and D updates are on from ``disc_start`` (-1 or weight 0: never)."""
        return phase == "g" or (self.loss.adversarial_weight > 0 and 0 <= self.loss.disc_start <= batch)

    def inputs(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """(float16 volumes (B, 1, D, H, W) in [-1, 1], labels) -> (the volumes as float32, their axial slices).

        Training reconstructs ``x`` itself; validation regroups the slices into volumes (``validation_values``).
        """
        x = batch[0].float()
        return x, axial_slices(x)

    def reconstruct(self, autoencoder: Autoencoder, x: Tensor) -> Tensor:
        """Posterior-mode round trip, clamped, as axial slices (B * D, 3, H, W) in [-1, 1]: the layout the
        validation preview takes; ``validation_values`` regroups them into volumes."""
        return axial_slices(autoencoder(x).float().clamp(-1.0, 1.0))

    def validation_values(
        self, target: Tensor, output: Tensor, labels: Tensor | None, names: dict[int, str]
    ) -> dict[str, Tensor]:
        """Per-volume scores (best checkpoints follow ``val/psnr``), the slice-wise figures as extra keys.

        Args:
            target, output: axial slices (B * D, 3, H, W) in [0, 1] of B volumes (``reconstruct``'s layout).
            labels: (B,) the volumes' labels (they give B); names: unused.

        Returns:
            ``psnr``, ``ssim``, ``l1_loss``: (B,) PSNR over each volume, MONAI's 3-D SSIM, mean |error| in [0, 1]
            (MONAI's 3-D LDM script keeps the model with the lowest); ``psnr_slices``, ``ssim_slices``: (B * D,)
            per-slice PSNR and 2-D luma SSIM, whose mean an exactly reproduced padding slice lifts (100 dB cap).
        """
        if labels is None:
            raise ValueError("kl3d validation needs the batch's labels to know how many volumes the slices hold")
        real, fake = volumes_from_slices(target, len(labels)), volumes_from_slices(output, len(labels))
        values = {"psnr": volume_psnr(real, fake), "ssim": volume_ssim(real, fake), "l1_loss": volume_l1(real, fake)}
        slices = super().validation_values(target, output, labels, names)
        return values | {f"{key}_slices": value for key, value in slices.items()}

    def generator_step(self, x: Tensor, target: Tensor, ctx: StepContext) -> PhaseResult:
        w = self.loss
        posterior = self.autoencoder.encode(x).latent_dist
        z = posterior.sample(generator=ctx.generator)  # (B, L, D/f, H/f, W/f)
        x_rec = self.autoencoder.decode(z).sample  # (B, C, D, H, W)
        rec = (x_rec.float() - x).abs().mean()  # ``target`` holds the slices for validation
        kl = posterior.kl().mean()  # summed over latent voxels, averaged over the batch (MONAI's notebooks)
        parts = {"rec": w.l1_weight * rec, "kl": w.kl_weight * kl}
        logs = {"rec_loss": rec.detach(), "kl_loss": kl.detach()}
        if self.perceptual is not None:
            # MONAI draws the slices with torch's global generator; seeding it from this batch's generator makes
            # the draw a function of (seed, stage, batch, rank), the same after a resume.
            seed = int(torch.randint(0, 2**62, (1,), generator=ctx.generator, device=ctx.generator.device))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                perc = self.perceptual(x_rec, x)
            parts["perceptual"] = w.perceptual_weight * perc
            logs["perceptual_loss"] = perc.detach()
        if self.phase_active("d", ctx.batch):
            with frozen(self.discriminator):  # the G loss must not leave gradients in D
                logits_fake = self.discriminator(x_rec)
            gan = self.adversarial(logits_fake.float(), target_is_real=True, for_discriminator=False)
            parts["gan"] = w.adversarial_weight * gan
            logs["gan_loss"] = gan.detach()
        total = sum(parts.values())
        assert isinstance(total, Tensor)
        return PhaseResult(total, logs, parts if ctx.parts else {}, {"x_rec": x_rec})

    def discriminator_step(self, x: Tensor, target: Tensor, g: PhaseResult, ctx: StepContext) -> PhaseResult:
        """MONAI's patch adversarial loss on the real volume and the detached reconstruction, averaged, times the
        adversarial weight when ``d_loss_weighted`` (both MONAI notebooks: ``loss_d = adv_weight * ...``)."""
        logits_real = self.discriminator(x).float()
        logits_fake = self.discriminator(g.carry["x_rec"].detach()).float()
        real = self.adversarial(logits_real, target_is_real=True, for_discriminator=True)
        fake = self.adversarial(logits_fake, target_is_real=False, for_discriminator=True)
        d_loss = 0.5 * (real + fake)
        logs = {"d_loss": d_loss.detach(), "logits_real": logits_real.detach().mean()}
        logs["logits_fake"] = logits_fake.detach().mean()
        weight = self.loss.adversarial_weight if self.loss.d_loss_weighted else 1.0
        return PhaseResult(weight * d_loss, logs)

    def load_pretrained(self, path: str) -> str:
        """MONAI ``AutoencoderKL`` weights (its key names), loaded strictly."""
        report = load_kl3d_weights(self.autoencoder, path)  # type: ignore[arg-type]
        log.info("%s", report.summary())
        return f"pretrained {path}"

    def notes(self) -> dict[str, Any]:
        """A random perceptual trunk is reported like a random teacher: the numbers show the pipeline, not quality."""
        random = self.loss.perceptual_weight > 0 and not self.loss.perceptual_pretrained
        return {"random_teacher": random, "random_perceptual": random}


register_recipe("kl3d", KL3DRecipe)
