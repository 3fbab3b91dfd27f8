"""DiT encoder export and the LightningDiT-format checkpoint: round trips, exact latents, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aetune.errors import AetuneError
from aetune.evaluate.export import (
    ENCODER_FORMAT,
    load_encoder,
    save_encoder_export,
    save_lightningdit_checkpoint,
)
from aetune.evaluate.latent_stats import LatentStatistics, LatentStatsAccumulator
from aetune.models import create_autoencoder, get_family, load_weights, read_state_dict

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LABELS = {"ID_1": 0, "ID_2": 1}


def _tiny(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_autoencoder(family, **get_family(family).tiny).eval()


def _stats(model: torch.nn.Module, x: torch.Tensor) -> LatentStatistics:
    acc = LatentStatsAccumulator("mode")
    with torch.no_grad():
        enc = model.encode(x)
    acc.update(enc.latents, enc.latent_dist)
    return acc.result()


def _images(n: int = 3, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("family", ["kl", "vavae"])
def test_encoder_export_round_trip_is_exact(family: str, tmp_path: Path) -> None:
    model = _tiny(family)
    x = _images()
    stats = _stats(model, x)
    path = save_encoder_export(tmp_path / "enc.pt", model, stats, LABELS, 32, {"dataset": "toy", "stage": "3"})

    payload = torch.load(path, weights_only=True)  # tensors and plain values only
    assert payload["format"] == ENCODER_FORMAT and payload["family"] == family
    assert {k.split(".")[0] for k in payload["state_dict"]} == {"encoder", "quant_conv"}  # no decoder
    assert payload["labels"] == LABELS and payload["info"]["stage"] == "3"
    assert payload["preprocessing"]["value_range"] == [-1.0, 1.0]
    assert payload["preprocessing"]["channel_order"] == "RGB" and payload["preprocessing"]["image_size"] == 32
    assert payload["latent_stats"]["mean"].shape == (1, model.latent_channels, 1, 1)
    json.dumps({k: v for k, v in payload.items() if k not in ("state_dict", "latent_stats")})

    enc = load_encoder(path)
    assert not enc.training and enc.autoencoder.decoder is None
    assert (enc.family, enc.labels, enc.latent_channels) == (family, LABELS, model.latent_channels)
    with torch.no_grad():
        ref = model.encode(x)
    assert torch.equal(enc.encode(x), ref.latents)
    assert torch.equal(enc(x), ref.latents)
    sample = enc.encode(x, sample=True, generator=torch.Generator().manual_seed(5))
    assert torch.equal(sample, ref.latent_dist.sample(torch.Generator().manual_seed(5)))
    normed = enc.encode(x, normalize=True)
    mean, std = stats.lightningdit_stats().values()
    torch.testing.assert_close(normed, (ref.latents - mean) / std)
    torch.testing.assert_close(enc.denormalize(normed), ref.latents)
    assert enc.scale_factor == pytest.approx(stats.scale_factor) and enc.shift == pytest.approx(stats.shift)


def test_exported_encoder_reproduces_lightningdit_reference(tmp_path: Path) -> None:
    """The LightningDiT fixture model, exported and reloaded, gives the reference posterior mean."""
    ref = torch.load(FIXTURES / "vavae_reference_small.pt", weights_only=True)
    state = {k: v.float() for k, v in ref["state_dict"].items()}
    model = create_autoencoder("vavae", ch=32).eval()
    load_weights(model, state)
    x = ref["x"].float()
    path = save_encoder_export(tmp_path / "vavae_encoder_for_dit.pt", model, _stats(model, x), LABELS, 64)
    enc = load_encoder(path)
    torch.testing.assert_close(enc.encode(x), ref["posterior_mean"].float(), atol=1e-5, rtol=1e-4)

    ckpt = save_lightningdit_checkpoint(tmp_path / "vavae_toy_lightningdit.pt", model)
    written = torch.load(ckpt, weights_only=True)
    assert set(written) == {"state_dict"}
    # exactly the released layout minus the discriminator (and never the teacher or LPIPS)
    expected = {k for k in ref["state_dict"] if not k.startswith("loss.discriminator.")}
    assert set(written["state_dict"]) == expected


@pytest.mark.parametrize("family", ["kl", "vavae"])
def test_lightningdit_checkpoint_round_trip(family: str, tmp_path: Path) -> None:
    model = _tiny(family, seed=3)
    path = save_lightningdit_checkpoint(tmp_path / "ae.pt", model)
    state, _ = read_state_dict(path)
    fresh = _tiny(family, seed=4)
    report = load_weights(fresh, path)  # strict: raises on missing or unexpected keys
    assert report.missing == [] and report.unexpected == []
    assert report.loaded == len(model.state_dict())
    x = _images(2)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    assert all(k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "linear_proj.", "loss.logvar"))
               for k in state)  # fmt: skip


def test_load_encoder_errors(tmp_path: Path) -> None:
    with pytest.raises(AetuneError, match="does not exist"):
        load_encoder(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file at all")
    with pytest.raises(AetuneError, match="not a readable checkpoint"):
        load_encoder(corrupt)
    model = _tiny("kl")
    other = save_lightningdit_checkpoint(tmp_path / "ae.pt", model)
    with pytest.raises(AetuneError, match="not an aetune encoder export"):
        load_encoder(other)
    good = save_encoder_export(tmp_path / "enc.pt", model, _stats(model, _images()), LABELS, 32)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(AetuneError, match="not a readable checkpoint"):
        load_encoder(truncated)
    payload = torch.load(good, weights_only=True)
    payload["model_config"]["embed_dim"] = 8  # weights no longer fit the architecture
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(AetuneError, match="do not match its architecture"):
        load_encoder(tmp_path / "mismatch.pt")


def test_lightningdit_export_rejects_other_layouts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _tiny("kl")
    monkeypatch.setattr(type(model), "family", "rae")
    with pytest.raises(AetuneError, match="no LightningDiT counterpart"):
        save_lightningdit_checkpoint(tmp_path / "x.pt", model)
    assert not (tmp_path / "x.pt").exists()


def test_video_latents_are_normalised_per_channel_on_their_channel_axis(tmp_path: Path) -> None:
    model = _tiny("taehv")
    clips = torch.rand(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1  # (B, T, 3, S, S)
    with torch.no_grad():
        z = model.encode(clips).latents  # (B, T', C, h, w)
    acc = LatentStatsAccumulator("mode")
    acc.update(z.flatten(0, 1))  # statistics over every latent frame, as step 5 takes them
    stats = acc.result()
    enc = load_encoder(save_encoder_export(tmp_path / "enc.pt", model, stats, LABELS, 32, {}))
    mean, std = (v.reshape(1, 1, -1, 1, 1) for v in stats.lightningdit_stats().values())
    normed = enc.encode(clips, normalize=True)
    torch.testing.assert_close(normed, (z - mean) / std)
    torch.testing.assert_close(enc.denormalize(normed), z)
