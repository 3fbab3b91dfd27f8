"""Seraena's terms (aetune/families/tiny/seraena.py) on hand-computed cases, and the taehv frame grouping."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from aetune.config import load_config
from aetune.families.tiny import seraena
from aetune.families.tiny.recipe import VideoTinyRecipe

C_IM, C_CTX = 3, 4


def disc(buffer: int = 8) -> seraena.ContextPatchDiscriminator:
    torch.manual_seed(0)
    return seraena.ContextPatchDiscriminator(C_IM, C_CTX, ndf=4, buffer=buffer)


def batch(n: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    real = torch.rand(n, C_IM, 32, 32, generator=g) * 2 - 1
    fake = torch.rand(n, C_IM, 32, 32, generator=g) * 2 - 1
    return real, fake, torch.randn(n, C_CTX, 4, 4, generator=g)


def test_scores_come_from_every_block_on_the_patch_grid() -> None:
    real, _, ctx = batch(2, 0)
    assert disc()(real, ctx).shape == (2, 6, 4, 4)  # six blocks, 32 px / 8


def test_discriminator_loss_regresses_coin_flipped_samples_to_plus_minus_one(monkeypatch) -> None:
    d = disc()
    real, fake, ctx = batch(4, 1)
    seen: list[Tensor] = []

    def constant_scores(x: Tensor, c: Tensor) -> Tensor:
        seen.append(x)
        return torch.full((len(x), 6, 4, 4), 0.5)

    monkeypatch.setattr(d, "forward", constant_scores)
    loss = seraena.discriminator_loss(d, real, fake, ctx, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)  # the same draws, by hand: 2 buffer picks, then 4 coin flips
    picks = torch.randint(4, (2,), generator=g)
    is_fake = torch.rand(4, 1, 1, 1, generator=g) < 0.5
    target = is_fake.float() * 2 - 1
    assert loss.item() == pytest.approx(((0.5 - target) ** 2).mean().item())  # per sample: 0.25 fake, 2.25 real
    fakes = torch.cat([fake[:2], fake.half().float()[picks]])  # fresh half, replayed half (stored as float16)
    torch.testing.assert_close(seen[0], torch.where(is_fake, fakes, real))


def test_the_replay_buffer_fills_then_replaces_at_random_and_survives_a_state_dict() -> None:
    d = disc(buffer=3)
    g = torch.Generator().manual_seed(0)
    _, fake, ctx = batch(4, 2)
    d.push(fake[:2], ctx[:2], g)
    d.push(fake[2:], ctx[2:], g)
    assert d.replay_images.shape == (3, C_IM, 32, 32) and d.replay_images.dtype == torch.float16
    want = [fake[0], fake[1], fake[2]]  # the room left is filled in order...
    want[int(torch.randint(3, (), generator=torch.Generator().manual_seed(0)))] = fake[3]  # ...then a drawn slot
    torch.testing.assert_close(d.replay_images, torch.stack(want).half())
    fresh = disc(buffer=3)
    fresh.load_state_dict(d.state_dict())  # a resumed run gets the buffer back, whatever its size
    assert torch.equal(fresh.replay_images, d.replay_images) and torch.equal(fresh.replay_contexts, d.replay_contexts)


def test_the_correction_moves_the_fake_towards_the_real_with_unit_std() -> None:
    d = disc()
    real, fake, ctx = batch(2, 3)
    step = seraena.correction(d, real, fake, ctx)
    assert d.training  # restored after the eval-mode correction
    d.eval()
    unit = ((fake + 1) / 2).requires_grad_(True)  # the reference's [0, 1] images
    gap = torch.nn.functional.mse_loss(d(unit * 2 - 1, ctx), d(real, ctx).detach(), reduction="none")
    (grad,) = torch.autograd.grad(gap.mean((1, 2, 3)).sum(), unit)
    torch.testing.assert_close(step, -grad / (grad.std(correction=0) + 1e-5))
    with torch.no_grad():
        before = torch.nn.functional.mse_loss(d(fake, ctx), d(real, ctx))
        after = torch.nn.functional.mse_loss(d(fake + 1e-3 * step * 2, ctx), d(real, ctx))  # [0, 1] step -> [-1, 1]
    assert after < before
    assert torch.equal(seraena.correction(d, real, real, ctx), torch.zeros_like(real))  # nothing to correct


def test_the_generator_loss_pulls_along_the_correction() -> None:
    _, fake, _ = batch(2, 4)
    fake.requires_grad_(True)
    step = torch.randn(fake.shape, generator=torch.Generator().manual_seed(5))
    loss = seraena.generator_loss(fake, step)
    loss.backward()
    assert loss.item() == pytest.approx(step.pow(2).mean().item())
    torch.testing.assert_close(fake.grad, -step / fake.numel())  # d/dfake of mean((u - u0 - c)^2), u = (fake + 1)/2


def test_taehv_groups_frames_with_the_clips_time_averaged_latents() -> None:
    cfg = load_config("taehv", ["discriminator.frames=3"])
    recipe = VideoTinyRecipe.__new__(VideoTinyRecipe)
    recipe.cfg = cfg
    y = torch.arange(2 * 5 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 5, 3, 2, 2)  # (B, T'=5, 3, H, W)
    z = torch.randn(2, 2, 4, 1, 1)  # (B, n, C, h, w)
    fake, real, latents = recipe.seraena_view(y, y.flatten(0, 1) + 1, z)
    assert fake.shape == (4, 9, 2, 2) and real.shape == (4, 9, 2, 2) and latents.shape == (4, 4, 1, 1)
    torch.testing.assert_close(fake[1], torch.cat([y[0, 3], y[0, 4], y[0, 0]]))  # padded with the first frame
    torch.testing.assert_close(real[2], torch.cat([y[1, 0], y[1, 1], y[1, 2]]) + 1)
    torch.testing.assert_close(latents[3], z[1].mean(0))


def test_the_default_presets_are_the_references_and_amsgrad_reaches_adam() -> None:
    from aetune.train.module import AutoencoderModule

    taesd, taehv = load_config("taesd"), load_config("taehv")
    g = taesd.train.optimizer.g
    assert (g.name, g.betas, g.amsgrad, taesd.train.learning_rate, taesd.train.batch_size) == (
        "adam",
        [0.9, 0.9],
        True,
        3e-4,
        16,
    )
    g = taehv.train.optimizer.g
    assert (g.name, g.betas, g.amsgrad, taehv.train.learning_rate) == ("adamw", [0.9, 0.95], False, 3e-4)
    for cfg in (taesd, taehv):
        assert cfg.discriminator.kind == "seraena" and cfg.loss.adv_weight == 1.0 and cfg.loss.perceptual_weight == 0
        assert cfg.train.ema.decay == 0.999 and cfg.loss.enc_distill_weight == 1.0
    assert (taesd.loss.rec_weight, taehv.loss.rec_weight, taehv.discriminator.frames) == (0.1, 1.0, 3)
    tiny = load_config(
        "taesd",
        ["model.args.width=8", "model.args.latent_channels=4", "discriminator.ndf=4", "loss.lpips_pretrained=false"],
    )
    module = AutoencoderModule(tiny, "1", total_batches=4, learning_rate=3e-4, meta={})
    opts = module.configure_optimizers()
    assert opts[0].param_groups[0]["amsgrad"] is True and opts[1].param_groups[0]["amsgrad"] is False
