"""The RAE recipe: objective against hand numbers, the preset's schedule, the phases' noise and fakes."""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import pytest
import torch
from torch import nn

from aetune.config import load_config
from aetune.errors import AetuneError
from aetune.families.rae.losses import quantize_fakes, rae_generator_objective
from aetune.recipes import StepContext, get_recipe
from aetune.train.schedule import ScheduleClock, lr_at

pytest.importorskip("transformers")


class ConstantLPIPS(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 1, 1, 1), 0.2)


def test_reconstruction_terms_hand_numbers() -> None:
    x, x_rec = torch.zeros(2, 3, 2, 2), torch.full((2, 3, 2, 2), 0.5)
    w = nn.Parameter(torch.ones(1))
    out = rae_generator_objective(
        x, x_rec, perceptual=ConstantLPIPS(), perceptual_weight=1.0, logits_fake=None, disc_weight=0.75, last_layer=w
    )
    # L1 on [0, 1]: |0.75 - 0.5| = 0.25; LPIPS 0.2 x 1.0; no GAN term
    torch.testing.assert_close(out["rec_loss"], torch.tensor(0.25))
    torch.testing.assert_close(out["lpips_loss"], torch.tensor(0.2))
    torch.testing.assert_close(out["total"], torch.tensor(0.45))
    assert out["d_weight"].item() == 0.0


def test_adaptive_gan_weight_hand_numbers() -> None:
    w = nn.Parameter(torch.tensor([2.0]))
    x = torch.zeros(1, 1, 1, 1)
    x_rec = w.view(1, 1, 1, 1) * 1.0  # L1 on [0, 1] = w / 2: gradient 0.5
    logits = 3 * w  # G = -3w: gradient -3
    out = rae_generator_objective(
        x, x_rec, perceptual=None, perceptual_weight=0.0, logits_fake=logits, disc_weight=0.75, last_layer=w,
        with_parts=True,
    )  # fmt: skip
    weight = 0.5 / (3 + 1e-6)  # ||d rec|| / (||d G|| + 1e-6, released), clamped to [0, 1e4]
    torch.testing.assert_close(out["d_weight"], torch.tensor(weight))
    torch.testing.assert_close(out["total"], torch.tensor(1.0 + 0.75 * weight * -6.0))
    torch.testing.assert_close(out["parts"]["gan"], torch.tensor(0.75 * weight * -6.0))
    out["total"].backward()
    torch.testing.assert_close(w.grad, torch.tensor([0.5 + 0.75 * weight * -3.0]))  # the weight is a constant


@pytest.mark.parametrize(("eps", "weight"), [(1e-6, 0.5 / (1e-3 + 1e-6)), (1e-4, 0.5 / (1e-3 + 1e-4))])
def test_adaptive_weight_epsilon_is_the_released_one_unless_asked(eps: float, weight: float) -> None:
    w = nn.Parameter(torch.tensor([2.0]))
    x_rec = w.view(1, 1, 1, 1) * 1.0  # d rec / d w = 0.5
    out = rae_generator_objective(
        torch.zeros(1, 1, 1, 1),
        x_rec,
        perceptual=None,
        perceptual_weight=0.0,
        logits_fake=1e-3 * w,
        disc_weight=0.75,
        last_layer=w,
        eps=eps,
    )  # fmt: skip  (a small GAN gradient, 1e-3, where the epsilon matters: 499.5 against 454.5)
    torch.testing.assert_close(out["d_weight"], torch.tensor(weight))
    assert load_config("rae").loss.adaptive_eps == 1e-6


def test_fakes_are_clamped_and_8_bit() -> None:
    got = quantize_fakes(torch.tensor([-1.5, -1.0, 0.0, 0.3, 1.2]))
    want = torch.tensor([-1.0, -1.0, 128 / 127.5 - 1, 166 / 127.5 - 1, 1.0])  # round((x + 1) * 127.5)
    torch.testing.assert_close(got, want)


def test_preset_schedule_values() -> None:
    cfg = load_config("rae")
    g, d = cfg.stage_optimizer("1", "g"), cfg.stage_optimizer("1", "d")
    assert (g.name, g.betas, g.weight_decay, g.schedule, g.count) == ("adamw", [0.9, 0.95], 0.0, "cosine", "batches")
    assert d == dataclasses.replace(g, count="updates")  # D's scheduler counts D updates, as the reference's
    peak, total = cfg.train.learning_rate, 10_000
    assert peak == 3.5e-5 and cfg.train.d_learning_rate == 2e-4 and cfg.train.ema.decay == 0.9978
    assert lr_at(0, peak, total, g) == pytest.approx(peak / 625)  # linear warm-up from 0 over one epoch
    assert lr_at(624, peak, total, g) == pytest.approx(peak)
    assert lr_at(625 + (total - 626) // 2, peak, total, g) == pytest.approx(0.55 * peak, rel=1e-3)  # mid-cosine
    assert lr_at(total - 1, peak, total, g) == pytest.approx(0.1 * peak)  # released 2e-4 -> 2e-5 ratio
    loss = cfg.stage_loss("1")
    assert (loss.disc_start, loss.gan_start, loss.disc_weight, loss.perceptual_weight) == (3750, 5000, 0.75, 1.0)
    assert cfg.model.args["noise_tau"] == 0.8
    assert cfg.train.gradient_clip_val == 0.0  # released clip_grad: 0.0 (no clipping)
    assert cfg.augment.random_crop and not cfg.encoder.cache_tokens  # released 384 -> random 256 crops
    assert cfg.discriminator.tanh_gelu  # the reference's tanh GELU in the DINO MLP


def reference_lr_ratio(step: int) -> float:
    """bytetriper/RAE ``utils/optim_utils.build_scheduler``'s ``lr_lambda`` for DINOv2-B_decXL's schedule (cosine,
    warmup_epochs 1, decay_end_epoch 16, base_lr 2e-4, final_lr 2e-5, warmup_from_zero) at our preset's 625
    batches per epoch. ``step`` counts that scheduler's ``step()`` calls: G's after every batch, D's after every
    D update only (``train_stage1.py``), so the n-th D update (0-based) trains at ``lr_lambda(n)``."""
    warmup_steps, decay_end_steps, final_ratio = 1 * 625, 16 * 625, 2e-5 / 2e-4
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step >= decay_end_steps:
        return final_ratio
    progress = (step - warmup_steps) / max(decay_end_steps - warmup_steps, 1)
    return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def test_discriminator_schedule_counts_its_updates_as_the_reference() -> None:
    cfg = load_config("rae")
    recipe = get_recipe("rae")(cfg, "1")  # phase_active needs no networks
    total, peak = 16 * 625, cfg.train.d_learning_rate
    clocks = {p: ScheduleClock(cfg.stage_optimizer("1", p).count, partial(recipe.phase_active, p)) for p in "gd"}
    start = cfg.stage_loss("1").disc_start  # disc_upd_start 6 epochs x 625
    for batch in (start, start + 1, start + 624, start + 625, 5000, 7500, total - 1):
        ours = lr_at(clocks["d"](batch), peak, total, cfg.stage_optimizer("1", "d")) / peak
        # rel 3e-4: our cosine ends at the stage's last batch, the reference's one step later (span 9374 vs 9375)
        assert ours == pytest.approx(reference_lr_ratio(batch - start), rel=3e-4), batch
    d_lr = [lr_at(clocks["d"](b), 1.0, total, cfg.stage_optimizer("1", "d")) for b in (start, start + 624, total - 1)]
    assert d_lr == pytest.approx([1 / 625, 1.0, 0.411], abs=1e-3)  # from 0, hot after one epoch, 60 % of the cosine
    for batch in (0, 624, 3750, total - 1):  # the generator's clock is the stage's batches
        ours = lr_at(clocks["g"](batch), 1.0, total, cfg.stage_optimizer("1", "g"))
        assert clocks["g"](batch) == batch and ours == pytest.approx(reference_lr_ratio(batch), rel=3e-4)


def test_schedule_clock_recounts_after_a_resume() -> None:
    calls: list[int] = []

    def active(b: int) -> bool:
        calls.append(b)
        return b % 3 == 0  # a phase that runs every third batch

    clock = ScheduleClock("updates", active)
    assert [clock(b) for b in (0, 1, 4, 7)] == [0, 1, 2, 3]  # batches 0, 3, 6 ran before 7
    assert calls == list(range(7))  # each batch asked once: O(1) per step
    assert clock(4) == 2 and clock(7) == 3  # an earlier batch (a resumed run) recounts from 0
    assert ScheduleClock("batches", active)(11) == 11


def tiny_recipe(*sets: str, **loss: object):
    """The demo recipe built, by default on whole images with the token cache (``sets`` override that)."""
    base = ["augment.random_crop=false", "encoder.cache_tokens=true"]
    cfg = load_config("rae_demo", [*base, *sets, *(f"loss.{k}={v}" for k, v in loss.items())])
    recipe = get_recipe("rae")(cfg, "1")
    torch.manual_seed(0)
    recipe.attach(recipe.build())
    return recipe


def test_phases_noise_only_in_the_generator_and_8_bit_fakes() -> None:
    recipe = tiny_recipe(disc_start=2, gan_start=3)
    assert [recipe.phase_active("d", b) for b in (1, 2)] == [False, True]
    assert [recipe.gan_active(b) for b in (2, 3)] == [False, True]
    x = torch.randint(0, 256, (2, 3, 32, 32)).float() / 127.5 - 1
    ctx = StepContext(batch=0, generator=torch.Generator().manual_seed(1))
    g = recipe.generator_step(x, x, ctx)
    clean = recipe.rae.encode_tokens(x)
    torch.testing.assert_close(g.carry["tokens"], clean)  # the D phase decodes these: no noise
    assert g.logs["g_loss"].item() == 0.0  # before gan_start
    # the generator phase decoded noisy tokens: its loss differs from the clean reconstruction's
    clean_l1 = (recipe.rae.decode_tokens(clean) - x).abs().mean() / 2
    assert not torch.isclose(g.logs["rec_loss"], clean_l1)
    quiet = tiny_recipe(token_noise=False)
    quiet.nets.autoencoder.load_state_dict(recipe.rae.state_dict())
    q = quiet.generator_step(x, x, StepContext(batch=0, generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(q.logs["rec_loss"], clean_l1.detach())
    d = recipe.discriminator_step(x, x, g, StepContext(batch=2, generator=torch.Generator().manual_seed(2)))
    assert d.total.requires_grad and {"logits_real", "logits_fake", "d_accuracy"} <= set(d.logs)
    assert recipe.discriminator.training
    g3 = recipe.generator_step(x, x, StepContext(batch=3, generator=torch.Generator().manual_seed(1)))
    assert g3.logs["d_weight"].item() > 0 and not recipe.discriminator.training  # D in eval in the G phase
    assert all(p.grad is None for p in recipe.discriminator.parameters())


def test_gan_before_its_discriminator_is_refused() -> None:
    with pytest.raises(AetuneError, match="gan_start=5 comes before loss.disc_start=10"):
        tiny_recipe(disc_start=10, gan_start=5)
    with pytest.raises(AetuneError, match="gan_start=5 comes before loss.disc_start=-1"):
        tiny_recipe(disc_start=-1, gan_start=5)


def test_random_encoder_weights_path_conflict_and_missing_file(tmp_path) -> None:
    cfg = load_config("rae_demo", [f"encoder.weights_path={tmp_path / 'x.safetensors'}"])
    with pytest.raises(AetuneError, match="encoder.pretrained is false"):
        get_recipe("rae")(cfg, "1").build()
    cfg = load_config("rae_demo", ["encoder.pretrained=true", f"encoder.weights_path={tmp_path / 'x.safetensors'}"])
    with pytest.raises(AetuneError, match="does not exist"):
        get_recipe("rae")(cfg, "1").build()


@pytest.mark.parametrize("encoder", ["dinov2-reg-b", "siglip2-b16-256"])  # SigLIP2: position ids built in __init__
def test_dit_export_keeps_the_encoder_and_the_latent_normalisation(encoder: str, tmp_path) -> None:
    from aetune.evaluate.export import load_encoder, save_encoder_export
    from aetune.evaluate.latent_stats import LatentStatsAccumulator
    from aetune.models import create_autoencoder, get_family

    size = 56 if encoder.startswith("dinov2") else 64
    torch.manual_seed(0)
    args = {**get_family("rae").tiny, "encoder": encoder, "encoder_input_size": size, "normalize_latents": True}
    model = create_autoencoder("rae", **args).eval()
    model.set_latent_stats(torch.randn(64, 4, 4), torch.rand(64, 4, 4) + 0.5)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = model.encode(x).latents
    acc = LatentStatsAccumulator("mode")
    acc.update(z)
    path = save_encoder_export(tmp_path / "rae_encoder_for_dit.pt", model, acc.result(), {"a": 0}, 32)
    loaded = load_encoder(path)
    assert loaded.autoencoder.decoder is None  # the decoder is not exported
    torch.testing.assert_close(loaded.encode(x), z)  # same tokens, same per-(C, H, W) normalisation
    state = torch.load(path, weights_only=True)["state_dict"]
    assert {"latent_mean", "latent_var"} <= set(state) and not any(k.startswith("decoder.") for k in state)


class CountingEncoder:
    """Wraps ``RAE.encode_tokens``: counts the images it encodes."""

    def __init__(self, recipe) -> None:
        self.images, self.encode = 0, recipe.rae.encode_tokens
        recipe.rae.encode_tokens = self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        return self.encode(x)


def test_a_cached_step_never_calls_the_encoder(tmp_path) -> None:
    recipe = tiny_recipe()
    u8 = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    x = u8.permute(0, 3, 1, 2).float() / 127.5 - 1
    uncached = recipe.generator_step(x, x, StepContext(batch=0, generator=torch.Generator().manual_seed(1)))
    recipe.prepare_feature_cache(u8.numpy(), tmp_path, torch.device("cpu"), progress=False)
    counting = CountingEncoder(recipe)
    cached = recipe.generator_step(
        x[[2, 0]], x[[2, 0]], StepContext(batch=0, generator=torch.Generator().manual_seed(1))
    )
    assert counting.images == 0  # the whole step ran on cached tokens
    # float16 storage: the tokens within 2e-3, the loss as close (the training noise is 0.8 x N(0, 1))
    torch.testing.assert_close(cached.carry["tokens"], uncached.carry["tokens"][[2, 0]], rtol=2e-3, atol=2e-3)
    new = x.clone()
    new[1, 0, 0, 0] = -1.0 if new[1, 0, 0, 0] > 0 else 1.0  # one changed pixel: a new image, never a stale hit
    recipe.generator_step(new, new, StepContext(batch=0, generator=torch.Generator().manual_seed(1)))
    assert counting.images == 3  # a batch the cache does not hold is encoded (whole)


def test_shared_feature_cache_serves_the_tokens(tmp_path) -> None:
    recipe = tiny_recipe()
    u8 = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    cache = recipe.prepare_feature_cache(u8.numpy(), tmp_path, torch.device("cpu"), progress=False)
    assert cache is not None and list((tmp_path / "cache/features").glob("rae_tokens_32px*"))
    x = u8.permute(0, 3, 1, 2).float() / 127.5 - 1
    got = recipe.tokens(x[[2, 0]], x[[2, 0]])
    torch.testing.assert_close(got, recipe.rae.encode_tokens(x[[2, 0]]), rtol=2e-3, atol=2e-3)  # stored as float16
    off = get_recipe("rae")(load_config("rae_demo", ["encoder.cache_tokens=false"]), "1")
    off.attach(off.build())
    assert off.prepare_feature_cache(u8.numpy(), tmp_path, torch.device("cpu"), progress=False) is None


def test_flips_are_refused() -> None:
    with pytest.raises(AetuneError, match="rae does not flip images"):
        tiny_recipe("data.hflip=true")


def test_random_crops_refuse_the_token_cache_and_gelu_is_the_references() -> None:
    with pytest.raises(AetuneError, match="encoder.cache_tokens .* must be false"):
        tiny_recipe("augment.random_crop=true")
    act = tiny_recipe().features.vit.blocks[0].mlp.act
    assert "Tanh" in type(act).__name__  # the reference's tanh GELU by default
    exact = tiny_recipe("discriminator.tanh_gelu=false").features.vit.blocks[0].mlp.act
    assert type(exact) is torch.nn.GELU and exact.approximate == "none"  # DINO's own, one option away
