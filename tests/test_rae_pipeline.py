"""--family rae through steps 2-5 as a new user runs them (the demo preset, a few batches, synthetic data)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parent.parent


def _run(*args: str) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def test_rae_demo_steps_2_to_5(tmp_path: Path) -> None:
    work = str(tmp_path / "work")
    assert "nothing to fetch" in _run("step2_download_models.py", "--output_dir", work, "--config", "rae_demo")
    _run(
        "step3_prepare_dataset.py", "--synthetic", "microdoppler", "--num_users", "3", "--images_per_user", "6",
        "--image_size", "32", "--output_dir", work, "--no_progress",
    )  # fmt: skip
    log = _run(
        "step4_train.py", "--config", "rae_demo", "--output_dir", work, "--no_progress", "--max_steps", "6",
        "--set", "train.val_every_n_steps=3", "--set", "train.checkpoint_every_n_batches=3",
        "--set", "loss.disc_start=2", "--set", "loss.gan_start=4",
    )  # fmt: skip
    assert "RANDOMLY INITIALISED" in log  # the demo's random encoder and discriminator are said loudly
    out = _run("step5_validate_export.py", "--all", "--export_source", "mode", "--output_dir", work, "--no_progress")
    assert "rae_encoder_for_dit.pt" in out
    res = Path(work) / "results"
    stat = torch.load(res / "stat.pt", weights_only=True)
    assert stat["mean"].shape == stat["var"].shape == (64, 4, 4) and bool((stat["var"] > 0).all())
    export = torch.load(res / "rae_encoder_for_dit.pt", weights_only=True)
    assert export["family"] == "rae" and "latent_var" in export["state_dict"]
    metrics = (res / "metrics.json").read_text()
    assert "psnr" in metrics
    header = (Path(work) / "checkpoints/stage1/metrics.csv").read_text().splitlines()[0]
    assert "train/d_total" in header and "train/d_weight" in header  # both phases and the GAN term ran
