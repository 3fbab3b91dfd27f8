"""Parity with LightningDiT's VA-VAE: the reference fixtures (tests/fixtures/README.md) reproduced.

The fixture holds a ch=32 model with every key name of the released f16d32 model, its outputs on a fixed
input, and one generator and one discriminator step of LightningDiT's loss. Tolerances are the issue's;
on CPU in float32 the match is exact.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aetune.losses import ObjectiveWeights, discriminator_objective, generator_objective, vf_loss_parts
from aetune.models import create_autoencoder, load_weights
from aetune.nn.patchgan import NLayerDiscriminator

FIXTURE = Path(__file__).parent / "fixtures" / "vavae_reference_small.pt"


def rel_err(ours: torch.Tensor, ref: torch.Tensor | float) -> float:
    """Max abs difference relative to the reference's max magnitude."""
    ref = torch.as_tensor(ref, dtype=torch.float32)
    return ((ours.float() - ref).abs().max() / ref.abs().max()).item()


@pytest.fixture(scope="module")
def ref() -> dict:
    return torch.load(FIXTURE, weights_only=True)


@pytest.fixture(scope="module")
def loaded(ref: dict):
    """The fixture's weights (stored float16, used as float32) in our vavae and discriminator."""
    model = create_autoencoder("vavae", ch=32)
    disc = NLayerDiscriminator(ndf=8)
    state = {k: v.float() if v.is_floating_point() else v for k, v in ref["state_dict"].items()}
    report = load_weights(model, state, discriminator=disc)
    assert report.missing == [] and report.unexpected == [] and report.skipped == ["loss.logvar"]
    return model, disc


def test_posterior_reconstruction_and_kl(ref: dict, loaded) -> None:
    model, _ = loaded
    with torch.no_grad():
        enc = model.encode(ref["x"])
        rec = model.decode(enc.latent_dist.mode()).sample
    assert rel_err(enc.latent_dist.mean, ref["posterior_mean"]) < 1e-5
    assert rel_err(enc.latent_dist.logvar, ref["posterior_logvar"]) < 1e-5
    assert rel_err(rec, ref["reconstruction"]) < 1e-5
    assert rel_err(enc.latent_dist.kl(), ref["kl"]) < 1e-5
    torch.testing.assert_close(enc.latents, enc.latent_dist.mean)


def test_generator_and_discriminator_objectives(ref: dict, loaded) -> None:
    model, disc = loaded
    x = ref["x"]
    posterior = model.encode(x).latent_dist
    z = posterior.mode()  # the fixture uses the mode for determinism
    x_rec = model.decode(z).sample
    weights = ObjectiveWeights(perceptual_weight=0.0, distmat_margin=0.25, cos_margin=0.5)  # fixture settings
    g = generator_objective(
        x, x_rec, posterior, weights=weights, perceptual=None, logits_fake=disc(x_rec), z_proj=model.project(z),
        teacher_feat=ref["aux_feature"], gan_last_layer=model.gan_last_layer,
        align_last_layer=model.align_last_layer, gan_active=True,
    )  # fmt: skip
    d = discriminator_objective(disc(x.detach()), disc(x_rec.detach()))
    o = ref["objectives"]
    pairs = {
        "nll_loss": (g["nll_loss"], o["nll_loss"]),
        "rec_loss": (g["rec_loss"], o["rec_loss"]),
        "kl_loss": (g["kl_loss"], o["kl_loss"]),
        "g_loss": (g["g_loss"], o["g_loss"]),
        "d_weight": (g["d_weight"], o["d_weight"]),
        "vf_loss": (g["vf_loss"], o["vf_loss"]),
        "vf_weight": (g["vf_weight"], o["vf_weight"]),
        "generator_total": (g["total"], o["generator_total"]),
        "discriminator_total": (d["total"], o["discriminator_total"]),
        "d_logits_real": (d["logits_real"], o["d_logits_real"]),
        "d_logits_fake": (d["logits_fake"], o["d_logits_fake"]),
    }
    errors = {k: rel_err(ours, theirs) for k, (ours, theirs) in pairs.items()}
    assert max(errors.values()) < 1e-4, errors
    assert all(v.dtype == torch.float32 for v in (*g.values(), *d.values()))
    assert g["total"].requires_grad and d["total"].requires_grad


@pytest.mark.parametrize(("key", "margins"), [("dm0_cm0", (0.0, 0.0)), ("dm0.25_cm0.5", (0.25, 0.5))])
def test_vf_parts(ref: dict, key: str, margins: tuple[float, float]) -> None:
    distmat, cos = vf_loss_parts(ref["vf_inputs"]["z"], ref["vf_inputs"]["f"], *margins)
    want_distmat, want_cos = ref["vf_parts"][key]
    assert abs(distmat.item() - want_distmat) <= 1e-6
    assert abs(cos.item() - want_cos) <= 1e-6
