"""Strict weight loading: the released checkpoint's layout, foreign files, and every way to fail loudly."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from aetune.families.vavae.loading import lightningdit_state_dict
from aetune.models import CheckpointError, create_autoencoder, load_weights, read_state_dict
from aetune.nn.patchgan import NLayerDiscriminator

SMALL = {"ch": 32, "ch_mult": [1, 1, 2], "attn_resolutions": [8], "resolution": 32, "align_dim": 64}


def vavae(seed: int, **kw):
    torch.manual_seed(seed)
    return create_autoencoder("vavae", **{**SMALL, **kw})


def released_layout(model, disc) -> dict[str, torch.Tensor]:
    """What the released file holds: our keys, loss.logvar, plus the teacher and LPIPS groups."""
    state = lightningdit_state_dict(model, disc)
    state["foundation_model.model.cls_token"] = torch.zeros(1, 1, 8)
    state["foundation_model.model.blocks.0.attn.qkv.weight"] = torch.zeros(24, 8)
    state["loss.perceptual_loss.net.slice1.0.weight"] = torch.zeros(4, 3, 3, 3)
    return state


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


def test_full_lightning_checkpoint_loads_memory_mapped_and_reports_skips(tmp_path: Path) -> None:
    src, src_disc = vavae(1), NLayerDiscriminator(ndf=8)
    src_disc.main[3].running_mean.fill_(0.5)  # buffers travel too
    path = tmp_path / "vavae.ckpt"
    ckpt = {"state_dict": released_layout(src, src_disc), "epoch": 3, "global_step": 100, "optimizer_states": [{}]}
    torch.save(ckpt, path)
    assert zipfile.is_zipfile(path)  # the format torch.load can memory-map
    dst, dst_disc = vavae(2), NLayerDiscriminator(ndf=8)
    report = load_weights(dst, path, discriminator=dst_disc)
    assert_same_weights(dst, src)
    assert_same_weights(dst_disc, src_disc)
    assert report.missing == [] and report.unexpected == []
    assert sorted(report.skipped) == sorted(
        ["foundation_model.model.cls_token", "foundation_model.model.blocks.0.attn.qkv.weight",
         "loss.perceptual_loss.net.slice1.0.weight", "loss.logvar"]
    )  # fmt: skip
    assert report.loaded == len(dst.state_dict()) + len(dst_disc.state_dict())
    assert "skipped 2 x foundation_model.*" in report.summary()
    assert report.source == str(path)


def test_without_a_discriminator_its_keys_are_skipped() -> None:
    report = load_weights(vavae(2), lightningdit_state_dict(vavae(1), NLayerDiscriminator(ndf=8)))
    assert any(k.startswith("loss.discriminator.main.") for k in report.skipped)
    assert report.missing == [] and report.unexpected == []


def test_plain_and_safetensors_state_dicts(tmp_path: Path) -> None:
    src = vavae(1)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, path)
    dst = vavae(2)
    assert load_weights(dst, path).skipped == []
    assert_same_weights(dst, src)
    plain = tmp_path / "w.pt"
    torch.save(src.state_dict(), plain)
    assert load_weights(vavae(3), plain).loaded == len(src.state_dict())


def test_missing_and_unexpected_keys_are_errors_unless_partial(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    kl_state = create_autoencoder("kl", **{k: v for k, v in SMALL.items() if k != "align_dim"}).state_dict()
    with pytest.raises(
        CheckpointError,
        match=r"\(a kl checkpoint: ch=32.*\) does not match the model \(vavae\(.*\)\): missing linear_proj.weight",
    ):
        load_weights(vavae(1), kl_state)
    state = {**vavae(1).state_dict(), "extra.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="unexpected extra.weight; .*allow_partial") as err:
        load_weights(vavae(2), state)
    assert "\n" not in str(err.value)
    model = vavae(2)
    proj_before = model.linear_proj.weight.detach().clone()
    with caplog.at_level(logging.WARNING, logger="aetune.models.loading"):
        report = load_weights(model, kl_state, allow_partial=True)
    assert report.missing == ["linear_proj.weight"]
    assert torch.equal(model.linear_proj.weight, proj_before)
    torch.testing.assert_close(model.encoder.conv_in.weight, kl_state["encoder.conv_in.weight"])
    assert "missing (left at initialisation): linear_proj.weight" in caplog.text


def test_wrong_family_and_wrong_size_fail_in_one_line() -> None:
    full = create_autoencoder("vavae").state_dict()
    with pytest.raises(CheckpointError) as err:
        load_weights(vavae(1), full)
    msg = str(err.value)
    assert "\n" not in msg
    assert "a vavae checkpoint: ch=128, 5 levels, embed_dim=32" in msg and "vavae(ch=32, ch_mult=[1, 1, 2]" in msg
    assert "encoder.conv_in.weight is [128, 3, 3, 3] there and [32, 3, 3, 3] here" in msg
    # a tiny model of another kind entirely
    with pytest.raises(CheckpointError, match="not an LDM KL autoencoder: keys start main.0.weight"):
        load_weights(vavae(1), NLayerDiscriminator(ndf=8).state_dict())


def test_a_file_that_needs_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": vavae(1).state_dict(), "hparams": zipfile.ZipInfo("x")}, path)
    with pytest.raises(
        CheckpointError, match=r"needs pickle to load \(the Python object zipfile.ZipInfo\); aetune never runs"
    ):
        load_weights(vavae(2), path)


def test_non_tensor_content_missing_file_and_nonzero_logvar(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is not a state dict: epoch are not tensors"):
        read_state_dict({"epoch": 3, "w": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(vavae(1), tmp_path / "nope.ckpt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match="holds a Tensor, not a state dict"):
        load_weights(vavae(1), tmp_path / "tensor.pt")
    state = lightningdit_state_dict(vavae(1))
    state["loss.logvar"] = torch.tensor(0.5)
    with pytest.raises(CheckpointError, match="loss.logvar=0.5"):
        load_weights(vavae(2), state)


def test_shape_mismatch_is_an_error_even_when_partial() -> None:
    state = vavae(1, align_dim=32).state_dict()
    with pytest.raises(
        CheckpointError, match=r"linear_proj.weight is \[32, 32, 1, 1\] there and \[64, 32, 1, 1\] here"
    ):
        load_weights(vavae(2), state, allow_partial=True)
