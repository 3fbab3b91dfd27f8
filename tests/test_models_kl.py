"""The LDM KL architecture: the released key layout, and the fine-tuning controls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aetune.families.vavae.loading import lightningdit_state_dict
from aetune.models import create_autoencoder
from aetune.nn.ldm import AttnBlock, swish
from aetune.nn.patchgan import NLayerDiscriminator

MANIFEST = Path(__file__).parent / "fixtures" / "vavae_f16d32_keys.json"


def test_full_size_vavae_has_the_released_keys_shapes_and_sizes() -> None:
    manifest = json.loads(MANIFEST.read_text())
    model = create_autoencoder("vavae")
    state = lightningdit_state_dict(model, NLayerDiscriminator())
    assert {k: list(v.shape) for k, v in state.items()} == manifest["keys"]
    assert len(state) == 366
    assert sum(p.numel() for p in model.encoder.parameters()) == manifest["encoder_params"] == 28_413_248
    assert sum(p.numel() for p in model.decoder.parameters()) == manifest["decoder_params"] == 41_417_603
    # attention only at resolution 16 (the deepest level) and in the middle blocks
    attn = sorted(n for n, m in model.named_modules() if isinstance(m, AttnBlock))
    assert attn == sorted(
        ["encoder.down.4.attn.0", "encoder.down.4.attn.1", "encoder.mid.attn_1", "decoder.mid.attn_1"]
        + [f"decoder.up.4.attn.{i}" for i in range(3)]
    )


def test_full_size_forward_at_small_resolution() -> None:
    model = create_autoencoder("vavae").eval()
    with torch.no_grad():
        enc = model.encode(torch.zeros(1, 3, 32, 32))
        assert enc.latents.shape == (1, 32, 2, 2)
        assert model.decode(enc.latents).sample.shape == (1, 3, 32, 32)


def small(**kw):
    torch.manual_seed(0)
    return create_autoencoder("vavae", ch=32, ch_mult=[1, 1, 2], attn_resolutions=[8], resolution=32, **kw)


def loss_and_grads(model, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    enc = model.encode(x)
    z = enc.latent_dist.sample(generator=torch.Generator().manual_seed(0))
    out = model.decode(z).sample
    loss = out.square().mean() + model.project(z).square().mean() + enc.latent_dist.kl().mean()
    loss.backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_freeze_encoder_levels_freezes_stem_and_first_levels_only() -> None:
    model = small()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    names = model.freeze_encoder_levels(2)
    assert names == [
        n
        for n, _ in model.named_parameters()
        if n.startswith(("encoder.conv_in.", "encoder.down.0.", "encoder.down.1."))
    ]
    assert all(not p.requires_grad for n, p in model.named_parameters() if n in names)
    assert all(p.requires_grad for n, p in model.named_parameters() if n not in names)
    _, grads = loss_and_grads(model, x)
    assert set(grads) == {n for n, _ in model.named_parameters()} - set(names)
    # what the training step hands to its optimizer: trainable parameters only
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for n, p in model.named_parameters() if n in names}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer.step()
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters() if n in names)
    assert not torch.equal(before["encoder.down.2.block.0.conv1.weight"], model.encoder.down[2].block[0].conv1.weight)
    assert small().freeze_encoder_levels(0) == []
    with pytest.raises(ValueError, match=r"freeze_encoder_levels must be in \[0, 3\]"):
        small().freeze_encoder_levels(4)


def test_gradient_checkpointing_gives_the_same_outputs_and_gradients() -> None:
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    plain, checkpointed = small(), small()
    checkpointed.set_gradient_checkpointing(True)
    assert checkpointed.encoder.gradient_checkpointing and checkpointed.decoder.gradient_checkpointing
    out_a, grads_a = loss_and_grads(plain, x)
    out_b, grads_b = loss_and_grads(checkpointed, x)
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], msg=name)


def test_channels_last_gives_the_same_outputs() -> None:
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    model = small().eval()
    with torch.no_grad():
        want = model(x)
        model.to(memory_format=torch.channels_last)
        got = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_swish_matches_silu_and_its_gradient() -> None:
    x = torch.linspace(-8, 8, 101, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(swish, (x,))
    torch.testing.assert_close(swish(x), torch.nn.functional.silu(x))
