"""Recipe of ``rae``: train the ViT decoder behind a frozen representation encoder (bytetriper/RAE stage 1).

Input: images of any size; with ``augment.random_crop`` a random window of their 1.5 x resize per step (the
reference's 384 -> 256 crops), else the whole image resized to the model's size (as validation always).
Generator phase: raw encoder tokens (from the shared frozen-feature cache on whole images) + noise
``z + tau * u * n`` -> decoder -> L1 + LPIPS, then the adaptive GAN term (weight 0.75) from ``gan_start``, with
the discriminator in eval mode on a DiffAugmented reconstruction. Discriminator phase (from ``disc_start``): the
decoder again on the clean tokens (no noise, no gradient; by default after this batch's generator step, as the
reference: ``loss.fake_after_g_step``), clamped and rounded to 8 bit; real (the generator phase's view) and fake
DiffAugmented; hinge loss; one discriminator call for both, whose heads normalise each sample on its own.
Numbers: ``tests/test_rae_recipe.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from aetune.data.cache import to_model_range
from aetune.data.feature_cache import FeatureCache, to_uint8
from aetune.errors import AetuneError
from aetune.families.rae.augment import random_crops, resize_images
from aetune.families.rae.discriminator import DinoFeatures, DinoHeads, diff_augment
from aetune.families.rae.loading import load_rae_weights
from aetune.families.rae.losses import quantize_fakes, rae_generator_objective
from aetune.families.rae.model import RAE
from aetune.families.rae.weights import ENCODER_WEIGHTS
from aetune.losses import build_lpips, hinge_d_loss
from aetune.models import Autoencoder, create_autoencoder
from aetune.recipes import register_recipe
from aetune.recipes.base import Networks, PhaseResult, Recipe, StepContext, frozen, pretrained_files

log = logging.getLogger(__name__)


class RAERecipe(Recipe):
    """Decoder training with L1 + LPIPS + adaptive GAN against a DINO discriminator (``rae``)."""

    progress_keys = ("rec_loss", "lpips_loss")

    def build(self) -> Networks:
        cfg = self.cfg
        if cfg.data.hflip:
            raise AetuneError("rae does not flip images (the reference does not): set data.hflip false")
        if cfg.augment.random_crop and cfg.encoder.cache_tokens:
            raise AetuneError(
                "augment.random_crop gives the encoder a new window of each image every step, so encoder.cache_tokens "
                "(one view per image) must be false"
            )
        autoencoder = create_autoencoder("rae", **cfg.model.args)
        assert isinstance(autoencoder, RAE)
        self._load_encoder(autoencoder)
        autoencoder.set_gradient_checkpointing(cfg.model.gradient_checkpointing)
        if 0 <= self.loss.gan_start < self.loss.disc_start or (self.loss.gan_start >= 0 > self.loss.disc_start):
            raise AetuneError(
                f"loss.gan_start={self.loss.gan_start} comes before loss.disc_start={self.loss.disc_start}: the GAN "
                "term would follow an untrained discriminator (released: D from epoch 6, GAN from epoch 8)"
            )
        d = cfg.discriminator
        features = DinoFeatures(d.pretrained, d.weights_path, d.tanh_gelu, d.img_size, d.depth, d.width, d.heads)
        if not d.pretrained:
            log.warning("RANDOMLY INITIALISED DINO discriminator backbone (discriminator.pretrained: false)")
        heads = DinoHeads(features.embed_dim, 1 + len(features.key_blocks), d.kernel_size)
        nets: dict[str, nn.Module] = {"dino": features}
        if self.loss.perceptual_weight > 0 or self.loss.lpips_pretrained:
            nets["perceptual"] = build_lpips(self.loss.lpips_pretrained)
        return Networks(autoencoder, heads, nets)

    def _load_encoder(self, model: RAE) -> None:
        """The released encoder weights (``encoder.weights_path``, else the Hugging Face cache), or a loud warning."""
        enc = self.cfg.encoder
        spec = model.encoder.spec
        if not enc.pretrained:
            if enc.weights_path is not None:
                raise AetuneError("encoder.weights_path is given but encoder.pretrained is false: set it true")
            log.warning("RANDOMLY INITIALISED %s encoder (encoder.pretrained: false): latents mean nothing", spec.kind)
            return
        path = enc.weights_path
        if path is None:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(spec.hub_repo, spec.hub_file)
            if not isinstance(cached, str):
                raise AetuneError(
                    f"weights of encoder {model.encoder.name} are neither recorded by step 2 nor in the Hugging Face "
                    f"cache: run step2_download_models.py --only {ENCODER_WEIGHTS[model.encoder.name]} (step 4 then "
                    f"finds it), or attach hf://{spec.hub_repo}/{spec.hub_file} and pass "
                    "--set encoder.weights_path=<file>"
                )
            path = cached
        if not Path(path).is_file():
            raise AetuneError(f"encoder weights file {path} does not exist (encoder {model.encoder.name})")
        log.info("%s", load_rae_weights(model, path).summary())

    def phase_active(self, phase: str, batch: int) -> bool:
        """D updates from ``disc_start`` (-1: never)."""
        return phase == "g" or 0 <= self.loss.disc_start <= batch

    def gan_active(self, batch: int) -> bool:
        """The GAN term in the generator loss from ``gan_start`` (-1: never)."""
        return 0 <= self.loss.gan_start <= batch

    def inputs(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """(uint8 images (B, 3, H, W) of any size, labels) -> (the images in [-1, 1], the same resized to the model's
        (B, 3, S, S)): crops are taken from the first, the whole-image target is the second (``resize_images``)."""
        x = to_model_range(batch[0])
        return x, resize_images(x, self.rae.image_size)

    def reconstruct(self, autoencoder: Autoencoder, x: Tensor) -> Tensor:
        """Validation: images of any size in [-1, 1] -> the reconstruction (B, 3, S, S) of their resize to S."""
        return super().reconstruct(autoencoder, resize_images(x, self.rae.image_size))

    @property
    def rae(self) -> RAE:
        model = self.autoencoder
        assert isinstance(model, RAE)
        return model

    @property
    def features(self) -> DinoFeatures:
        assert self.nets is not None
        return self.nets.frozen["dino"]  # type: ignore[return-value]

    def prepare_feature_cache(
        self, images: np.ndarray, work_dir: Path, device: torch.device, progress: bool = True
    ) -> FeatureCache | None:
        """Build or load the encoder tokens of ``images`` (N, S, S, 3) uint8 in the shared frozen-feature cache
        (float16 on disk, keyed by image content, encoder weights and settings); None if ``encoder.cache_tokens``
        is off. Under DDP, call it on every rank at the same point (rank 0 builds, a barrier)."""
        if not self.cfg.encoder.cache_tokens:
            return None
        model = self.rae
        model.encoder.to(device)
        size, view = images.shape[1], model.image_size
        settings = {"encoder": model.encoder.name, "input_size": model.encoder.input_size, "image_size": size}
        settings["view_size"] = view  # the encoder sees each image resized to the model's size
        self.feature_cache = FeatureCache.build_or_load(
            work_dir, f"rae_tokens_{size}px", model.encoder, settings, images,
            lambda u8: model.encode_tokens(resize_images(to_model_range(u8), view)), device=device, progress=progress,
        )  # fmt: skip
        return self.feature_cache

    def tokens(self, x: Tensor, view: Tensor, keys: Tensor | None = None) -> Tensor:
        """Raw tokens (B, C, g, g) of ``view``, the model-size resize (B, 3, S, S) of the loader's images ``x``
        (both in [-1, 1]): from the shared feature cache (keyed by ``x``) when it holds the whole batch, else from
        the encoder."""
        if self.feature_cache is not None:
            cached = self.feature_cache.lookup(to_uint8(x), keys)
            if cached is not None:
                return cached
        return self.rae.encode_tokens(view)

    def generator_step(self, x: Tensor, target: Tensor, ctx: StepContext) -> PhaseResult:
        if self.cfg.augment.random_crop:
            target = random_crops(x, self.rae.image_size, ctx.generator)  # (B, 3, S, S), a new window every step
            tokens = self.rae.encode_tokens(target)  # nothing to cache: build() refuses the token cache
        else:
            tokens = self.tokens(x, target, ctx.keys)  # (B, C, g, g) raw; the frozen encoder has no gradient
        noisy = self.rae.add_noise(tokens, ctx.generator) if self.loss.token_noise else tokens
        x_rec = self.rae.decode_tokens(noisy)  # (B, 3, S, S) in [-1, 1]
        logits_fake = None
        if self.gan_active(ctx.batch):
            assert self.discriminator is not None
            self.discriminator.eval()  # as the reference: no spectral-norm power iteration in the G phase
            with frozen(self.discriminator):  # the G loss must not leave gradients in D
                fake = diff_augment(x_rec, self.loss.diffaug_prob, ctx.generator)
                logits_fake = self.discriminator(self.features(fake))
        terms = rae_generator_objective(
            target,
            x_rec,
            perceptual=self.perceptual,
            perceptual_weight=self.loss.perceptual_weight,
            logits_fake=logits_fake,
            disc_weight=self.loss.disc_weight,
            last_layer=self.rae.gan_last_layer,
            with_parts=ctx.parts,
            eps=self.loss.adaptive_eps,
        )
        parts = terms.pop("parts", {})
        total = terms.pop("total")
        return PhaseResult(total, terms, parts, {"tokens": tokens, "real": target})  # type: ignore[arg-type]

    def discriminator_step(self, x: Tensor, target: Tensor, g: PhaseResult, ctx: StepContext) -> PhaseResult:
        """Hinge loss on the generator phase's view of the images and their clean, 8-bit reconstruction, both
        DiffAugmented."""
        assert self.discriminator is not None
        self.discriminator.train()
        with torch.no_grad():
            fake = self.fake(g.carry["tokens"])
            both = torch.cat(
                [
                    diff_augment(g.carry["real"], self.loss.diffaug_prob, ctx.generator),
                    diff_augment(fake, self.loss.diffaug_prob, ctx.generator),
                ]
            )
            feats = self.features(both)  # frozen: only the heads need gradients
        logits_real, logits_fake = self.discriminator(feats).chunk(2)
        loss = hinge_d_loss(logits_real, logits_fake)
        accuracy = (logits_real.detach() > logits_fake.detach()).float().mean()
        logs = {
            "logits_real": logits_real.detach().mean(),
            "logits_fake": logits_fake.detach().mean(),
            "d_accuracy": accuracy,
        }
        return PhaseResult(loss, logs)

    def fake(self, tokens: Tensor) -> Tensor:
        """The discriminator's fake: raw tokens (B, C, g, g) decoded without noise (as the reference's eval-mode
        forward) -> (B, 3, S, S) in [-1, 1], clamped and rounded to 8 bit with ``loss.quantize_fakes``."""
        fake = self.rae.decode_tokens(tokens)
        return quantize_fakes(fake) if self.loss.quantize_fakes else fake

    def fake_after_g_step(self) -> bool:
        """``loss.fake_after_g_step``: the reference decodes D's fake after the generator's optimizer step."""
        return self.loss.fake_after_g_step

    def notes(self) -> dict[str, Any]:
        return {
            "random_encoder": not self.cfg.encoder.pretrained,
            "random_discriminator": not self.cfg.discriminator.pretrained,
            "lpips": self.loss.lpips_pretrained,
        }

    def load_pretrained(self, path: str) -> str:
        """Released files (comma-separated), each strictly: a decoder ``model.pt``, a diffusers ``AutoencoderRAE``
        file, an encoder file."""
        sources = []
        for file in pretrained_files(path):
            report = load_rae_weights(self.rae, file)
            log.info("%s", report.summary())
            sources.append(report.source)
        return f"pretrained {' + '.join(sources)}"


register_recipe("rae", RAERecipe)
