"""``aetune.load_weights(model, *files)`` loads every released layout the families read, strictly, by family.

Each case writes random weights in a released layout (the builders of the families' own tests), loads them
through the public function and checks the model now holds exactly those numbers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import aetune
from aetune.families.vavae.loading import lightningdit_state_dict
from aetune.models import CheckpointError, create_autoencoder, get_family
from aetune.nn.patchgan import NLayerDiscriminator


def _randomised(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}


def test_lightningdit_checkpoint_with_its_discriminator(tmp_path: Path) -> None:
    opts = get_family("vavae").tiny
    source = create_autoencoder("vavae", **opts)
    source.load_state_dict(_randomised(source, 1))
    disc = NLayerDiscriminator(ndf=8, n_layers=2)
    path = tmp_path / "vavae.ckpt"
    torch.save({"state_dict": lightningdit_state_dict(source, disc)}, path)
    model, into = create_autoencoder("vavae", **opts), NLayerDiscriminator(ndf=8, n_layers=2)
    report = aetune.load_weights(model, path, discriminator=into)
    assert report.missing == report.unexpected == []
    assert report.loaded == len(model.state_dict()) + len(into.state_dict())
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert torch.equal(into.state_dict()["main.0.weight"], disc.state_dict()["main.0.weight"])


def test_rae_released_decoder_and_diffusers_file(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from tests.test_rae_loading import diffusers_rae, ours_like, random_released_decoder, tiny_rae

    model = tiny_rae()
    state = random_released_decoder(model)
    torch.save(state, tmp_path / "model.pt")
    report = aetune.load_weights(model, tmp_path / "model.pt")
    assert report.missing == report.unexpected == []
    assert torch.equal(model.decoder.decoder_pred.weight, state["decoder_pred.weight"])

    ref = diffusers_rae("dinov2")
    model = ours_like("dinov2")
    report = aetune.load_weights(model, ref.state_dict())
    assert report.missing == report.unexpected == []
    ours = model.state_dict()
    assert torch.equal(ours["decoder.decoder_pred.weight"], ref.state_dict()["decoder.decoder_pred.weight"])


def test_taesd_released_halves_and_diffusers_layout(tmp_path: Path) -> None:
    from tests.test_taesd import W, diffusers_tiny, random_state, released_shapes

    enc_shapes, dec_shapes = released_shapes(latent_channels=4, width=W)
    enc, dec = random_state(enc_shapes, 1), random_state(dec_shapes, 2)
    torch.save(enc, tmp_path / "taesd_encoder.pth")
    torch.save(dec, tmp_path / "taesd_decoder.pth")
    model = create_autoencoder("taesd", width=W)
    report = aetune.load_weights(model, tmp_path / "taesd_encoder.pth", tmp_path / "taesd_decoder.pth")
    assert (report.missing, report.unexpected, report.loaded) == ([], [], len(enc) + len(dec))
    assert torch.equal(model.decoder[19].bias, dec["19.bias"])

    ref = diffusers_tiny(4, 3, seed=5)
    model = create_autoencoder("taesd", width=W)
    report = aetune.load_weights(model, ref.state_dict())
    assert report.loaded == len(ref.state_dict())
    assert torch.equal(model.encoder[0].weight, ref.state_dict()["encoder.layers.0.weight"])


def test_taehv_released_layout_and_the_allow_partial_option() -> None:
    model = create_autoencoder("taehv")
    released = _randomised(model, 3)
    report = aetune.load_weights(model, released)
    assert (report.missing, report.unexpected, report.loaded) == ([], [], len(released))
    assert torch.equal(model.state_dict()["decoder.13.conv.weight"], released["decoder.13.conv.weight"])
    decoder_only = {k: v for k, v in released.items() if k.startswith("decoder.")}
    with pytest.raises(CheckpointError, match="missing"):
        aetune.load_weights(create_autoencoder("taehv"), decoder_only)
    report = aetune.load_weights(create_autoencoder("taehv"), decoder_only, allow_partial=True)
    assert report.missing and all(k.startswith("encoder.") for k in report.missing)


def test_monai_autoencoder_kl_state_dict(tmp_path: Path) -> None:
    pytest.importorskip("monai")
    opts = get_family("kl3d").tiny
    model = create_autoencoder("kl3d", **opts)
    state = _randomised(model, 4)  # MONAI's key names are the model's
    torch.save(state, tmp_path / "autoencoder.pt")
    report = aetune.load_weights(model, tmp_path / "autoencoder.pt")
    assert report.loaded == len(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_another_familys_file_is_one_line_naming_it(tmp_path: Path) -> None:
    taesd = create_autoencoder("taesd", width=8)
    torch.save(taesd.state_dict(), tmp_path / "tiny.pt")
    vavae = create_autoencoder("vavae", **get_family("vavae").tiny)
    with pytest.raises(CheckpointError) as err:
        aetune.load_weights(vavae, tmp_path / "tiny.pt")
    assert "\n" not in str(err.value) and "tiny.pt" in str(err.value) and "taesd" in str(err.value)


def test_an_option_the_familys_loader_does_not_take_is_a_type_error() -> None:
    model = create_autoencoder("taehv")
    with pytest.raises(TypeError):
        aetune.load_weights(model, model.state_dict(), discriminator=None)
