"""Recipes of the tiny autoencoders: ``taesd`` (images) and ``taehv`` (video clips), distilled from a teacher.

With a teacher (``distill.teacher``: any aetune model file, e.g. ``checkpoints/vavae_microdoppler_final.pt``),
as TAESD is trained: the encoder learns the teacher's latents (MSE, ``enc_distill_weight``); the decoder
learns to decode the *teacher's* latents (reconstruction, LPIPS, an adversarial term, and MSE to the
teacher's own decode, ``dec_distill_weight``). The adversarial term is Seraena's by default
(``discriminator.kind: seraena``, ``aetune/families/tiny/seraena.py``: a discriminator conditioned on the
latents, the decoder regressing onto its corrected output; video in groups of ``discriminator.frames``
frames with the clip's time-averaged latents), or an unconditional hinge PatchGAN (``patchgan``). The two
halves meet only through the teacher's latent space, so the encoder's gradient never reaches the decoder and
vice versa. Latents are scaled as the
teacher's statistics say (``distill.latent_stats``: per channel (z - mean) / std, the DiT's input), so the
tiny decoder decodes a DiT sample directly and TAESD's tanh clamp at +-3 sees unit-variance latents.
Without a teacher the pair trains end to end from pixels (reconstruction, LPIPS, adversarial).

Video (``taehv``): clips (B, T, 3, H, W); ``4 ceil(T / 4) - 3`` frames come back, compared with the first
frames of the clip; LPIPS, the PatchGAN and validation work frame by frame (``(B * T', 3, H, W)``), so
step 4's validation reports PSNR / SSIM / LPIPS per frame and its sample strip shows frames.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from aetune.config import Config
from aetune.data.cache import to_model_range
from aetune.data.feature_cache import FeatureCache, to_uint8
from aetune.data.kinds.video import register_video_kind
from aetune.errors import AetuneError
from aetune.families.tiny import seraena
from aetune.families.tiny.loading import load_tiny_weights
from aetune.families.tiny.losses import latent_distill_loss, pixel_loss
from aetune.losses import build_lpips, discriminator_objective, generator_loss
from aetune.models import Autoencoder, create_autoencoder, get_family
from aetune.models.checkpoint import load_autoencoder_checkpoint
from aetune.nn.patchgan import NLayerDiscriminator
from aetune.recipes import register_recipe
from aetune.recipes.base import Networks, PhaseResult, Recipe, StepContext, frozen, pretrained_files
from aetune.safe_load import load_torch_file

log = logging.getLogger(__name__)


class TeacherLatents(nn.Module):
    """A frozen autoencoder seen through its latent scaling: images -> scaled latents -> images.

    Args:
        model: the teacher (any family); frozen and pinned to eval mode here.
        shift, scale: (1, C, 1, 1) tensors: scaled = (z - shift) * scale.
    """

    def __init__(self, model: Autoencoder, shift: Tensor, scale: Tensor) -> None:
        super().__init__()
        self.model = model.requires_grad_(False).eval()
        self.register_buffer("shift", shift.float(), persistent=False)
        self.register_buffer("scale", scale.float(), persistent=False)

    def train(self, mode: bool = True) -> TeacherLatents:
        """Stay in eval mode whatever the parent module does (the teacher is a fixed function)."""
        return super().train(False)

    def _view(self, t: Tensor, z: Tensor) -> Tensor:
        return t if z.ndim == 4 else t.unsqueeze(1)  # (1, C, 1, 1) -> (1, 1, C, 1, 1) for (B, n, C, h, w)

    @torch.no_grad()
    def latents(self, x: Tensor) -> Tensor:
        """Images or clips in [-1, 1] -> the teacher's latents (posterior mode), scaled."""
        z = self.model.encode(x).latents.float()
        return (z - self._view(self.shift, z)) * self._view(self.scale, z)

    @torch.no_grad()
    def moments(self, x: Tensor) -> Tensor:
        """Images or clips in [-1, 1] -> the scaled posterior's mean and std, stacked on the channel axis.

        Returns:
            (B, 2C, h, w) [clips: (B, n, 2C, h, w)], float32; std is 0 for a teacher without a posterior.
        """
        enc = self.model.encode(x)
        dist = enc.latent_dist
        mean = (enc.latents if dist is None else dist.mean).float()
        std = torch.zeros_like(mean) if dist is None else dist.std.float()
        scaled = (mean - self._view(self.shift, mean)) * self._view(self.scale, mean)
        return torch.cat([scaled, std * self._view(self.scale, std)], dim=mean.ndim - 3)

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Scaled latents -> the teacher's reconstruction in [-1, 1] (not clamped)."""
        raw = z / self._view(self.scale, z) + self._view(self.shift, z)
        return self.model.decode(raw).sample.float()


def draw_latents(moments: Tensor, generator: torch.Generator | None) -> Tensor:
    """Latents from :meth:`TeacherLatents.moments`: ``mean + std * eps`` with eps from ``generator`` (the batch's,
    so a resumed run draws the same), or the mean when it is None; (B, 2C, ...) -> (B, C, ...)."""
    mean, std = moments.chunk(2, dim=moments.ndim - 3)
    if generator is None:
        return mean
    # randn over the logical shape, not randn_like: the draw must not depend on the moments' memory layout
    # (cached rows are contiguous, the teacher's own output may be channels-last)
    eps = torch.randn(std.shape, generator=generator, device=generator.device, dtype=std.dtype)
    return mean + std * eps.to(std.device)


def load_teacher(cfg: Config) -> TeacherLatents | None:
    """The teacher of ``cfg.distill`` (None without ``distill.teacher``).

    Raises:
        AetuneError: unreadable file, a ``latent_stats`` file that is not ``{"mean", "std"}`` of the teacher's
            width, or zero scale.
    """
    t = cfg.distill
    if t.teacher is None:
        return None
    model, meta = load_autoencoder_checkpoint(Path(t.teacher).expanduser())
    c = model.latent_channels
    if t.latent_stats is not None:
        stats = load_torch_file(Path(t.latent_stats).expanduser(), fix="pass the teacher's latents_stats.pt (step 5)")
        if not (isinstance(stats, dict) and {"mean", "std"} <= set(stats)):
            raise AetuneError(f"distill.latent_stats {t.latent_stats} is not a latents_stats.pt with 'mean' and 'std'")
        mean, std = (torch.as_tensor(stats[k]).float().reshape(-1) for k in ("mean", "std"))
        if mean.numel() != c or std.numel() != c or bool((std <= 0).any()):
            raise AetuneError(
                f"distill.latent_stats {t.latent_stats} has {mean.numel()} channels (std > 0 required); the "
                f"teacher {meta['family']} has {c}: pass the statistics of this teacher"
            )
        shift, scale = mean, 1.0 / std
    else:
        if t.latent_scale <= 0:
            raise AetuneError("distill.latent_scale must be > 0 (it multiplies the teacher's latents)")
        shift, scale = torch.full((c,), t.latent_shift), torch.full((c,), t.latent_scale)
    log.info("teacher: %s %s from %s, latents scaled per %s", meta["family"], meta.get("stage"), t.teacher,
             t.latent_stats or f"shift {t.latent_shift:g}, scale {t.latent_scale:g}")  # fmt: skip
    return TeacherLatents(model, shift.view(1, c, 1, 1), scale.view(1, c, 1, 1))


class TinyRecipe(Recipe):
    """``taesd``: images (B, 3, H, W); see the module docstring."""

    progress_keys = ("rec_loss", "enc_distill")

    def build(self) -> Networks:
        cfg = self.cfg
        autoencoder = create_autoencoder(cfg.model.family, **cfg.model.args)
        if cfg.model.gradient_checkpointing:
            autoencoder.set_gradient_checkpointing(True)
        nets: dict[str, nn.Module] = {}
        if self.loss.perceptual_weight > 0 or self.loss.lpips_pretrained:
            nets["perceptual"] = build_lpips(self.loss.lpips_pretrained)
        teacher = load_teacher(cfg)
        if teacher is not None:
            f, c = teacher.model.downsample_factor, teacher.model.latent_channels
            if (f, c) != (autoencoder.downsample_factor, autoencoder.latent_channels):
                raise AetuneError(
                    f"the teacher gives {c}-channel latents at 1/{f} resolution, the {cfg.model.family} model "
                    f"{autoencoder.latent_channels} at 1/{autoencoder.downsample_factor}: "
                    f"--set model.args.latent_channels={c} and the factor option of {cfg.model.family}"
                )
            nets["teacher"] = teacher
        gan = self.loss.disc_start >= 0 and self.loss.adv_weight > 0
        return Networks(autoencoder, self.build_discriminator() if gan else None, nets)

    def build_discriminator(self) -> nn.Module:
        """Seraena's latent-conditioned discriminator (3 x ``frames`` image channels for clips), or the PatchGAN."""
        d = self.cfg.discriminator
        if d.kind == "patchgan":
            return NLayerDiscriminator(ndf=d.ndf, n_layers=d.n_layers)
        channels = 3 * (d.frames if self.data_kind == "video" else 1)
        options = get_family(self.cfg.model.family).config_cls(**self.cfg.model.args)
        return seraena.ContextPatchDiscriminator(channels, options.latent_channels, d.ndf, d.buffer)

    @property
    def teacher(self) -> TeacherLatents | None:
        assert self.nets is not None
        return self.nets.frozen.get("teacher")  # type: ignore[return-value]

    def phase_active(self, phase: str, batch: int) -> bool:
        """The GAN term and D updates are on from ``disc_start`` (-1: never)."""
        return phase == "g" or 0 <= self.loss.disc_start <= batch

    def inputs(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """(uint8 images (B, 3, H, W), labels) -> the images in [-1, 1], twice (reconstruction)."""
        x = to_model_range(batch[0])
        return x, x

    def frames(self, y: Tensor) -> Tensor:
        """The model's output as a batch of images: (B, 3, H, W) as is (videos flatten their frames)."""
        return y

    def seraena_view(self, y: Tensor, real: Tensor, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(fake, real, latents) as Seraena's discriminator sees them: images (B, 3, H, W) and their latents."""
        return y, real, z

    def generator_step(self, x: Tensor, target: Tensor, ctx: StepContext) -> PhaseResult:
        ae, loss, teacher = self.autoencoder, self.loss, self.teacher
        terms: dict[str, Tensor] = {}
        z = ae.encode(x).latents
        if teacher is None:
            x_rec = ae.decode(z).sample  # end to end from pixels
        else:
            z_t = self.teacher_latents(x, ctx.keys, ctx.generator)  # (B, C, h, w) [video: (B, n, C, h, w)], no grad
            terms["enc_distill"] = loss.enc_distill_weight * latent_distill_loss(z, z_t)
            x_rec = ae.decode(z_t).sample  # the decoder learns the teacher's latent space
            if loss.dec_distill_weight > 0:
                x_t = self.teacher_decode(x, z_t, ctx.keys)  # the teacher's reconstruction, no grad
                terms["dec_distill"] = loss.dec_distill_weight * pixel_loss(x_rec, x_t, "l2")
        fake = self.frames(x_rec)  # (N, 3, H, W)
        logs = {"rec_loss": pixel_loss(fake, target, loss.rec_kind)}
        terms["rec"] = loss.rec_weight * logs["rec_loss"]
        if loss.perceptual_weight > 0:
            logs["lpips"] = self.perceptual(fake.float(), target.float()).float().mean()  # type: ignore[misc]
            terms["lpips"] = loss.perceptual_weight * logs["lpips"]
        carry: dict[str, Any] = {"fake": fake, "real": target}
        if self.discriminator is not None and self.phase_active("d", ctx.batch):
            if isinstance(self.discriminator, seraena.ContextPatchDiscriminator):
                latents = z.detach() if teacher is None else z_t  # what the decoder decoded
                g_fake, g_real, g_latents = self.seraena_view(x_rec, target, latents)
                step = seraena.correction(self.discriminator, g_real, g_fake, g_latents)
                logs["g_adv"] = seraena.generator_loss(g_fake, step)
                carry = {"fake": g_fake, "real": g_real, "latents": g_latents}
            else:
                with frozen(self.discriminator):  # the G loss must not leave gradients in D
                    logs["g_adv"] = generator_loss(self.discriminator(fake))
            terms["gan"] = loss.adv_weight * logs["g_adv"]
        total = torch.stack([t.float() for t in terms.values()]).sum()
        logs |= {k: v.detach() for k, v in terms.items() if k in ("enc_distill", "dec_distill")}
        parts = dict(terms) if ctx.parts else {}
        return PhaseResult(total, {k: v.detach() for k, v in logs.items()}, parts, carry)

    def teacher_latents(
        self, x: Tensor, keys: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """The teacher's scaled latents of ``x``: drawn from its posterior with ``generator`` (``distill.latents:
        sample``), else (``mode``, or no generator) its mean. The moments come from the feature cache when every
        image of the batch is in it."""
        assert self.teacher is not None
        moments = None
        if self.feature_cache is not None and not self.cfg.data.hflip:
            moments = self.feature_cache.lookup(to_uint8(x), keys)
        if moments is None:
            moments = self.teacher.moments(x)
        return draw_latents(moments, generator if self.cfg.distill.latents == "sample" else None)

    decode_cache: FeatureCache | None = None
    """The teacher's decodes of the training images' posterior modes (:meth:`prepare_feature_cache`); None: it runs."""

    def teacher_decode(self, x: Tensor, z_t: Tensor, keys: Tensor | None = None) -> Tensor:
        """The teacher's reconstruction (B, 3, H, W) in [-1, 1] (not clamped) of its latents ``z_t`` of ``x``: the
        cached decode when every image of the batch is in the decode cache (which exists only when ``z_t`` is the
        posterior mode, a function of the image alone), else the teacher decodes ``z_t``."""
        assert self.teacher is not None
        cached = None if self.decode_cache is None else self.decode_cache.lookup(to_uint8(x), keys)
        return self.teacher.decode(z_t) if cached is None else cached

    def prepare_feature_cache(
        self, images: np.ndarray, work_dir: Path, device: torch.device, progress: bool = True
    ) -> FeatureCache | None:
        """Build or load the cache of the teacher's scaled posterior moments of ``images`` (N, S, S, 3) uint8, use it;
        with decoder distillation (``loss.dec_distill_weight`` > 0) of the posterior mode (``distill.latents:
        mode``), a second cache of the teacher's decodes, keyed the same way (``teacher_decode``). With ``sample``
        each step decodes a fresh draw, which no cache can hold: the teacher decodes every step.

        None (the teacher runs every step) without a teacher, with ``distill.cache`` off or ``data.hflip`` on.
        """
        if self.teacher is None or not self.cfg.distill.cache or self.cfg.data.hflip:
            return None
        teacher = self.teacher.to(device)
        d, size = self.cfg.distill, int(images.shape[1])
        settings = {"teacher": d.teacher, "latent_stats": d.latent_stats, "image_size": size}
        # Mean and std, not latents: a cached step still draws its own sample.
        self.feature_cache = FeatureCache.build_or_load(
            work_dir, f"distill_teacher_{size}px", teacher, {**settings, "cached": "posterior moments"}, images,
            lambda u8: teacher.moments(to_model_range(u8)), device=device, progress=progress,
        )  # fmt: skip
        if self.loss.dec_distill_weight > 0 and d.latents == "mode":
            self.decode_cache = FeatureCache.build_or_load(
                work_dir, f"distill_teacher_decode_{size}px", teacher, {**settings, "cached": "decode of the mode"},
                images, lambda u8: teacher.decode(draw_latents(teacher.moments(to_model_range(u8)), None)),
                device=device, progress=progress,
            )  # fmt: skip
        return self.feature_cache

    def discriminator_step(self, x: Tensor, target: Tensor, g: PhaseResult, ctx: StepContext) -> PhaseResult:
        """Seraena's regression on real and replayed fake images with their latents, or the PatchGAN's hinge loss
        on real frames and the detached reconstructions (two calls: per-call BatchNorm)."""
        assert self.discriminator is not None
        if isinstance(self.discriminator, seraena.ContextPatchDiscriminator):
            c = g.carry
            d = self.discriminator
            loss = seraena.discriminator_loss(d, c["real"], c["fake"].detach(), c["latents"], ctx.generator)
            return PhaseResult(loss, {"d_mse": loss.detach()})
        terms = discriminator_objective(
            self.discriminator(g.carry["real"]), self.discriminator(g.carry["fake"].detach())
        )
        return PhaseResult(terms["total"], {"logits_real": terms["logits_real"], "logits_fake": terms["logits_fake"]})

    def reconstruct(self, autoencoder: Autoencoder, x: Tensor) -> Tensor:
        """Deterministic round trip, as images (video frames flattened), clamped to [-1, 1], float32."""
        return self.frames(autoencoder(x)).float().clamp(-1.0, 1.0)

    def notes(self) -> dict[str, Any]:
        return {"random_teacher": False, "lpips": self.loss.lpips_pretrained, "teacher": self.cfg.distill.teacher}

    def load_pretrained(self, path: str) -> str:
        """Released weights: ``taesd_encoder.pth`` + ``taesd_decoder.pth`` (comma-separated), a diffusers
        ``AutoencoderTiny`` file, a ``taehv.pth``; strictly (``aetune.families.tiny.loading``)."""
        report = load_tiny_weights(self.autoencoder, *pretrained_files(path))
        log.info("%s", report.summary())
        return f"pretrained {report.source}"


class VideoTinyRecipe(TinyRecipe):
    """``taehv``: clips (B, T, 3, H, W); targets and outputs as frames (B * T', 3, H, W)."""

    data_kind = "video"

    def __init__(self, cfg: Config, stage: str) -> None:
        super().__init__(cfg, stage)
        c = cfg.clip  # the kind API carries only the image size
        register_video_kind(c.frames, c.stride, c.max_delta, c.crop_source if c.crop else None)

    def inputs(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """(uint8 clips (B, T, 3, H, W), labels) -> (clips in [-1, 1], the frames the model returns, flattened).

        A (B, 3, H, W) batch is one-frame clips (the model's image mode): the images are their own target.
        """
        x = to_model_range(batch[0])
        if x.ndim == 4:
            return x, x
        t_out = self.autoencoder.output_frames(x.shape[1])  # type: ignore[operator]
        return x, x[:, :t_out].flatten(0, 1)  # output frame j reconstructs input frame j

    def frames(self, y: Tensor) -> Tensor:
        return y.flatten(0, 1) if y.ndim == 5 else y  # (B, T', 3, H, W) -> (B * T', 3, H, W)

    def seraena_view(self, y: Tensor, real: Tensor, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Clips as groups of ``discriminator.frames`` consecutive frames stacked on the channel axis, each group
        with its clip's time-averaged latents (the TAEHV notebook: latents cannot be assigned to single frames).

        Args:
            y: the decoded clips (B, T', 3, H, W); real: their target frames (B * T', 3, H, W); z: the latents
                (B, n, C, h, w). Clips are padded to a multiple of the group with their first frames.

        Returns:
            fake (B * G, 3 g, H, W), real (B * G, 3 g, H, W), latents (B * G, C, h, w).
        """
        if y.ndim == 4:
            return y, real, z
        g, (b, t) = self.cfg.discriminator.frames, y.shape[:2]
        pad = -t % g

        def group(frames: Tensor) -> Tensor:
            frames = torch.cat([frames, frames[:, :pad]], 1) if pad else frames
            return frames.reshape(b * (t + pad) // g, g * frames.shape[2], *frames.shape[3:])

        latents = z.mean(1).repeat_interleave((t + pad) // g, dim=0)
        return group(y), group(real.reshape(y.shape)), latents

    def prepare_feature_cache(
        self, images: np.ndarray, work_dir: Path, device: torch.device, progress: bool = True
    ) -> FeatureCache | None:
        """No cache for clips (the feature cache keys single images): the teacher runs every step."""
        return None


register_recipe("taesd", TinyRecipe)
register_recipe("taehv", VideoTinyRecipe)
