"""The RAE recipe: objective against hand numbers, the preset's schedule, the phases' noise and fakes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aetune.config import load_config
from aetune.errors import AetuneError
from aetune.families.rae.losses import quantize_fakes, rae_generator_objective
from aetune.recipes import StepContext, get_recipe
from aetune.train.schedule import lr_at

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
    weight = 0.5 / (3 + 1e-4)  # ||d rec|| / (||d G|| + 1e-4), clamped to [0, 1e4]
    torch.testing.assert_close(out["d_weight"], torch.tensor(weight))
    torch.testing.assert_close(out["total"], torch.tensor(1.0 + 0.75 * weight * -6.0))
    torch.testing.assert_close(out["parts"]["gan"], torch.tensor(0.75 * weight * -6.0))
    out["total"].backward()
    torch.testing.assert_close(w.grad, torch.tensor([0.5 + 0.75 * weight * -3.0]))  # the weight is a constant


def test_fakes_are_clamped_and_8_bit() -> None:
    got = quantize_fakes(torch.tensor([-1.5, -1.0, 0.0, 0.3, 1.2]))
    want = torch.tensor([-1.0, -1.0, 128 / 127.5 - 1, 166 / 127.5 - 1, 1.0])  # round((x + 1) * 127.5)
    torch.testing.assert_close(got, want)


def test_preset_schedule_values() -> None:
    cfg = load_config("rae")
    g, d = cfg.stage_optimizer("1", "g"), cfg.stage_optimizer("1", "d")
    assert (g.name, g.betas, g.weight_decay, g.schedule) == ("adamw", [0.9, 0.95], 0.0, "cosine")
    assert d == g
    peak, total = cfg.train.learning_rate, 10_000
    assert peak == 3.5e-5 and cfg.train.d_learning_rate == 2e-4 and cfg.train.ema.decay == 0.9978
    assert lr_at(0, peak, total, g) == pytest.approx(peak / 625)  # linear warm-up from 0 over one epoch
    assert lr_at(624, peak, total, g) == pytest.approx(peak)
    assert lr_at(625 + (total - 626) // 2, peak, total, g) == pytest.approx(0.55 * peak, rel=1e-3)  # mid-cosine
    assert lr_at(total - 1, peak, total, g) == pytest.approx(0.1 * peak)  # released 2e-4 -> 2e-5 ratio
    loss = cfg.stage_loss("1")
    assert (loss.disc_start, loss.gan_start, loss.disc_weight, loss.perceptual_weight) == (3750, 5000, 0.75, 1.0)
    assert cfg.model.args["noise_tau"] == 0.8 and cfg.train.gradient_clip_val == 1.0


def tiny_recipe(**loss: object):
    sets = [f"loss.{k}={v}" for k, v in loss.items()]
    cfg = load_config("rae_demo", sets)
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


def test_token_cache_encodes_each_image_once() -> None:
    from aetune.families.rae.token_cache import TokenCache

    calls: list[int] = []

    def encode(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x.mean(dim=1, keepdim=True) * 2  # any deterministic function of the image

    cache = TokenCache(max_bytes=10**9)
    x = torch.rand(3, 3, 4, 4)
    first = cache.tokens(x, encode)
    again = cache.tokens(x[[2, 0]], encode)  # both cached: no encoder call
    torch.testing.assert_close(again, first[[2, 0]])
    changed = x.clone()
    changed[1, 0, 0, 0] += 1e-3  # a different image is a new entry, never a stale hit
    torch.testing.assert_close(cache.tokens(changed, encode), encode(changed))
    assert calls == [3, 1, 3] and (cache.hits, cache.misses, len(cache)) == (4, 4, 4)
    small = TokenCache(max_bytes=2 * 16 * 4)  # room for two (1, 4, 4) float32 entries
    small.tokens(x, encode)
    assert len(small) == 2 and small.bytes == 128


def test_cached_tokens_give_the_same_generator_step() -> None:
    x = torch.randint(0, 256, (2, 3, 32, 32)).float() / 127.5 - 1
    recipe = tiny_recipe()
    assert recipe.token_cache is not None
    a = recipe.generator_step(x, x, StepContext(batch=0, generator=torch.Generator().manual_seed(1)))
    b = recipe.generator_step(x, x, StepContext(batch=0, generator=torch.Generator().manual_seed(1)))
    assert recipe.token_cache.hits == 2  # the second step reused both images' tokens
    torch.testing.assert_close(a.total, b.total, rtol=0, atol=0)
    torch.testing.assert_close(a.carry["tokens"], recipe.rae.encode_tokens(x), rtol=0, atol=0)


def test_shared_feature_cache_serves_the_tokens(tmp_path) -> None:
    recipe = tiny_recipe()
    u8 = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    cache = recipe.prepare_feature_cache(u8.numpy(), tmp_path, torch.device("cpu"), progress=False)
    assert cache is not None and list((tmp_path / "cache/features").glob("rae_tokens_32px*"))
    x = u8.permute(0, 3, 1, 2).float() / 127.5 - 1
    got = recipe.tokens(x[[2, 0]])
    torch.testing.assert_close(got, recipe.rae.encode_tokens(x[[2, 0]]), rtol=2e-3, atol=2e-3)  # stored as float16
    assert recipe.token_cache is not None and len(recipe.token_cache) == 0  # the in-RAM cache was not needed
    off = get_recipe("rae")(load_config("rae_demo", ["encoder.cache_tokens=false"]), "1")
    off.attach(off.build())
    assert off.prepare_feature_cache(u8.numpy(), tmp_path, torch.device("cpu"), progress=False) is None
