"""The LightningModule of step 4: autoencoder + PatchGAN under manual optimisation, two phases per batch.

Per batch: the generator phase (autoencoder and ``linear_proj``: reconstruction, KL, GAN and alignment
terms, ``aetune.losses.generator_objective``), then the discriminator phase (hinge loss on real and on
detached reconstructions, two separate calls as the released model), skipped entirely before
``disc_start``. Gradients are accumulated by hand over ``gradient_accumulation`` batches; every schedule
counts batches (``batches_seen``), never ``global_step``, which Lightning advances once per optimizer
step. A non-finite loss or gradient skips that optimizer step; ``max_nonfinite`` in a row stop the run.
The frozen teacher and LPIPS are siblings of the autoencoder and are left out of checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks.early_stopping import EarlyStoppingReason
from torch import Tensor, nn

from aetune import metrics
from aetune.config import Config
from aetune.data.cache import to_model_range
from aetune.errors import AetuneError
from aetune.losses import ObjectiveWeights, build_lpips, discriminator_objective, generator_objective
from aetune.models import FrozenTeacher, NLayerDiscriminator, create_autoencoder
from aetune.train.callbacks import stop_without_validation
from aetune.train.rng import batch_seed, rng_state, set_rng_state

log = logging.getLogger(__name__)

FROZEN_PREFIXES = ("teacher.", "perceptual.")
"""State-dict groups rebuilt from their own weights, never written into checkpoints (DINOv2-L is 1.2 GB)."""
PREVIEW_IMAGES = 8


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


class AutoencoderModule(pl.LightningModule):
    """One training stage of one autoencoder family.

    Args:
        cfg: the resolved config.
        stage: the stage name (its loss weights: ``cfg.stage_loss(stage)``).
        total_batches: batches this stage trains in all (across sessions).
        learning_rate: Adam learning rate of both optimizers.
        meta: plain-Python facts written into every checkpoint (dataset, labels, origin...).
    """

    def __init__(self, cfg: Config, stage: str, total_batches: int, learning_rate: float, meta: dict[str, Any]) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.cfg, self.stage, self.total_batches, self.learning_rate = cfg, stage, total_batches, learning_rate
        self.loss_cfg = cfg.stage_loss(stage)
        self.weights = ObjectiveWeights(
            **{f.name: getattr(self.loss_cfg, f.name) for f in dataclasses.fields(ObjectiveWeights)}
        )
        self.autoencoder = create_autoencoder(cfg.model.family, **cfg.model.args)
        self.frozen_encoder = self.autoencoder.freeze_encoder_levels(cfg.model.freeze_encoder_levels)
        self.autoencoder.set_gradient_checkpointing(cfg.model.gradient_checkpointing)
        self.discriminator = NLayerDiscriminator(ndf=cfg.discriminator.ndf, n_layers=cfg.discriminator.n_layers)
        self.memory_format = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
        self.autoencoder.to(memory_format=self.memory_format)
        self.discriminator.to(memory_format=self.memory_format)
        wants_lpips = self.loss_cfg.perceptual_weight > 0 or self.loss_cfg.lpips_pretrained
        with torch.random.fork_rng(devices=[]):
            # Frozen networks are not checkpointed: a random one (demo) must come out the same in every
            # stage and session, so it gets its own fixed seed.
            torch.manual_seed(batch_seed(cfg.train.seed, "frozen networks"))
            self.teacher = self._build_teacher() if self.autoencoder.aligns else None
            self.perceptual = build_lpips(self.loss_cfg.lpips_pretrained) if wants_lpips else None
        self.meta = {
            **meta,
            "random_teacher": self.teacher is not None and not cfg.teacher.pretrained,
            "lpips": self.loss_cfg.lpips_pretrained,
        }
        self.batches_seen = 0  # stage-wide batch counter: every schedule and the data order follow it
        self.nonfinite_streak = 0  # batches in a row with a skipped step
        self.nonfinite_total = 0
        self._pending = {"g": False, "d": False}  # gradients accumulated in the open window
        self._bad = {"g": False, "d": False}  # a non-finite loss in the open window: skip its step
        self._skipped_this_batch = False
        self.val_preview: tuple[Tensor, Tensor] | None = None

    def _build_teacher(self) -> FrozenTeacher:
        t = self.cfg.teacher
        teacher = FrozenTeacher(t.name, pretrained=t.pretrained, normalize=t.normalize, weights_path=t.weights_path)
        width = self.autoencoder.config["align_dim"]
        if width != teacher.embed_dim:
            raise AetuneError(
                f"the latent projection is {width} wide but teacher {t.name} gives {teacher.embed_dim} channels: "
                f"--set model.args.align_dim={teacher.embed_dim}"
            )
        if not t.pretrained:
            log.warning("RANDOMLY INITIALISED teacher %s (teacher.pretrained: false): alignment is to noise", t.name)
        return teacher

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Adam for the autoencoder's trainable parameters (incl. ``linear_proj``) and for the discriminator."""
        betas = tuple(self.cfg.train.betas)
        kw = {"lr": self.learning_rate, "betas": betas, "weight_decay": self.cfg.train.weight_decay}
        trainable = [p for p in self.autoencoder.parameters() if p.requires_grad]
        return [torch.optim.Adam(trainable, **kw), torch.optim.Adam(self.discriminator.parameters(), **kw)]

    def gan_active(self, batch: int) -> bool:
        """Whether the GAN term and D updates are on at stage batch ``batch`` (``disc_start`` -1: never)."""
        return 0 <= self.loss_cfg.disc_start <= batch

    def batch_generator(self, device: torch.device) -> torch.Generator:
        """Noise for this batch, seeded by (seed, stage, batch, rank): identical after a resume."""
        seed = batch_seed(self.cfg.train.seed, self.stage, self.batches_seen, self.global_rank)
        return torch.Generator(device=device).manual_seed(seed)

    def generator_terms(self, x: Tensor, gen: torch.Generator, gan_active: bool) -> tuple[dict[str, Tensor], Tensor]:
        """Generator phase forward: images (B, 3, H, W) in [-1, 1] -> (loss terms, reconstruction)."""
        posterior = self.autoencoder.encode(x).latent_dist
        z = posterior.sample(generator=gen)  # (B, embed_dim, H/f, W/f)
        x_rec = self.autoencoder.decode(z).sample
        logits_fake = None
        if gan_active:
            with frozen(self.discriminator):  # the G loss must not leave gradients in D
                logits_fake = self.discriminator(x_rec)
        z_proj = feat = None
        if self.teacher is not None and self.loss_cfg.vf_weight > 0:
            z_proj = self.autoencoder.project(z)  # (B, align_dim, h, w)
            feat = self.teacher(x, grid=tuple(z.shape[-2:]))  # (B, align_dim, h, w), no gradient
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
        )
        return terms, x_rec

    def discriminator_terms(self, x: Tensor, x_rec: Tensor) -> dict[str, Tensor]:
        """Discriminator phase forward on real ``x`` and detached ``x_rec`` (two calls: per-call BatchNorm)."""
        return discriminator_objective(self.discriminator(x), self.discriminator(x_rec.detach()))

    def images(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """A loader batch -> images (B, 3, H, W) in [-1, 1], in the configured memory format."""
        return to_model_range(batch[0]).contiguous(memory_format=self.memory_format)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x = self.images(batch)
        gen = self.batch_generator(x.device)
        if self.cfg.data.hflip:
            flip = torch.rand(x.shape[0], generator=gen, device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        gan_active = self.gan_active(self.batches_seen)
        self._skipped_this_batch = False
        g_terms, x_rec = self.generator_terms(x, gen, gan_active)
        self._backward("g", g_terms["total"])
        logs = {
            "train/g_total": g_terms["total"].detach(),
            **{f"train/{k}": v for k, v in g_terms.items() if k != "total"},
        }
        if gan_active:
            d_terms = self.discriminator_terms(x, x_rec)
            self._backward("d", d_terms["total"])
            logs |= {
                "train/d_total": d_terms["total"].detach(),
                "train/logits_real": d_terms["logits_real"],
                "train/logits_fake": d_terms["logits_fake"],
            }
        self.batches_seen += 1
        if self.batches_seen % self.cfg.train.gradient_accumulation == 0 or self.batches_seen >= self.total_batches:
            self._close_window()
        self._count_nonfinite()
        bar = ("train/g_total", "train/rec_loss", "train/vf_loss", "train/d_total")  # shown in the progress bar
        self.log_dict({k: v for k, v in logs.items() if k not in bar}, on_step=True, on_epoch=False)
        self.log_dict({k: logs[k] for k in bar if k in logs}, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/nonfinite_total", float(self.nonfinite_total), on_step=True, on_epoch=False)

    def _backward(self, phase: str, loss: Tensor) -> None:
        """Backpropagate ``loss / accumulation``, unless it is non-finite on any rank (then mark the window bad)."""
        finite = bool(torch.isfinite(loss.detach()).item())
        if not self.trainer.strategy.reduce_boolean_decision(finite, all=True):
            self._bad[phase] = self._skipped_this_batch = True
            return
        self.manual_backward(loss / self.cfg.train.gradient_accumulation)
        self._pending[phase] = True

    @property
    def window_open(self) -> bool:
        """Gradients are accumulated but not yet applied (checkpoints wait for the window to close)."""
        return any(self._pending.values()) or any(self._bad.values())

    def _close_window(self) -> None:
        """Step each optimizer that has clean accumulated gradients; drop the gradients of a bad window."""
        for phase, opt in zip(("g", "d"), self.optimizers(), strict=True):
            if self._pending[phase] and not self._bad[phase]:
                opt.step()
            opt.zero_grad(set_to_none=True)
        self._pending = {"g": False, "d": False}
        self._bad = {"g": False, "d": False}

    def _count_nonfinite(self) -> None:
        if not self._skipped_this_batch:
            self.nonfinite_streak = 0
            return
        self.nonfinite_streak += 1
        self.nonfinite_total += 1
        if self.global_rank == 0:
            log.warning(
                "non-finite loss or gradient at stage %s batch %d: optimizer step skipped (%d in a row, limit %d)",
                self.stage,
                self.batches_seen,
                self.nonfinite_streak,
                self.cfg.train.max_nonfinite,
            )
        if self.nonfinite_streak >= self.cfg.train.max_nonfinite:
            stop_without_validation(self.trainer)  # the decision was reduced over ranks in _backward

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip the (already unscaled, under fp16) gradients; a non-finite norm drops them: no update at all."""
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        clip = self.cfg.train.gradient_clip_val
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        name = "g" if optimizer is self.optimizers()[0].optimizer else "d"
        self.log(f"train/grad_norm_{name}", norm, on_step=True, on_epoch=False)
        if not torch.isfinite(norm):
            for p in params:
                p.grad = None  # Adam skips parameters without gradients: the step is skipped, state intact
            # Under fp16 the loss scaler skips this step itself and lowers its scale: routine, not counted.
            if self.trainer.precision != "16-mixed":
                self._skipped_this_batch = True

    def on_validation_model_zero_grad(self) -> None:
        """Keep gradients accumulated by hand across a validation (Lightning would drop them here)."""

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x = self.images(batch)
        rec = self.autoencoder(x).float().clamp(-1.0, 1.0)  # posterior mode round trip
        a, b = (x + 1.0) / 2.0, (rec + 1.0) / 2.0  # [-1, 1] -> [0, 1]
        values = {"val/psnr": metrics.psnr(a, b), "val/ssim": metrics.ssim(a, b, y_channel=True)}
        if self.perceptual is not None and self.loss_cfg.lpips_pretrained:
            values["val/lpips"] = metrics.lpips_distance(self.perceptual, a, b)
        for k, v in values.items():
            self.log(
                k,
                v.mean(),
                on_step=False,
                on_epoch=True,
                batch_size=x.shape[0],
                sync_dist=True,
                prog_bar=k == "val/psnr",
            )
        self.log("batches", float(self.batches_seen), on_step=False, on_epoch=True, batch_size=x.shape[0])
        if batch_idx == 0:
            self.val_preview = (a[:PREVIEW_IMAGES].detach().cpu(), b[:PREVIEW_IMAGES].detach().cpu())

    @property
    def stage_finished(self) -> bool:
        """The stage ran its planned batches, or early stopping ended it (patience exhausted)."""
        es = self.trainer.early_stopping_callback if self._trainer is not None else None
        stopped = es is not None and es.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED
        return self.batches_seen >= self.total_batches or stopped

    def metadata(self) -> dict[str, Any]:
        """What a checkpoint says about itself (read by ``artifacts.load_autoencoder_checkpoint``)."""
        return {
            **self.meta,
            "family": self.cfg.model.family,
            "model_config": self.autoencoder.config,
            "config": self.cfg.to_dict(),
            "stage": self.stage,
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(FROZEN_PREFIXES)]:
            del state[key]
        checkpoint["aetune"] = {
            **self.metadata(),
            "batches_seen": self.batches_seen,
            "total_batches": self.total_batches,
            "stage_finished": self.stage_finished,
            "early_stopped": self.stage_finished and self.batches_seen < self.total_batches,
            "nonfinite_streak": self.nonfinite_streak,
            "nonfinite_total": self.nonfinite_total,
            "window_open": self.window_open,
            "rng": rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint["aetune"]
        if meta["family"] != self.cfg.model.family or meta["stage"] != self.stage:
            raise AetuneError(
                f"a {meta['family']} stage {meta['stage']} checkpoint cannot resume {self.cfg.model.family} "
                f"stage {self.stage}"
            )
        checkpoint["state_dict"].update({k: v for k, v in self.state_dict().items() if k.startswith(FROZEN_PREFIXES)})
        self.batches_seen = meta["batches_seen"]
        self.nonfinite_streak, self.nonfinite_total = meta["nonfinite_streak"], meta["nonfinite_total"]
        set_rng_state(meta["rng"])
