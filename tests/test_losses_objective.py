"""The composed generator and discriminator objectives on a tiny VA-VAE (beyond the fixture's settings)."""

from __future__ import annotations

import pytest
import torch

from aetune.losses import ObjectiveWeights, adaptive_weight, build_lpips, discriminator_objective, generator_objective
from aetune.models import create_autoencoder, get_family
from aetune.nn.patchgan import NLayerDiscriminator

KEYS = {
    "total",
    "nll_loss",
    "rec_loss",
    "kl_loss",
    "g_loss",
    "d_weight",
    "vf_loss",
    "vf_weight",
    "vf_distmat",
    "vf_cos",
}


@pytest.fixture(scope="module")
def lpips_random():
    with pytest.warns(UserWarning, match="random VGG backbone"):
        return build_lpips(pretrained=False)


def step(weights: ObjectiveWeights, *, gan: bool = True, align: bool = True, perceptual=None, autocast: bool = False):
    """One forward of a tiny vavae + discriminator, then the generator objective."""
    torch.manual_seed(0)
    model = create_autoencoder("vavae", **get_family("vavae").tiny)
    disc = NLayerDiscriminator(ndf=8)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        post = model.encode(x).latent_dist
        z = post.sample(generator=torch.Generator().manual_seed(2))
        x_rec = model.decode(z).sample
        z_proj = model.project(z) if align else None
        feat = torch.randn(z_proj.shape, generator=torch.Generator().manual_seed(3)) if align else None
        out = generator_objective(
            x, x_rec, post, weights=weights, perceptual=perceptual, logits_fake=disc(x_rec) if gan else None,
            z_proj=z_proj, teacher_feat=feat, gan_last_layer=model.gan_last_layer,
            align_last_layer=model.align_last_layer, gan_active=gan,
        )  # fmt: skip
    return out, model, disc, x, x_rec


def test_total_is_the_weighted_sum_and_everything_is_float32(lpips_random) -> None:
    w = ObjectiveWeights(kl_weight=1e-3, distmat_margin=0.1, cos_margin=0.2)
    out, model, *_ = step(w, perceptual=lpips_random)
    assert set(out) == KEYS
    assert all(v.dtype == torch.float32 and v.ndim == 0 for v in out.values())
    assert out["total"].requires_grad and not any(v.requires_grad for k, v in out.items() if k != "total")
    want = out["nll_loss"] + 1e-3 * out["kl_loss"] + out["d_weight"] * out["g_loss"] + out["vf_weight"] * out["vf_loss"]
    torch.testing.assert_close(out["total"].detach(), want)
    torch.testing.assert_close(out["vf_loss"], out["vf_distmat"] + out["vf_cos"])
    assert out["d_weight"] > 0 and out["vf_weight"] > 0
    no_lpips, *_ = step(ObjectiveWeights(kl_weight=1e-3, perceptual_weight=0.0, distmat_margin=0.1, cos_margin=0.2))
    assert out["nll_loss"] > no_lpips["nll_loss"]  # LPIPS adds C*H*W * d per image
    out["total"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_adaptive_gan_weight_is_measured_at_decoder_conv_out() -> None:
    w = ObjectiveWeights(perceptual_weight=0.0, disc_weight=0.5)
    torch.manual_seed(0)
    model = create_autoencoder("kl", **get_family("kl").tiny)
    disc = NLayerDiscriminator(ndf=8)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    post = model.encode(x).latent_dist
    x_rec = model.decode(post.mode()).sample
    logits = disc(x_rec)
    out = generator_objective(
        x, x_rec, post, weights=w, perceptual=None, logits_fake=logits, z_proj=None, teacher_feat=None,
        gan_last_layer=model.gan_last_layer, align_last_layer=model.align_last_layer, gan_active=True,
    )  # fmt: skip
    nll = (x - x_rec).abs().sum() / 2
    want = 0.5 * adaptive_weight(nll, -logits.mean(), model.decoder.conv_out.weight, 1e4)
    torch.testing.assert_close(out["d_weight"], want)
    assert out["vf_loss"].item() == 0.0 and out["vf_weight"].item() == 0.0


def test_gan_inactive_means_no_discriminator_and_zero_weight() -> None:
    out, *_ = step(ObjectiveWeights(perceptual_weight=0.0), gan=False)
    assert out["d_weight"].item() == 0.0 and out["g_loss"].item() == 0.0
    torch.testing.assert_close(
        out["total"].detach(), out["nll_loss"] + 1e-6 * out["kl_loss"] + out["vf_weight"] * out["vf_loss"]
    )
    x = torch.zeros(1, 3, 8, 8)
    common = dict(weights=ObjectiveWeights(perceptual_weight=0.0), perceptual=None, z_proj=None, teacher_feat=None,
                  gan_last_layer=None, align_last_layer=None)  # fmt: skip
    with pytest.raises(ValueError, match="gan_active=False but logits_fake is given"):
        generator_objective(x, x, None, logits_fake=torch.zeros(1, 1, 2, 2), gan_active=False, **common)
    with pytest.raises(ValueError, match="gan_active=True but logits_fake is None"):
        generator_objective(x, x, None, logits_fake=None, gan_active=True, **common)
    with pytest.raises(ValueError, match="z_proj and teacher_feat go together"):
        generator_objective(x, x, None, logits_fake=None, gan_active=False, **{**common, "z_proj": x})


def test_fixed_vf_weight_when_not_adaptive() -> None:
    out, *_ = step(ObjectiveWeights(perceptual_weight=0.0, vf_adaptive=False, vf_weight=0.5))
    assert out["vf_weight"].item() == 0.5


def test_under_no_grad_adaptive_weights_are_zero() -> None:
    with torch.no_grad():
        out, *_ = step(ObjectiveWeights(perceptual_weight=0.0))
    assert out["d_weight"].item() == 0.0 and out["vf_weight"].item() == 0.0
    torch.testing.assert_close(out["total"], out["nll_loss"] + 1e-6 * out["kl_loss"])


def test_bf16_autocast_inputs_give_float32_losses() -> None:
    out, *_ = step(ObjectiveWeights(perceptual_weight=0.0), autocast=True)
    assert all(v.dtype == torch.float32 for v in out.values())
    assert torch.isfinite(out["total"]) and out["d_weight"] > 0


def test_discriminator_objective_is_hinge_with_logit_means() -> None:
    real, fake = torch.full((2, 1, 3, 3), 0.5, dtype=torch.bfloat16), torch.full((2, 1, 3, 3), -0.25)
    out = discriminator_objective(real, fake)
    assert out["total"].item() == pytest.approx(0.5 * (0.5 + 0.75))
    assert out["logits_real"].item() == 0.5 and out["logits_fake"].item() == -0.25
    assert all(v.dtype == torch.float32 for v in out.values())
