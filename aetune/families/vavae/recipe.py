"""Recipes of the LDM KL-VAE (``kl``) and VA-VAE (``vavae``) families: LightningDiT's ``LPIPSWithDiscriminator``.

Generator phase: reconstruction (L1 + LPIPS), KL, adaptive GAN term after ``disc_start`` and, for VA-VAE,
the VF alignment of ``linear_proj(z)`` to a frozen DINOv2 (``aetune.losses.generator_objective``).
Discriminator phase: hinge loss on real and detached reconstructions, two separate calls as the released
model (per-call BatchNorm statistics). Numbers: ``tests/test_fidelity.py``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from aetune.data.cache import to_model_range
from aetune.data.feature_cache import FeatureCache, to_uint8
from aetune.errors import AetuneError
from aetune.losses import ObjectiveWeights, build_lpips, discriminator_objective, generator_objective
from aetune.losses.objective import generator_terms
from aetune.losses.split import Cut, SplitObjective, split_backward
from aetune.models import create_autoencoder, load_weights, read_state_dict
from aetune.models.loading import DISCRIMINATOR_PREFIX
from aetune.nn.foundation import FrozenTeacher
from aetune.nn.patchgan import NLayerDiscriminator
from aetune.recipes import register_recipe
from aetune.recipes.base import Networks, PhaseResult, Recipe, StepContext, frozen

log = logging.getLogger(__name__)


class KLRecipe(Recipe):
    """The LDM KL-VAE objective with a PatchGAN (``kl``); ``vavae`` adds the alignment teacher."""

    progress_keys = ("rec_loss", "vf_loss")

    def build(self) -> Networks:
        cfg = self.cfg
        autoencoder = create_autoencoder(cfg.model.family, **cfg.model.args)
        self.frozen_encoder = autoencoder.freeze_encoder_levels(cfg.model.freeze_encoder_levels)
        autoencoder.set_gradient_checkpointing(cfg.model.gradient_checkpointing)
        disc = self.build_discriminator()
        nets: dict[str, nn.Module] = {}
        if self.loss.perceptual_weight > 0 or self.loss.lpips_pretrained:
            nets["perceptual"] = build_lpips(self.loss.lpips_pretrained)
        teacher = self.build_teacher(autoencoder)
        if teacher is not None:
            nets["teacher"] = teacher
        return Networks(autoencoder, disc, nets)

    def build_discriminator(self) -> NLayerDiscriminator:
        """The taming PatchGAN of ``discriminator.*`` (released: 64 channels, 3 layers)."""
        return NLayerDiscriminator(ndf=self.cfg.discriminator.ndf, n_layers=self.cfg.discriminator.n_layers)

    def build_teacher(self, autoencoder: nn.Module) -> FrozenTeacher | None:
        """The alignment teacher (VA-VAE only)."""
        return None

    @property
    def weights(self) -> ObjectiveWeights:
        names = {f.name for f in dataclasses.fields(ObjectiveWeights)}
        return ObjectiveWeights(**{k: v for k, v in dataclasses.asdict(self.loss).items() if k in names})

    def phase_active(self, phase: str, batch: int) -> bool:
        """The GAN term and D updates are on from ``disc_start`` (-1: never)."""
        return phase == "g" or 0 <= self.loss.disc_start <= batch

    def inputs(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """(uint8 images (B, 3, H, W), labels) -> the images in [-1, 1], twice (reconstruction)."""
        x = to_model_range(batch[0])
        return x, x

    def augment(self, x: Tensor, ctx: StepContext) -> Tensor:
        """Random horizontal flips when ``data.hflip`` (off by default: a flip reverses time)."""
        if not self.cfg.data.hflip:
            return x
        flip = torch.rand(x.shape[0], generator=ctx.generator, device=x.device) < 0.5
        return torch.where(flip[:, None, None, None], x.flip(-1), x)

    @property
    def teacher(self) -> FrozenTeacher | None:
        assert self.nets is not None
        return self.nets.frozen.get("teacher")  # type: ignore[return-value]

    def use_split(self, gan_active: bool, align: bool, ctx: StepContext) -> bool:
        """Whether this step takes :func:`aetune.losses.split.split_backward` (one decoder / LPIPS backward fewer).

        It saves work when an adaptive weight is needed (VF adaptive, or the GAN on). It is off for ``grad_norm``
        batches (their per-term gradients need the weights in the forward), with ``loss.split_backward: false``
        and outside training. Under DDP it is on too: the module's backward calls never all-reduce (the window
        does, once), so a second call costs no communication.
        """
        wanted = self.loss.split_backward and torch.is_grad_enabled() and not ctx.parts
        return wanted and (gan_active or (align and self.weights.vf_adaptive))

    def generator_step(self, x: Tensor, target: Tensor, ctx: StepContext) -> PhaseResult:
        x = self.augment(x, ctx)
        gan_active = self.phase_active("d", ctx.batch)
        align = self.teacher is not None and self.loss.vf_weight > 0
        split = self.use_split(gan_active, align, ctx)
        posterior = self.autoencoder.encode(x).latent_dist
        z = posterior.sample(generator=ctx.generator)  # (B, embed_dim, H/f, W/f)
        cut = Cut.of(z) if split and not gan_active else None  # GAN off: the decoder's backward stops at z
        x_rec = self.autoencoder.decode(cut.leaf if cut is not None else z).sample
        if split and gan_active:
            cut = Cut.of(x_rec)  # GAN on: LPIPS' and D's backward stop at x_rec
        x_out = cut.leaf if cut is not None and gan_active else x_rec
        logits_fake = None
        if gan_active:
            with frozen(self.discriminator):  # the G loss must not leave gradients in D
                logits_fake = self.discriminator(x_out)
        z_proj = feat = None
        if align:
            z_proj = self.autoencoder.project(z)  # (B, align_dim, h, w)
            feat = self.teacher_features(x, tuple(z.shape[-2:]), ctx.keys)  # (B, align_dim, h, w), no gradient
        carry = {"x": x, "x_rec": x_rec}
        if cut is not None:
            t = generator_terms(x, x_out, posterior, self.weights, self.perceptual, logits_fake, z_proj, feat)
            return self.split_result(t, cut, gan_active, align, carry)
        terms = generator_objective(
            x,
            x_rec,
            posterior,
            weights=self.weights,
            perceptual=self.perceptual,
            logits_fake=logits_fake,
            z_proj=z_proj,
            teacher_feat=feat,
            gan_last_layer=self.autoencoder.gan_last_layer,
            align_last_layer=self.autoencoder.align_last_layer,
            gan_active=gan_active,
            with_parts=ctx.parts,
        )
        parts = terms.pop("parts", {})
        total = terms.pop("total")
        return PhaseResult(total, terms, parts, carry)  # type: ignore[arg-type]

    _cache_missed = False  # warned once that a batch was not in the cache

    def teacher_features(self, x: Tensor, grid: tuple[int, int], keys: Tensor | None = None) -> Tensor:
        """The frozen teacher's (B, align_dim, h, w) features of ``x`` (no gradient): from the feature cache when
        every image of the batch is in it (never with ``data.hflip``: flipped inputs are not cached). ``keys``: the
        batch's content hashes taken on the host (``StepContext.keys``), else they are computed here."""
        assert self.teacher is not None
        if self.feature_cache is not None and not self.cfg.data.hflip:
            feat = self.feature_cache.lookup(to_uint8(x), keys)
            if feat is not None and feat.shape[-2:] == grid:
                return feat
            if not self._cache_missed:
                self._cache_missed = True
                log.warning("a batch has images the teacher's feature cache lacks: the teacher runs for such batches")
        return self.teacher(x, grid=grid)

    def prepare_feature_cache(
        self, images: np.ndarray, work_dir: Path, device: torch.device, progress: bool = True
    ) -> FeatureCache | None:
        """Build or load the teacher's feature cache of ``images`` (N, S, S, 3) uint8 and use it from now on.

        None (and the teacher runs every step) when there is no teacher, ``teacher.cache`` is off or
        ``data.hflip`` is on. Under DDP, call it on every rank at the same point (rank 0 builds, a barrier).
        """
        if self.teacher is None or not self.cfg.teacher.cache or self.cfg.data.hflip:
            return None
        size = images.shape[1]
        grid = (size // self.autoencoder.downsample_factor,) * 2
        t = self.cfg.teacher
        settings = {"name": t.name, "normalize": t.normalize, "image_size": size, "grid": list(grid)}
        teacher = self.teacher.to(device)
        self.feature_cache = FeatureCache.build_or_load(
            work_dir,
            f"teacher_{size}px",
            teacher,
            settings,
            images,
            lambda u8: teacher(to_model_range(u8), grid=grid),
            device=device,
            progress=progress,
        )
        return self.feature_cache

    def split_result(
        self, t: dict[str, Tensor], cut: Cut, gan_active: bool, align: bool, carry: dict[str, Any]
    ) -> PhaseResult:
        """The generator result of the split path. The adaptive weights and ``total`` are known only after the
        first backward call: they are 0-dim placeholders that :meth:`backward` fills (the module logs after it).
        """
        placeholder = {k: torch.zeros((), device=t["nll"].device) for k in ("total", "d_weight", "vf_weight")}
        logs = {"nll_loss": t["nll"], "rec_loss": t["rec"], "kl_loss": t["kl"], "g_loss": t["g_loss"]}
        logs |= {"vf_loss": t["vf"], "vf_distmat": t["vf_distmat"], "vf_cos": t["vf_cos"]}
        logs = {k: v.detach() for k, v in logs.items()} | {k: placeholder[k] for k in ("d_weight", "vf_weight")}
        ae = self.autoencoder
        align_layer = ae.align_last_layer if align and self.weights.vf_adaptive else None
        split = SplitObjective(t, self.weights, cut, gan_active, align_layer, ae.gan_last_layer, placeholder)
        return PhaseResult(placeholder["total"], logs, {}, {**carry, "split": split})

    def backward(self, phase: str, result: PhaseResult, backward: Callable[[Tensor], None]) -> None:
        """The split generator backward (one decoder backward fewer) when the step chose it, else the total."""
        split = result.carry.get("split")
        if phase == "g" and split is not None:
            split_backward(split, backward)
        else:
            backward(result.total)

    def discriminator_step(self, x: Tensor, target: Tensor, g: PhaseResult, ctx: StepContext) -> PhaseResult:
        """Hinge loss on real ``x`` and the detached reconstruction (two calls: per-call BatchNorm)."""
        real, fake = g.carry["x"], g.carry["x_rec"].detach()
        terms = discriminator_objective(self.discriminator(real), self.discriminator(fake))
        return PhaseResult(terms["total"], {"logits_real": terms["logits_real"], "logits_fake": terms["logits_fake"]})

    def notes(self) -> dict[str, Any]:
        return {"random_teacher": False, "lpips": self.loss.lpips_pretrained}

    def load_pretrained(self, path: str) -> str:
        """Released LightningDiT weights (full checkpoint or state dict), with the discriminator when it has one."""
        weights, name = read_state_dict(path)
        with_d = any(k.startswith(DISCRIMINATOR_PREFIX) for k in weights)
        report = load_weights(self.autoencoder, weights, discriminator=self.discriminator if with_d else None)
        log.info("%s", report.summary())
        if not with_d:
            log.warning("%s has no discriminator: the PatchGAN starts from random weights", name)
        return f"pretrained {name} ({'with' if with_d else 'without'} its discriminator)"


class VAVAERecipe(KLRecipe):
    """VA-VAE: the KL-VAE objective plus VF alignment to a frozen DINOv2 teacher."""

    def build_teacher(self, autoencoder: nn.Module) -> FrozenTeacher:
        t = self.cfg.teacher
        teacher = FrozenTeacher(t.name, pretrained=t.pretrained, normalize=t.normalize, weights_path=t.weights_path)
        width = autoencoder.config["align_dim"]
        if width != teacher.embed_dim:
            raise AetuneError(
                f"the latent projection is {width} wide but teacher {t.name} gives {teacher.embed_dim} channels: "
                f"--set model.args.align_dim={teacher.embed_dim}"
            )
        if not t.pretrained:
            log.warning("RANDOMLY INITIALISED teacher %s (teacher.pretrained: false): alignment is to noise", t.name)
        return teacher

    def notes(self) -> dict[str, Any]:
        return {**super().notes(), "random_teacher": not self.cfg.teacher.pretrained}


register_recipe("kl", KLRecipe)
register_recipe("vavae", VAVAERecipe)
