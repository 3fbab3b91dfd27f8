"""step5_validate_export.py as a user runs it: every output, parts, re-runs, and the error paths."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import step5_validate_export as step5
from aetune import metrics
from aetune.cli import run_main
from aetune.config import load_config
from aetune.data.prepare import prepare_dataset
from aetune.evaluate import figures, report, result_set
from aetune.evaluate.export import load_encoder
from aetune.families.vavae.loading import lightningdit_state_dict
from aetune.models import create_autoencoder, get_family
from aetune.setup import hub
from aetune.train.plan import RunState
from tests.conftest import make_user_folders
from tests.family_fixtures import TINY_DATA

REPO = Path(__file__).resolve().parent.parent
USERS = {"ID_1": 5, "ID_2": 5, "ID_10": 5}


def _n(work: Path, split: str) -> int:
    """Images step 3 put in ``split`` (15 in all; how many land in val is step 3's rule, not ours)."""
    return len(json.loads((work / "data" / "split.json").read_text())[split])


def _run(args: list[str]) -> int:
    return run_main(step5.main, step5.parse_args(["--no_progress", "--batch_size", "4", *args]))


def _write_final(
    work: Path,
    family: str = "vavae",
    seed: int = 0,
    name: str | None = None,
    labels: dict[str, int] | None = None,
    preset: str = "demo",
) -> Path:
    """A final model in step 4's format, from a tiny model and ``preset`` (the demo: random teacher, no LPIPS)."""
    torch.manual_seed(seed)
    args = get_family(family).tiny
    model = create_autoencoder(family, **args)
    cfg = load_config(preset, [f"model.family={family}", "data.image_size=32", "data.cache=ram"])
    labels = labels or json.loads((work / "data" / "labels.json").read_text())
    path = work / "checkpoints" / (name or f"{family}_toy_final.pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": "aetune.autoencoder/1",
            "family": family,
            "model_config": model.config,
            "state_dict": model.state_dict(),
            "discriminator_state_dict": {},
            "config": cfg.to_dict(),
            "labels": labels,
            "dataset": "toy",
            "stage": "3",
            "random_teacher": True,
            "lpips": False,
        },
        path,
    )
    return path


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Step 3 done on 3 users x 5 images (32 px), a final model, a stage's metrics.csv; no hub weights."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no Inception / VGG weights here
    root = make_user_folders(tmp_path / "data", USERS)
    work = tmp_path / "work"
    prepare_dataset(root, work, name="toy", val_ratio=0.4, progress=False)
    _write_final(work)
    rows = ["step,train/g_total,val/psnr"] + [f"{i},{1 / (i + 1)}," for i in range(20)] + ["19,,14.5"]
    (work / "checkpoints" / "stage1").mkdir()
    (work / "checkpoints" / "stage1" / "metrics.csv").write_text("\n".join(rows) + "\n")
    return work


def test_all_writes_every_output(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["--output_dir", str(work), "--all"]) == 0
    res = work / "results"
    expected = {
        "metrics.json", "reconstruction_results.png", "latent_users.png", "training_curves.png",
        "latent_statistics.json", "latents_stats.pt", "vavae_encoder_for_dit.pt", "vavae_toy_lightningdit.pt",
        "latents",
    }  # fmt: skip
    assert {p.name for p in res.iterdir()} == expected  # and no temporary files left behind
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".")) == []  # no staging folder either
    assert sorted(p.name for p in (res / "latents").iterdir()) == [
        "latents_index.json", "latents_rank00_shard000.safetensors", "latents_stats.pt",
    ]  # fmt: skip

    m = json.loads((res / "metrics.json").read_text())
    assert m["random_teacher"] is True and any("RANDOM TEACHER" in w for w in m["warnings"])
    assert m["split"] == "val" and m["num_images"] == _n(work, "val") and set(m["per_user"]) == set(USERS)
    assert isinstance(m["overall"]["psnr"], float) and isinstance(m["overall"]["ssim_y"], float)
    assert m["overall"]["lpips"].startswith("unavailable: this run trained without pretrained LPIPS")
    assert m["overall"]["rfid"].startswith("unavailable:") and "pt_inception" in m["overall"]["rfid"]
    assert m["overall"]["final_score"].startswith("unavailable")
    assert m["checks"]["PSNR > 25 dB (minimum)"] is (m["overall"]["psnr"] > 25)
    assert 0.0 <= m["latent_space"]["linear_probe_accuracy"] <= 1.0
    assert -1.0 <= m["latent_space"]["silhouette"] <= 1.0

    stats = json.loads((res / "latent_statistics.json").read_text())
    assert stats["split"] == "train" and stats["num_images"] == _n(work, "train") and stats["source"] == "mode"
    lightningdit = torch.load(res / "latents_stats.pt", weights_only=True)
    channels = create_autoencoder("vavae", **get_family("vavae").tiny).latent_channels
    assert lightningdit["std"].shape == (1, channels, 1, 1)
    assert lightningdit["std"].flatten().tolist() == pytest.approx(stats["channel_std"], rel=1e-6)

    payload = torch.load(res / "vavae_encoder_for_dit.pt", weights_only=True)
    assert payload["info"]["random_teacher"] is True and payload["labels"] == {"ID_1": 0, "ID_2": 1, "ID_10": 2}
    ckpt = torch.load(work / "checkpoints" / "vavae_toy_final.pt", weights_only=True)
    model = create_autoencoder("vavae", **ckpt["model_config"]).eval()
    model.load_state_dict(ckpt["state_dict"])
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(load_encoder(res / "vavae_encoder_for_dit.pt").encode(x), model.encode(x).latents)
    assert set(torch.load(res / "vavae_toy_lightningdit.pt", weights_only=True)) == {"state_dict"}

    out = capsys.readouterr().out
    assert "overall" in out and "PSNR > 25 dB (minimum)" in out and "linear probe accuracy" in out
    assert "RANDOM TEACHER" in out and "from aetune import load_encoder" in out
    assert str(res / "vavae_encoder_for_dit.pt") in out


def test_parts_and_consistent_rerun(work: Path) -> None:
    assert _run(["--output_dir", str(work), "--latent_stats"]) == 0
    res = work / "results"
    assert {p.name for p in res.iterdir()} == {"latent_statistics.json", "latents_stats.pt"}
    first = (res / "latent_statistics.json").read_text()
    assert _run(["--output_dir", str(work), "--latent_stats", "--stats_split", "all"]) == 0
    assert json.loads((res / "latent_statistics.json").read_text())["num_images"] == 15
    assert _run(["--output_dir", str(work), "--latent_stats"]) == 0
    assert (res / "latent_statistics.json").read_text() == first
    assert {p.name for p in res.iterdir()} == {"latent_statistics.json", "latents_stats.pt"}


def test_checkpoint_choice(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    newer = _write_final(work, seed=1, name="vavae_toy2_final.pt")
    assert _run(["--output_dir", str(work), "--export"]) == 0
    payload = torch.load(work / "results" / "vavae_encoder_for_dit.pt", weights_only=True)
    assert payload["info"]["checkpoint"] == str(newer)  # the newest final model by default
    assert _run(["--output_dir", str(work), "--export", "--checkpoint", "checkpoints/vavae_toy_final.pt"]) == 0
    payload = torch.load(work / "results" / "vavae_encoder_for_dit.pt", weights_only=True)
    assert payload["info"]["checkpoint"] == str(work / "checkpoints" / "vavae_toy_final.pt")  # work-relative


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_errors_write_nothing(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corrupt = work / "checkpoints" / "corrupt.pt"
    corrupt.write_bytes(b"\x00" * 100)
    assert _run(["--output_dir", str(work), "--all", "--checkpoint", str(corrupt)]) == 2
    assert "corrupt.pt" in _one_error_line(capsys)
    assert _run(["--output_dir", str(work), "--all", "--checkpoint", "missing.ckpt"]) == 2
    assert "--checkpoint missing.ckpt not found" in _one_error_line(capsys)
    RunState(family="kl", preset="kl", dataset="toy", random_teacher=False).save(work)
    assert _run(["--output_dir", str(work), "--all"]) == 2
    assert "holds a 'vavae' autoencoder, not 'kl'" in _one_error_line(capsys)
    (work / "checkpoints" / "run_state.json").unlink()
    other = _write_final(work, name="vavae_other_final.pt", labels={"ID_1": 0, "ID_2": 1, "ID_3": 2})  # other users
    assert _run(["--output_dir", str(work), "--all", "--checkpoint", str(other)]) == 2
    assert "trained on 3 users" in _one_error_line(capsys)
    assert _run(["--output_dir", str(work), "--all", "--batch_size", "0"]) == 2
    assert not (work / "results").exists()


def test_no_final_model(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "checkpoints" / "vavae_toy_final.pt").unlink()
    assert _run(["--output_dir", str(work)]) == 2
    assert "run step 4 first" in _one_error_line(capsys)


def test_help_runs_without_torch_work() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "step5_validate_export.py"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    flags = (
        "--checkpoint",
        "--all",
        "--metrics",
        "--figures",
        "--latent_stats",
        "--export",
        "--split",
        "--stats_split",
    )
    for flag in (*flags, "--export_latents", "--export_source"):
        assert flag in out


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _hidden(work: Path) -> list[str]:
    return sorted(p.name for p in work.iterdir() if p.name.startswith("."))


def test_disk_full_half_way_leaves_the_previous_results(
    work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    parts = ["--metrics", "--figures", "--latent_stats"]
    assert _run(["--output_dir", str(work), *parts]) == 0
    before = _tree(work / "results")
    _write_final(work, seed=1, name="vavae_toy2_final.pt")  # another model: every number would change

    def disk_full(fig: object, path: Path) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(figures, "save_figure", disk_full)  # after metrics.json was written into the set
    assert _run(["--output_dir", str(work), *parts]) == 2
    assert "disk full" in _one_error_line(capsys)
    assert _tree(work / "results") == before and _hidden(work) == []
    (work / ".results.staging-killed").mkdir()  # what a killed run leaves
    monkeypatch.undo()
    assert _run(["--output_dir", str(work), "--metrics"]) == 0
    assert _hidden(work) == [] and _tree(work / "results") != before
    m = json.loads((work / "results" / "metrics.json").read_text())
    assert m["checkpoint"].endswith("vavae_toy2_final.pt")
    assert (work / "results" / "latents_stats.pt").read_bytes() == before["latents_stats.pt"]  # other parts kept


def test_metric_split_and_statistics_split_are_separate(work: Path) -> None:
    assert _run(["--output_dir", str(work), "--metrics", "--latent_stats", "--split", "all"]) == 0
    res = work / "results"
    assert json.loads((res / "metrics.json").read_text())["num_images"] == _n(work, "train") + _n(work, "val")
    stats = json.loads((res / "latent_statistics.json").read_text())
    assert stats["split"] == "train" and stats["num_images"] == _n(
        work, "train"
    )  # statistics stay on the training split
    assert _run(["--output_dir", str(work), "--latent_stats", "--stats_split", "val"]) == 0
    assert json.loads((res / "latent_statistics.json").read_text())["num_images"] == _n(work, "val")


@pytest.mark.slow
def test_rfid_counts_images(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = work / "inception.pth"
    torch.manual_seed(0)
    net = metrics.InceptionFeatureExtractor(random_weights=True).net
    state = {**net.state_dict(), "fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}
    torch.save(state, weights)
    assert _run(["--output_dir", str(work), "--metrics", "--inception_weights", str(weights)]) == 0
    overall = json.loads((work / "results" / "metrics.json").read_text())["overall"]
    assert isinstance(overall["rfid"], float) and overall["rfid_num_images"] == _n(work, "val")
    assert "fewer than the 2048 feature dimensions" in overall["rfid_note"]
    assert f"{_n(work, 'val')} images, fewer than the 2048" in capsys.readouterr().out  # beside the value


def test_corrupt_inception_weights_leave_the_rest_of_the_report(work: Path) -> None:
    weights = work / "inception.pth"
    weights.write_bytes(b"<html>a login page, not weights</html>")
    assert _run(["--output_dir", str(work), "--metrics", "--figures", "--inception_weights", str(weights)]) == 0
    m = json.loads((work / "results" / "metrics.json").read_text())
    assert m["overall"]["rfid"].startswith("unavailable:") and str(weights) in m["overall"]["rfid"]
    assert isinstance(m["overall"]["psnr"], float) and (work / "results" / "reconstruction_results.png").is_file()


def test_missing_device_is_one_error_line(
    work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _run(["--output_dir", str(work), "--device", "cuda"]) == 2
    assert "--device cuda: no CUDA GPU is visible here" in _one_error_line(capsys)
    assert _run(["--output_dir", str(work), "--device", "cuda:1"]) == 2
    assert "no CUDA GPU" in _one_error_line(capsys)
    assert _run(["--output_dir", str(work), "--device", "banana"]) == 2
    assert "is not a device name" in _one_error_line(capsys)
    assert not (work / "results").exists()


def test_unwritable_results_is_one_error_line(
    work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (work / "results").write_text("a file where the folder goes")
    assert _run(["--output_dir", str(work), "--latent_stats"]) == 2
    assert "is a file, not a folder" in _one_error_line(capsys)
    assert (work / "results").read_text() == "a file where the folder goes"
    (work / "results").unlink()
    assert _run(["--output_dir", str(work), "--latent_stats"]) == 0
    before = _tree(work / "results")

    def read_only(*args: object, **kwargs: object) -> str:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(result_set.tempfile, "mkdtemp", read_only)  # running as root, chmod would not stop us
    assert _run(["--output_dir", str(work), "--latent_stats"]) == 2
    assert "Read-only file system" in _one_error_line(capsys)
    assert _tree(work / "results") == before


def _release(work: Path, tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    """A tiny VA-VAE saved in the released checkpoint's layout, recorded by 'step 2' in models/manifest.json."""
    torch.manual_seed(3)
    model = create_autoencoder("vavae", **get_family("vavae").tiny).eval()
    state = {
        **lightningdit_state_dict(model),
        "loss.discriminator.main.0.weight": torch.zeros(1),
        "foundation_model.cls_token": torch.zeros(1),
        "loss.perceptual_loss.net.0.weight": torch.zeros(1),
    }
    path = work / "models" / hub.get_spec("vavae").filename
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state}, path)
    hub.manifest_file(work).write_text(json.dumps({"vavae": hub.verify_file(path, hub.get_spec("vavae"))}))
    preset = tmp_path / "tiny_vavae.yaml"
    preset.write_text(json.dumps({"data": {"image_size": 32}, "model": {"args": get_family("vavae").tiny}}))
    return preset, model


def test_pretrained_model_is_measured_with_the_advice(
    work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(["--output_dir", str(work), "--checkpoint", "pretrained"]) == 2  # step 2 has not fetched it
    assert "vavae" in _one_error_line(capsys)
    preset, model = _release(work, tmp_path)
    args = ["--output_dir", str(work), "--checkpoint", "pretrained", "--config", str(preset)]
    assert _run([*args, "--metrics", "--export"]) == 0
    m = json.loads((work / "results" / "metrics.json").read_text())
    assert m["stage"] == "pretrained" and m["random_teacher"] is False and m["num_images"] == _n(work, "val")
    assert m["checkpoint"] == str(work / "models" / hub.get_spec("vavae").filename)
    psnr = m["overall"]["psnr"]
    expected = "skip fine-tuning" if psnr >= 30 else "light fine-tuning" if psnr >= 25 else "deep fine-tuning"
    assert m["advice"]["advice"] == expected and m["advice"]["reason"] == report.FINE_TUNING_ADVICE[expected]
    assert m["overall"]["lpips"].startswith("unavailable:")  # the released model has LPIPS; this machine lacks VGG
    out = capsys.readouterr().out
    assert f"advice: {expected}" in out
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        encoder = load_encoder(work / "results" / "vavae_encoder_for_dit.pt")
        assert torch.equal(encoder.encode(x), model.encode(x).latents)  # the released weights, not random ones

    assert _run(["--output_dir", str(work), "--config", str(preset)]) == 2  # a trained checkpoint has its config
    assert "apply only to --checkpoint pretrained" in _one_error_line(capsys)


def test_export_latents_in_lightningdit_format(work: Path) -> None:
    assert _run(["--output_dir", str(work), "--export_latents", "--export_source", "mode"]) == 0
    folder = work / "results" / "latents"
    from safetensors import safe_open

    with safe_open(folder / "latents_rank00_shard000.safetensors", "pt") as f:
        latents, flips, labels = (f.get_tensor(k) for k in ("latents", "latents_flip", "labels"))
    index = json.loads((folder / "latents_index.json").read_text())
    assert latents.shape[0] == _n(work, "train") + _n(work, "val") and torch.equal(
        latents, flips
    )  # mode: no flip, the same latent
    assert labels.tolist() == [r["label"] for r in index["images"]]
    assert [r["split"] for r in index["images"]] == ["train"] * _n(work, "train") + ["val"] * _n(work, "val")
    stats = torch.load(folder / "latents_stats.pt", weights_only=True)
    torch.testing.assert_close(stats["std"], latents.std(dim=[0, 2, 3], keepdim=True), rtol=1e-5, atol=1e-6)


def _pair_work_dir(tmp: Path) -> Path:
    """Step 3 on the built-in paired set (4 degradation types x 3 pairs, 32 px): kind ``pair``."""
    import step3_prepare_dataset as step3

    work = tmp / "work"
    args = ["--synthetic", "paired", "--pairs_per_type", "3", "--image_size", "32", "--output_dir", str(work)]
    assert run_main(step3.main, step3.parse_args([*args, "--no_progress"])) == 0
    return work


KIND_RUNS = {
    "image": ("taesd", "taesd_demo", None),
    "pair": ("kl", "restoration_demo", None),
    "video": ("taehv", "taehv_demo", "av"),
    "volume": ("kl3d", "kl3d_demo", "monai"),
}
"""Data kind -> (a family of that kind, its demo preset, a package it needs); step 3's tiny work directories."""


@pytest.fixture(params=list(KIND_RUNS))
def kind_run(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str, Path]:
    """(kind, family, work directory): step 3 run on tiny data of the kind and a final model of the family."""
    kind = request.param
    family, preset, needs = KIND_RUNS[kind]
    if needs:
        pytest.importorskip(needs)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no Inception / VGG weights here
    work = _pair_work_dir(tmp_path) if kind == "pair" else TINY_DATA[kind](tmp_path)
    _write_final(work, family, preset=preset)
    return kind, family, work


def test_all_does_what_applies_to_every_data_kind(
    kind_run: tuple[str, str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    kind, family, work = kind_run
    assert _run(["--output_dir", str(work), "--device", "cpu", "--batch_size", "2"]) == 0  # no part named: --all
    out = capsys.readouterr().out
    res = work / "results"
    names = {p.name for p in res.iterdir()}
    common = {"metrics.json", "reconstruction_results.png", "latent_statistics.json", "latents_stats.pt"}
    assert common | {f"{family}_encoder_for_dit.pt"} <= names
    latents = kind in ("image", "volume", "video")  # video: a row per clip
    assert ("latents" in names) is latents
    assert ("skipped --export_latents: " + kind) in out or latents
    lightningdit = f"{family}_restoration_toy_lightningdit.pt" if kind == "pair" else f"{family}_toy_lightningdit.pt"
    assert (lightningdit in names) is (family == "kl")  # kl and vavae only: the hint names it only then
    assert (str(res / lightningdit) in out) is (family == "kl")
    assert ("skipped --export's *_lightningdit.pt" in out) is (family != "kl")
    hint = out[out.index("from aetune import load_encoder") :]
    shapes = {"image": "(B, 3, 32, 32)", "pair": "degraded (LQ) images", "video": "clips (B, T, 3, 32, 32)"}
    assert shapes.get(kind, "volumes (B, 1, D, H, W)") in hint
    assert ("latents of every " + ("clip" if kind == "video" else "image") in hint) is latents
    m = json.loads((res / "metrics.json").read_text())
    assert isinstance(m["overall"]["psnr_baseline"], float) and "psnr_baseline" in m["definitions"]
    overall = m["overall"]
    assert m["checks"]["PSNR above the constant-image baseline"] is (overall["psnr"] > overall["psnr_baseline"])


@pytest.mark.parametrize("kind_run", ["pair"], indirect=True)
def test_export_latents_named_alone_is_an_error_where_it_does_not_apply(
    kind_run: tuple[str, str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, work = kind_run
    assert _run(["--output_dir", str(work), "--export_latents", "--device", "cpu"]) == 2
    assert "--export_latents does not apply to this pair run" in _one_error_line(capsys)
    assert not (work / "results").exists()
