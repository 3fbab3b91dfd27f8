"""Step 2 end to end on a fake hub: download, skip, --list, --only, offline --weights_dir, --bundle."""

from __future__ import annotations

import errno
import json

import pytest

import step2_download_models as step2
from aetune.cli import run_main
from aetune.setup import hub
from tests.test_hub import FakeRemote
from tests.write_faults import read_only, snapshot


@pytest.fixture
def remote(monkeypatch, tmp_path) -> FakeRemote:
    fake = FakeRemote(monkeypatch, tmp_path)
    monkeypatch.setattr(step2, "REGISTRY", fake.specs)
    monkeypatch.setattr(step2, "can_reach", lambda host: True)
    return fake


def run(tmp_path, *flags: str) -> int:
    return run_main(step2.main, step2.parse_args(["--output_dir", str(tmp_path / "work"), *flags]))


def test_downloads_defaults_then_skips(remote, tmp_path, capsys):
    assert run(tmp_path) == 0
    manifest = json.loads((tmp_path / "work" / "models" / "manifest.json").read_text())
    assert sorted(manifest) == ["hf_model", "net"]  # "aux" is optional: only with --only
    assert set(manifest["net"]) >= {"path", "sha256", "bytes", "source", "revision"}
    assert run(tmp_path) == 0
    assert len(remote.hf_calls) == 1 and len(remote.ranges) == 1
    out = capsys.readouterr().out
    assert "hf_model             downloaded" in out and "hf_model             ok" in out


def test_only_and_list(remote, tmp_path, capsys):
    assert run(tmp_path, "--only", "aux") == 0
    assert list(hub.read_manifest(tmp_path / "work")) == ["aux"]
    capsys.readouterr()
    assert run(tmp_path, "--list") == 0
    out = capsys.readouterr().out
    assert "aux" in out and "present (sha256-prefix)" in out
    assert "hf_model" in out and "missing" in out and "[optional: --only]" in out
    assert run(tmp_path, "--only", "hf_modle") == 2
    assert "error: unknown weight 'hf_modle'; did you mean 'hf_model'?" in capsys.readouterr().err


def test_offline_lists_exact_files_to_attach(remote, tmp_path, capsys):
    assert run(tmp_path, "--offline") == 2
    err = capsys.readouterr().err
    for spec in remote.specs[:2]:
        assert f"error: weight '{spec.name}' is missing: attach a Kaggle dataset holding {spec.filename}" in err
    assert remote.hf_calls == [] and remote.ranges == []


def test_unreachable_host_is_offline(remote, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(step2, "can_reach", lambda host: host != "huggingface.co")
    assert run(tmp_path) == 2
    out = capsys.readouterr().out
    assert "MISSING    (no internet)" in out and "net                  downloaded" in out
    assert remote.hf_calls == []


def test_bundle_then_offline_session(remote, tmp_path):
    bundle = tmp_path / "bundle"
    assert run(tmp_path, "--bundle", str(bundle)) == 0
    assert (bundle / hub.BUNDLE_INDEX).is_file() and (bundle / "org-model.safetensors").is_file()
    work2 = tmp_path / "session2"
    args = ["--output_dir", str(work2), "--offline", "--weights_dir", str(bundle)]
    assert run_main(step2.main, step2.parse_args(args)) == 0
    manifest = hub.read_manifest(work2)
    assert manifest["hf_model"]["path"] == str((bundle / "org-model.safetensors").resolve())
    assert manifest["hf_model"]["check"] == "sha256"


def test_bad_weights_dir(remote, tmp_path, capsys):
    assert run(tmp_path, "--weights_dir", str(tmp_path / "nope")) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_config_selects_what_the_run_needs(tmp_path, capsys):
    from aetune.config import load_config
    from aetune.setup.weights_registry import weights_for_config

    assert weights_for_config(load_config("demo")) == []
    assert weights_for_config(load_config("vavae")) == [
        "vavae",
        "vavae_latents_stats",
        "dinov2_vitl14",
        "lpips_vgg16",
        "fid_inception",
    ]
    assert weights_for_config(load_config("vavae", ["teacher.weights_path=/x.safetensors"]))[2] == "lpips_vgg16"
    assert run(tmp_path, "--config", "demo") == 0
    assert "nothing to fetch" in capsys.readouterr().out


@pytest.mark.parametrize("content", [b"", b'{"hf_model": {"path": ', b'["hf"]'], ids=["empty", "truncated", "list"])
def test_corrupt_manifest_is_rebuilt_without_downloading_again(remote, tmp_path, capsys, content):
    assert run(tmp_path) == 0
    manifest = hub.manifest_file(tmp_path / "work")
    good = json.loads(manifest.read_text())
    calls = (len(remote.hf_calls), len(remote.ranges))
    manifest.write_bytes(content)
    capsys.readouterr()
    assert run(tmp_path) == 0  # what the error of steps 4 and 5 tells the user to do
    assert (len(remote.hf_calls), len(remote.ranges)) == calls  # found again in models/, verified, not fetched
    assert json.loads(manifest.read_text()) == good
    out = capsys.readouterr().out
    assert f"warning: {manifest} " in out and ": rebuilding it" in out
    assert "hf_model             found" in out


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err  # progress bars share stderr: only the error lines count
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_output_dir_or_models_dir_in_the_way(remote, tmp_path, capsys):
    blocker = tmp_path / "work"
    blocker.write_text("a file")
    assert run(tmp_path) == 2
    assert "is in the way" in _one_error_line(capsys)
    assert run_main(step2.main, step2.parse_args(["--output_dir", str(tmp_path / "w2"), "--models_dir", str(blocker)]))
    assert str(blocker) in _one_error_line(capsys)
    assert blocker.read_text() == "a file" and remote.hf_calls == []


def test_read_only_models_dir_is_not_reported_as_a_missing_weight(remote, tmp_path, capsys):
    assert run(tmp_path) == 0
    models = tmp_path / "work" / "models"
    (models / "org-model.safetensors").unlink()  # one to fetch again
    before = snapshot(models)
    capsys.readouterr()
    with read_only(models):
        assert run(tmp_path) == 2
        line = _one_error_line(capsys)
    assert "cannot write" in line and "is missing" not in line
    assert snapshot(models) == before


def test_disk_full_during_a_download(remote, tmp_path, monkeypatch, capsys):
    assert run(tmp_path, "--only", "net") == 0
    before = snapshot(tmp_path / "work")
    capsys.readouterr()

    def full(spec, dest):
        raise OSError(errno.ENOSPC, "No space left on device", str(dest) + ".part")

    monkeypatch.setattr(hub, "download", full)
    assert run(tmp_path) == 2
    assert _one_error_line(capsys).startswith("error: disk full while writing")
    assert snapshot(tmp_path / "work") == before  # the manifest still lists what was verified


def test_bundle_path_that_is_a_file(remote, tmp_path, capsys):
    target = tmp_path / "bundle"
    target.write_text("x")
    assert run(tmp_path, "--bundle", str(target)) == 2
    assert _one_error_line(capsys) == f"error: --bundle {target} is a file, not a folder"
    assert remote.hf_calls == [] and remote.ranges == []  # refused before hours of downloads
