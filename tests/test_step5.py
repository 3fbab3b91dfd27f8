"""step5_validate_export.py as a user runs it: every output, parts, re-runs, and the error paths."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import step5_validate_export as step5
from aetune.cli import run_main
from aetune.config import load_config
from aetune.data.prepare import prepare_dataset
from aetune.export import load_encoder
from aetune.models import create_autoencoder, get_family
from aetune.train.plan import RunState
from tests.conftest import make_user_folders

REPO = Path(__file__).resolve().parent.parent
USERS = {"ID_1": 5, "ID_2": 5, "ID_10": 5}


def _run(args: list[str]) -> int:
    return run_main(step5.main, step5.parse_args(["--no_progress", "--batch_size", "4", *args]))


def _write_final(work: Path, family: str = "vavae", seed: int = 0, name: str | None = None) -> Path:
    """A final model in step 4's format, from a tiny model and the demo preset (random teacher, no LPIPS)."""
    torch.manual_seed(seed)
    args = get_family(family).tiny
    model = create_autoencoder(family, **args)
    cfg = load_config("demo", [f"model.family={family}", "data.image_size=32", "data.cache=ram"])
    labels = json.loads((work / "data" / "labels.json").read_text())
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
    }  # fmt: skip
    assert {p.name for p in res.iterdir()} == expected  # and no temporary files left behind

    m = json.loads((res / "metrics.json").read_text())
    assert m["random_teacher"] is True and any("RANDOM TEACHER" in w for w in m["warnings"])
    assert m["split"] == "val" and m["num_images"] == 6 and set(m["per_user"]) == set(USERS)
    assert isinstance(m["overall"]["psnr"], float) and isinstance(m["overall"]["ssim_y"], float)
    assert m["overall"]["lpips"].startswith("unavailable: this run trained without pretrained LPIPS")
    assert m["overall"]["rfid"].startswith("unavailable:") and "pt_inception" in m["overall"]["rfid"]
    assert m["overall"]["final_score"].startswith("unavailable")
    assert m["checks"]["PSNR > 25 dB (minimum)"] is (m["overall"]["psnr"] > 25)
    assert 0.0 <= m["latent_space"]["linear_probe_accuracy"] <= 1.0
    assert -1.0 <= m["latent_space"]["silhouette"] <= 1.0

    stats = json.loads((res / "latent_statistics.json").read_text())
    assert stats["split"] == "train" and stats["num_images"] == 9 and stats["source"] == "mode"
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
    assert _run(["--output_dir", str(work), "--latent_stats", "--split", "all"]) == 0
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
    labels_file = work / "data" / "labels.json"
    labels_file.write_text(json.dumps({"ID_1": 0, "ID_2": 1, "ID_3": 2}))  # another dataset's users
    assert _run(["--output_dir", str(work), "--all"]) == 2
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
    for flag in ("--checkpoint", "--all", "--metrics", "--figures", "--latent_stats", "--export", "--split"):
        assert flag in out
