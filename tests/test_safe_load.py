"""Safe reading of weight files: the released full Lightning checkpoint, and files that are not what they claim."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from aetune.errors import AetuneError
from aetune.families.vavae.loading import lightningdit_state_dict
from aetune.models import CheckpointError, create_autoencoder, load_weights, read_state_dict
from aetune.models.checkpoint import load_autoencoder_checkpoint, read_checkpoint
from aetune.nn.patchgan import NLayerDiscriminator
from aetune.safe_load import PICKLE, SAFETENSORS, ZIP, load_torch_file, sniff

KEYS = json.loads((Path(__file__).parent / "fixtures" / "vavae_f16d32_keys.json").read_text())["keys"]
SMALL = {"ch": 32, "ch_mult": [1, 1, 2], "attn_resolutions": [8], "resolution": 32, "align_dim": 64}
TEACHER_AND_LPIPS = {
    "foundation_model.model.cls_token": (1, 1, 1024),
    "foundation_model.model.pos_embed": (1, 1370, 1024),
    "foundation_model.model.blocks.0.attn.qkv.weight": (3072, 1024),
    "loss.perceptual_loss.net.slice1.0.weight": (64, 3, 3, 3),
    "loss.perceptual_loss.lin0.model.1.weight": (1, 64, 1, 1),
}


def ldm_hyper_parameters():
    """What LDM's main.py hands to a LightningModule: OmegaConf containers, nested, with a list and a None."""
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create(
        {
            "base_learning_rate": 1.0e-4,
            "target": "ldm.models.autoencoder.AutoencoderKL",
            "params": {
                "embed_dim": 32,
                "ddconfig": {"ch": 128, "ch_mult": [1, 1, 2, 2, 4], "double_z": True, "attn_resolutions": [16]},
                "lossconfig": {"params": {"disc_start": 1, "kl_weight": 1e-6, "ckpt_path": None}},
                "ref": "${params.embed_dim}",  # an interpolation stays its text
            },
        }
    )
    return {"ddconfig": cfg.params.ddconfig, "lossconfig": cfg.params.lossconfig, "embed_dim": 32, "full": cfg}


@pytest.fixture(scope="session")
def released(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A full-size stand-in for ``vavae-imagenet256-f16d32-dinov2.pt``: random weights in the released layout.

    All 366 autoencoder + discriminator keys, teacher and LPIPS keys, OmegaConf hyper-parameters, an
    optimizer state, Lightning's bookkeeping. ~290 MB, written once per session.
    """
    torch.manual_seed(0)
    model, disc = create_autoencoder("vavae"), NLayerDiscriminator()
    state = lightningdit_state_dict(model, disc)
    assert {k: list(v.shape) for k, v in state.items()} == KEYS  # exactly the released layout
    state.update({k: torch.randn(shape) for k, shape in TEACHER_AND_LPIPS.items()})
    ckpt = {
        "epoch": 41,
        "global_step": 400_000,
        "pytorch-lightning_version": "1.4.2",
        "state_dict": state,
        "hyper_parameters": ldm_hyper_parameters(),
        "optimizer_states": [{"state": {0: {"step": 3, "exp_avg": torch.zeros(4)}}, "param_groups": [{"lr": 1e-4}]}],
        "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.5), "dirpath": "/logs"}},
    }
    path = tmp_path_factory.mktemp("released") / "vavae-imagenet256-f16d32-dinov2.pt"
    torch.save(ckpt, path)
    return path, {k: v for k, v in state.items() if k in KEYS}


def test_plain_weights_only_load_refuses_the_released_layout(released) -> None:
    """The premise: torch's own safe load cannot read it (so a plain weights_only loader is not enough)."""
    import pickle

    with pytest.raises(pickle.UnpicklingError, match="omegaconf"):
        torch.load(released[0], weights_only=True)


def test_released_full_checkpoint_loads_every_key(released) -> None:
    path, state = released
    torch.manual_seed(1)
    model, disc = create_autoencoder("vavae"), NLayerDiscriminator()
    report = load_weights(model, path, discriminator=disc)
    assert report.missing == [] and report.unexpected == []
    assert report.loaded == len(KEYS) - 1  # every key but loss.logvar (checked to be 0, then skipped)
    assert sorted(report.skipped) == sorted([*TEACHER_AND_LPIPS, "loss.logvar"])
    ours = {**model.state_dict(), **{f"loss.discriminator.{k}": v for k, v in disc.state_dict().items()}}
    for key in (
        "encoder.conv_in.weight",
        "decoder.conv_out.bias",
        "linear_proj.weight",
        "loss.discriminator.main.0.weight",
    ):
        assert torch.equal(ours[key], state[key]), key
    assert report.source == str(path)


def test_hyper_parameters_come_back_as_plain_data(released) -> None:
    ckpt = load_torch_file(released[0])
    hp = ckpt["hyper_parameters"]
    assert hp["ddconfig"] == {"ch": 128, "ch_mult": [1, 1, 2, 2, 4], "double_z": True, "attn_resolutions": [16]}
    assert type(hp["ddconfig"]) is dict and type(hp["ddconfig"]["ch_mult"]) is list
    assert hp["lossconfig"] == {"params": {"disc_start": 1, "kl_weight": 1e-6, "ckpt_path": None}}
    assert hp["full"]["params"]["ref"] == "${params.embed_dim}" and hp["full"]["base_learning_rate"] == 1e-4
    assert ckpt["optimizer_states"][0]["state"][0]["step"] == 3 and ckpt["epoch"] == 41
    assert ckpt["callbacks"]["ModelCheckpoint"]["best_model_score"].item() == 0.5


def test_loads_without_omegaconf_installed(tmp_path: Path) -> None:
    """The loader never imports OmegaConf: a session without it reads the same checkpoint."""
    path = tmp_path / "hp.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": ldm_hyper_parameters()}, path)
    code = (
        "import sys; sys.modules['omegaconf'] = None\n"  # any `import omegaconf` now raises ImportError
        "from aetune.safe_load import load_torch_file\n"
        f"ckpt = load_torch_file({str(path)!r})\n"
        "assert ckpt['hyper_parameters']['ddconfig']['ch_mult'] == [1, 1, 2, 2, 4], ckpt\n"
        "assert 'omegaconf' not in {m.split('.')[0] for m in sys.modules if sys.modules[m] is not None}\n"
        "print('ok', float(ckpt['state_dict']['w'].sum()))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok 2.0"


def test_lightning_attribute_dict_and_namespace(tmp_path: Path) -> None:
    import argparse

    from pytorch_lightning.utilities.parsing import AttributeDict

    path = tmp_path / "pl.ckpt"
    hp = AttributeDict(lr=1e-4, nested={"a": [1, 2]})
    torch.save({"state_dict": {}, "hyper_parameters": hp, "args": argparse.Namespace(batch=8)}, path)
    ckpt = load_torch_file(path)
    assert ckpt["hyper_parameters"] == {"lr": 1e-4, "nested": {"a": [1, 2]}} and ckpt["args"] == {"batch": 8}
    assert type(ckpt["hyper_parameters"]) is dict


class Exploit:
    """Pickles as a call to os.system: what a malicious checkpoint hides in its metadata."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_reduce_is_refused_in_one_line_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": {"x": Exploit(marker)}}, path)
    for load in (load_torch_file, read_state_dict, read_checkpoint):
        with pytest.raises(CheckpointError) as err:
            load(path)
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(str(path))
        assert "needs pickle to load (the Python object posix.system); aetune never runs code" in msg
    assert not marker.exists()


class Forged:
    """Pickles as a call of ``call`` (published under ``name``) with a shell command as argument."""

    def __init__(self, call) -> None:
        self.call = call

    def __reduce__(self):
        return (self.call, ("rm -rf /",))


def test_stand_ins_do_not_make_config_names_a_way_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pickle that calls an allowed config name with arguments gets inert data; other calls stay refused."""
    import types

    def fake(*args):  # what pickle will record as omegaconf.dictconfig.DictConfig
        raise AssertionError("never called on load")

    module = types.ModuleType("omegaconf.dictconfig")
    fake.__module__, fake.__qualname__, module.DictConfig = "omegaconf.dictconfig", "DictConfig", fake
    monkeypatch.setitem(sys.modules, "omegaconf.dictconfig", module)
    path = tmp_path / "forged.pt"
    torch.save({"hyper_parameters": Forged(fake)}, path)
    assert load_torch_file(path) == {"hyper_parameters": None}  # an inert stand-in with no content
    torch.save({"hyper_parameters": Forged(eval)}, path)
    with pytest.raises(CheckpointError, match=r"needs pickle to load \(the Python object eval\)"):
        load_torch_file(path)


def test_a_self_referencing_checkpoint_is_an_error_not_a_hang(tmp_path: Path) -> None:
    loop: dict = {"w": torch.zeros(1)}
    loop["me"] = loop
    torch.save({"state_dict": loop}, tmp_path / "loop.pt")
    with pytest.raises(CheckpointError, match="self-referencing"):
        load_torch_file(tmp_path / "loop.pt")


def _good_pt(tmp_path: Path) -> bytes:
    torch.manual_seed(0)
    path = tmp_path / "good.pt"
    torch.save({"state_dict": create_autoencoder("vavae", **SMALL).state_dict()}, path)
    return path.read_bytes()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.pt", lambda good: b"", r"is empty \(0 bytes\)"),
        ("html.pt", lambda good: b"<!DOCTYPE html><html>Sign in</html>", "is an HTML or XML page"),
        ("lfs.ckpt", lambda good: b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n", "Git LFS pointer"),
        ("notes.pt", lambda good: b"my weights are on the other disk\n", "is a text file \\(starts 'my weights"),
        ("cut.pt", lambda good: good[: len(good) // 2], "truncated or damaged zip archive"),
        ("noise.pt", lambda good: bytes(range(7, 200)), "neither a PyTorch nor a safetensors file"),
        ("cut.safetensors", lambda good: b'\xff\x00\x00\x00\x00\x00\x00\x00{"a":', "truncated safetensors file"),
        ("bad.safetensors", lambda good: b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage", "not a valid safetensors"),
        ("legacy_cut.pt", lambda good: b"\x80\x02\x8a\x0along", "is corrupt or truncated"),
    ],
)
def test_files_that_are_not_weights_name_the_path(tmp_path: Path, name: str, content, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content(_good_pt(tmp_path)))
    for load in (lambda p: load_weights(create_autoencoder("vavae", **SMALL), p), read_state_dict):
        with pytest.raises(CheckpointError, match=message) as err:
            load(path)
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(str(path)) and "<state dict>" not in msg


def test_format_is_read_from_content_not_name(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = create_autoencoder("vavae", **SMALL).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "really_safetensors.pt")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.save(state, tmp_path / "zipped.bin")
    assert sniff(tmp_path / "really_safetensors.pt") == SAFETENSORS
    assert sniff(tmp_path / "legacy.pt") == PICKLE and sniff(tmp_path / "zipped.bin") == ZIP
    for name in ("really_safetensors.pt", "legacy.pt", "zipped.bin"):
        loaded, source = read_state_dict(tmp_path / name)
        assert source == str(tmp_path / name) and loaded.keys() == state.keys()
        assert torch.equal(loaded["encoder.conv_in.weight"], state["encoder.conv_in.weight"])
    with pytest.raises(CheckpointError, match=r"does not exist \(it is a folder\)"):
        read_state_dict(tmp_path)
    whole = (tmp_path / "really_safetensors.pt").read_bytes()
    (tmp_path / "short.safetensors").write_bytes(whole[:-100])  # header intact, tensor data cut
    with pytest.raises(CheckpointError, match=r"short.safetensors is not a valid safetensors file \(.*incomplete"):
        read_state_dict(tmp_path / "short.safetensors")


def test_a_state_dict_read_from_a_file_keeps_its_name_in_later_errors(tmp_path: Path) -> None:
    """Step 4 reads the file first (to look for a discriminator), then loads the mapping: errors still name it."""
    torch.manual_seed(0)
    path = tmp_path / "other_size.pt"
    torch.save(create_autoencoder("vavae", **{**SMALL, "ch": 64}).state_dict(), path)
    weights, name = read_state_dict(path)
    with pytest.raises(CheckpointError) as err:
        load_weights(create_autoencoder("vavae", **SMALL), weights)
    assert str(err.value).startswith(f"{path} (a vavae checkpoint: ch=64") and "<state dict>" not in str(err.value)
    with pytest.raises(CheckpointError, match=r"^given.pt \(a vavae"):
        load_weights(create_autoencoder("vavae", **SMALL), dict(weights), source="given.pt")


def test_another_family_is_named(tmp_path: Path) -> None:
    torch.manual_seed(0)
    kl = {k: v for k, v in SMALL.items() if k != "align_dim"}
    path = tmp_path / "kl.pt"
    torch.save({"state_dict": create_autoencoder("kl", **kl).state_dict()}, path)
    with pytest.raises(CheckpointError, match=rf"^{path} \(a kl checkpoint: .*missing linear_proj.weight"):
        load_weights(create_autoencoder("vavae", **SMALL), path)
    torch.save(NLayerDiscriminator(ndf=8).state_dict(), tmp_path / "disc.pt")
    with pytest.raises(CheckpointError, match="disc.pt .*not an LDM KL autoencoder: keys start main.0.weight"):
        load_weights(create_autoencoder("vavae", **SMALL), tmp_path / "disc.pt")


def test_aetune_checkpoints_load_as_pretrained_weights(tmp_path: Path) -> None:
    """A stage checkpoint or a *_final.pt given as pretrained weights: the released layout, discriminator included."""
    torch.manual_seed(0)
    model, disc = create_autoencoder("vavae", **SMALL), NLayerDiscriminator(ndf=8)
    stage = {
        "state_dict": {**{f"autoencoder.{k}": v for k, v in model.state_dict().items()},
                       **{f"discriminator.{k}": v for k, v in disc.state_dict().items()}},
        "aetune": {"family": "vavae"},
    }  # fmt: skip
    final = {
        "format": "aetune.autoencoder/1",
        "state_dict": model.state_dict(),
        "discriminator_state_dict": disc.state_dict(),
    }
    for name, obj in (("last.ckpt", stage), ("vavae_x_final.pt", final)):
        torch.save(obj, tmp_path / name)
        fresh, fresh_disc = create_autoencoder("vavae", **SMALL), NLayerDiscriminator(ndf=8)
        report = load_weights(fresh, tmp_path / name, discriminator=fresh_disc)
        assert report.loaded == len(model.state_dict()) + len(disc.state_dict()) and report.missing == []
        assert torch.equal(fresh.decoder.conv_out.weight, model.decoder.conv_out.weight)
        assert torch.equal(fresh_disc.main[0].weight, disc.main[0].weight)
    stage["state_dict"]["optimizer.x"] = torch.zeros(1)
    torch.save(stage, tmp_path / "edited.ckpt")
    with pytest.raises(CheckpointError, match="edited.ckpt is an aetune checkpoint with an unknown key optimizer.x"):
        read_state_dict(tmp_path / "edited.ckpt")


def test_step4_checkpoint_readers_name_the_path(tmp_path: Path) -> None:
    good = _good_pt(tmp_path)
    cases = {"last.ckpt": good[:1000], "best.ckpt": b"", "notes.ckpt": b"see the other session\n"}
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        for load in (read_checkpoint, load_autoencoder_checkpoint):
            with pytest.raises(AetuneError) as err:
                load(path)
            msg = str(err.value)
            assert "\n" not in msg and msg.startswith(str(path)) and "use another one" in msg
    torch.save([1, 2], tmp_path / "list.ckpt")
    with pytest.raises(AetuneError, match="holds a list, not an aetune checkpoint"):
        read_checkpoint(tmp_path / "list.ckpt")
