"""The KL encoder/decoder's two op sequences (``KLConfig.kernels``): ``exact`` reproduces the reference fixture bit
for bit on CPU float32; ``fast`` (``F.silu``, ``scaled_dot_product_attention``) stays within 1e-5 relative of it,
in the forward pass and in the gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aetune.models import create_autoencoder, load_weights
from aetune.models.base import ModelConfigError

FIXTURE = Path(__file__).parent / "fixtures" / "vavae_reference_small.pt"


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


@pytest.fixture(scope="module")
def ref() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def model_for(ref: dict, kernels: str):
    model = create_autoencoder("vavae", ch=32, kernels=kernels)
    state = {k: v.float() if v.is_floating_point() else v for k, v in ref["state_dict"].items()}
    load_weights(model, state)
    return model


@pytest.mark.parametrize("kernels", ["exact", "auto"])
def test_exact_kernels_are_bit_identical_to_the_fixture(ref: dict, kernels: str) -> None:
    model = model_for(ref, kernels)  # "auto" on a CPU tensor is exact
    with torch.no_grad():
        enc = model.encode(ref["x"])
        rec = model.decode(enc.latent_dist.mode()).sample
    assert torch.equal(enc.latent_dist.mean, ref["posterior_mean"])
    assert torch.equal(rec, ref["reconstruction"])


def test_fast_kernels_within_1e5_of_the_fixture_forward_and_backward(ref: dict) -> None:
    exact, fast = model_for(ref, "exact"), model_for(ref, "fast")
    outs, grads = [], []
    for model in (exact, fast):
        enc = model.encode(ref["x"])
        rec = model.decode(enc.latent_dist.mode()).sample
        rec.square().mean().backward()
        outs.append((enc.latent_dist.mean.detach(), rec.detach()))
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert rel_err(outs[1][0], ref["posterior_mean"]) <= 1e-5
    assert rel_err(outs[1][1], ref["reconstruction"]) <= 1e-5
    assert not torch.equal(outs[1][1], outs[0][1])  # the fast path really runs other kernels
    # One vector: biases before a GroupNorm (or attention's k) have a true gradient of 0, so per-tensor
    # relative errors of their rounding noise mean nothing.
    flat_exact = torch.cat([g.flatten() for g in grads[0].values()])
    flat_fast = torch.cat([grads[1][n].flatten() for n in grads[0]])
    assert rel_err(flat_fast, flat_exact) <= 1e-5


def test_set_kernels_switches_and_is_recorded(ref: dict) -> None:
    model = model_for(ref, "exact")
    model.set_kernels("fast")
    assert model.config["kernels"] == "fast"
    assert {m.kernels for m in model.modules() if hasattr(type(m), "kernels")} == {"fast"}
    with pytest.raises(ModelConfigError, match="kernels must be one of"):
        create_autoencoder("kl", kernels="flash")
