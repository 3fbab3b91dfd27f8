"""``taesd``: parity with diffusers' AutoencoderTiny, the released key layouts, strict loading, options."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from aetune.families.tiny.loading import layout_of, load_tiny_weights
from aetune.families.tiny.taesd import TAESD
from aetune.models import CheckpointError, ModelConfigError, create_autoencoder

diffusers = pytest.importorskip("diffusers")

W = 8  # tiny width: every test runs in well under a second


def diffusers_tiny(latent_channels: int, stages: int, seed: int) -> torch.nn.Module:
    """diffusers AutoencoderTiny with TAESD's block counts for ``stages`` halvings, random weights."""
    torch.manual_seed(seed)
    return diffusers.AutoencoderTiny(
        encoder_block_out_channels=(W,) * (stages + 1),
        decoder_block_out_channels=(W,) * (stages + 1),
        num_encoder_blocks=(1,) + (3,) * stages,
        num_decoder_blocks=(3,) * stages + (1,),
        latent_channels=latent_channels,
    ).eval()


def released_shapes(latent_channels: int, width: int = 64) -> tuple[dict, dict]:
    """Key -> shape of taesd_encoder.pth and taesd_decoder.pth, written out from the published layout.

    Encoder: 0 conv(3, w), 1 Block, then per stage a bias-free stride-2 conv and 3 Blocks (2-5, 6-9,
    10-13), 14 conv(w, C). Decoder: 0 Clamp, 1 conv(C, w), 2 ReLU, per stage 3 Blocks, Upsample and a
    bias-free conv (3-7, 8-12, 13-17), 18 Block, 19 conv(w, 3).
    """
    c3 = (width, width, 3, 3)

    def block(i: int) -> dict:
        return {f"{i}.conv.{j}.{p}": (c3 if p == "weight" else (width,)) for j in (0, 2, 4) for p in ("weight", "bias")}

    enc = {"0.weight": (width, 3, 3, 3), "0.bias": (width,), **block(1)}
    for s in (2, 6, 10):
        enc[f"{s}.weight"] = c3
        for b in range(s + 1, s + 4):
            enc.update(block(b))
    enc.update({"14.weight": (latent_channels, width, 3, 3), "14.bias": (latent_channels,)})
    dec = {"1.weight": (width, latent_channels, 3, 3), "1.bias": (width,)}
    for s in (3, 8, 13):
        for b in range(s, s + 3):
            dec.update(block(b))
        dec[f"{s + 4}.weight"] = c3
    dec.update({**block(18), "19.weight": (3, width, 3, 3), "19.bias": (3,)})
    return enc, dec


def random_state(shapes: dict, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.1 for k, s in shapes.items()}


def images(size: int = 32, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(7)) * 2 - 1


@pytest.mark.parametrize(("latent_channels", "factor"), [(4, 8), (16, 8), (32, 16)])
def test_parity_with_diffusers_autoencoder_tiny(latent_channels: int, factor: int) -> None:
    ref = diffusers_tiny(latent_channels, factor.bit_length() - 1, seed=0)
    ours = create_autoencoder("taesd", width=W, latent_channels=latent_channels, downsample_factor=factor).eval()
    report = load_tiny_weights(ours, ref.state_dict())
    assert report.missing == [] and report.unexpected == [] and report.loaded == len(ref.state_dict())
    x = images()  # [-1, 1]: diffusers maps to [0, 1] inside, as ours does
    with torch.no_grad():
        z_ref, z = ref.encode(x).latents, ours.encode(x).latents
        assert z.shape == (2, latent_channels, 32 // factor, 32 // factor)
        torch.testing.assert_close(z, z_ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.decode(z).sample, ref.decode(z_ref).sample, atol=1e-5, rtol=0)
        assert z.abs().max() > 0.01  # real numbers were compared, not zeros


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_released_files_load_with_zero_missing_keys_and_match_diffusers(tmp_path: Path, suffix: str) -> None:
    enc_shapes, dec_shapes = released_shapes(latent_channels=4, width=W)
    enc, dec = random_state(enc_shapes, 1), random_state(dec_shapes, 2)
    paths = tmp_path / f"taesd_encoder{suffix}", tmp_path / f"taesd_decoder{suffix}"
    for state, path in zip((enc, dec), paths, strict=True):
        torch.save(state, path) if suffix == ".pth" else save_file(state, path)
    assert (layout_of(enc), layout_of(dec)) == ("taesd_encoder", "taesd_decoder")

    model = create_autoencoder("taesd", width=W).eval()
    report = load_tiny_weights(model, *paths)
    assert (report.missing, report.unexpected, report.loaded) == ([], [], len(enc) + len(dec))
    assert set(model.state_dict()) == {f"encoder.{k}" for k in enc} | {f"decoder.{k}" for k in dec}
    torch.testing.assert_close(model.decoder[19].bias, dec["19.bias"])  # the 0.5 init was overwritten

    # diffusers keeps the decoder's Clamp outside ``layers``: its decoder.layers.k is the file's k + 1.
    ref = diffusers_tiny(4, 3, seed=5)
    ref.load_state_dict(
        {f"encoder.layers.{k}": v for k, v in enc.items()}
        | {f"decoder.layers.{int(k.split('.')[0]) - 1}.{k.split('.', 1)[1]}": v for k, v in dec.items()}
    )
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref.decode(ref.encode(x).latents).sample, atol=1e-5, rtol=0)


def test_loading_is_strict_and_names_the_problem() -> None:
    enc_shapes, dec_shapes = released_shapes(latent_channels=16, width=W)
    model = create_autoencoder("taesd", width=W)  # 4 latent channels
    with pytest.raises(CheckpointError, match=r"encoder.14.weight is \[16, 8, 3, 3\] there and \[4, 8, 3, 3\] here"):
        load_tiny_weights(model, random_state(enc_shapes, 0))
    enc_shapes, dec_shapes = released_shapes(latent_channels=4, width=W)
    dec = random_state(dec_shapes, 0)
    with pytest.raises(CheckpointError, match=r"missing encoder.0.weight, encoder.0.bias.*pass both halves"):
        load_tiny_weights(model, dec)
    with pytest.raises(CheckpointError, match="gives keys another source already gave"):
        load_tiny_weights(model, dec, dec)
    with pytest.raises(CheckpointError, match=r"not a tiny-autoencoder state dict \(keys start conv_in.weight"):
        load_tiny_weights(model, {"conv_in.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"unexpected decoder.99.bias"):
        load_tiny_weights(model, random_state(enc_shapes, 0), {**dec, "99.bias": torch.zeros(1)})

    before = model.encoder[0].weight.clone()
    report = load_tiny_weights(model, dec, allow_partial=True)  # a released decoder, encoder to distil
    assert len(report.missing) == len(enc_shapes) and report.loaded == len(dec)
    torch.testing.assert_close(model.encoder[0].weight, before)
    torch.testing.assert_close(model.decoder[1].weight, dec["1.weight"])


def with_midblock_gn(shapes: dict, blocks: range, width: int = W) -> dict:
    """``shapes`` plus taef2's GroupNorm branch in ``blocks``, from madebyollin/taesd's ``Block(use_midblock_gn)``:
    ``pool`` = 1x1 conv (w -> 4w, no bias), GroupNorm(4, 4w), ReLU, 1x1 conv (4w -> w, no bias)."""
    wide = 4 * width
    pool = {"pool.0.weight": (wide, width, 1, 1), "pool.1.weight": (wide,), "pool.1.bias": (wide,)}
    pool["pool.3.weight"] = (width, wide, 1, 1)
    return shapes | {f"{b}.{k}": s for b in blocks for k, s in pool.items()}


def test_flux2_taef2_layout_loads_strictly_and_runs(tmp_path: Path) -> None:
    enc_shapes, dec_shapes = released_shapes(latent_channels=32, width=W)
    enc = random_state(with_midblock_gn(enc_shapes, range(11, 14)), 1)  # taef2_encoder.pth: blocks 11-13
    dec = random_state(with_midblock_gn(dec_shapes, range(3, 6)), 2)  # taef2_decoder.pth: blocks 3-5
    torch.save(enc, tmp_path / "taef2_encoder.pth")
    torch.save(dec, tmp_path / "taef2_decoder.pth")
    model = create_autoencoder("taesd", width=W, latent_channels=32, midblock_gn=True).eval()
    report = load_tiny_weights(model, tmp_path / "taef2_encoder.pth", tmp_path / "taef2_decoder.pth")
    assert (report.missing, report.unexpected, report.loaded) == ([], [], len(enc) + len(dec))
    torch.testing.assert_close(model.encoder[12].pool[3].weight, enc["12.pool.3.weight"])
    x = images()
    with torch.no_grad():
        z = model.encode(x).latents
        y = model.decode(z).sample
    assert z.shape == (2, 32, 4, 4) and y.shape == x.shape and torch.isfinite(y).all()
    # The branch changes the block: the same weights without it give other latents.
    block, h = model.encoder[11], torch.randn(1, W, 4, 4)
    with torch.no_grad():
        assert not torch.allclose(block(h), block.fuse(block.conv(h) + block.skip(h)))
    plain = create_autoencoder("taesd", width=W, latent_channels=32)
    with pytest.raises(CheckpointError, match="midblock_gn=True"):
        load_tiny_weights(plain, tmp_path / "taef2_encoder.pth", tmp_path / "taef2_decoder.pth")


def test_default_model_is_the_released_size_and_its_own_files_reload(tmp_path: Path) -> None:
    model = create_autoencoder("taesd")
    assert (model.latent_channels, model.downsample_factor) == (4, 8)
    for half in (model.encoder, model.decoder):
        assert 1_220_000 < sum(p.numel() for p in half.parameters()) < 1_225_000  # ~1.22 M each (TAESD)
    f16 = create_autoencoder("taesd", latent_channels=32, downsample_factor=16, width=W)
    path = tmp_path / "tiny.pt"
    torch.save(f16.state_dict(), path)
    again = create_autoencoder("taesd", latent_channels=32, downsample_factor=16, width=W)
    assert layout_of(f16.state_dict()) == "aetune"
    assert load_tiny_weights(again, path).loaded == len(f16.state_dict())
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(again(x), f16(x))


def test_clamp_bounds_the_latents_and_new_decoders_start_grey() -> None:
    torch.manual_seed(0)
    model = create_autoencoder("taesd", width=W).eval()
    z = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        huge = model.decode(z * 1e6).sample  # tanh(z / 3) * 3 saturates at +-3
        unclamped = model.decoder[1:](3 * torch.sign(z)) * 2 - 1  # the rest of the decoder, [0, 1] -> [-1, 1]
        torch.testing.assert_close(huge, unclamped)
    assert torch.all(model.decoder[-1].bias == 0.5)  # 0 in [-1, 1] before any training


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    model = create_autoencoder("taesd", width=W)
    x = images()
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        model.set_gradient_checkpointing(enabled)
        model(x).square().mean().backward()
        grads.append(model.encoder[1].conv[0].weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
    assert model.gan_last_layer is model.decoder[-1].weight


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"downsample_factor": 12}, "power of two"),
        ({"downsample_factor": 1}, "power of two"),
        ({"latent_channels": 0}, "must be positive"),
        ({"width": "64"}, "'width' must be int"),
    ],
)
def test_bad_options_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ModelConfigError, match=message):
        create_autoencoder("taesd", **overrides)


def test_bad_inputs_name_the_shapes() -> None:
    model = create_autoencoder("taesd", width=W, downsample_factor=16, latent_channels=32)
    assert isinstance(model, TAESD)
    with pytest.raises(ValueError, match=r"image size 40x32 .* factor 16"):
        model.encode(torch.zeros(1, 3, 40, 32))
    with pytest.raises(ValueError, match=r"decodes latents \(B, 32, h, w\), got \(1, 4, 2, 2\)"):
        model.decode(torch.zeros(1, 4, 2, 2))
