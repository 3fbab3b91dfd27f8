"""The whole pipeline as a new user runs it: the five scripts as subprocesses, then the notebook.

Both use the synthetic dataset and the demo preset shrunk to a few batches per stage, and check every
artifact of the work directory contract (DESIGN.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
SHORT_TRAINING = [
    "--max_steps",
    "4",
    "--set",
    "train.val_every_n_steps=2",
    "--set",
    "train.checkpoint_every_n_batches=2",
]

ARTIFACTS = [
    "environment.json",
    "data/labels.json",
    "data/dataset.json",
    "data/split.json",
    "checkpoints/run_state.json",
    *(
        f"checkpoints/stage{s}/{f}"
        for s in "123"
        for f in ("last.ckpt", "config.yaml", "metrics.csv", "validation_history.json")
    ),
    "checkpoints/vavae_microdoppler_final.pt",
    "results/metrics.json",
    "results/reconstruction_results.png",
    "results/latent_users.png",
    "results/training_curves.png",
    "results/latent_statistics.json",
    "results/latents_stats.pt",
    "results/vavae_encoder_for_dit.pt",
]


def check_work_dir(work: Path, users: int) -> None:
    """Every file of the contract exists and holds what the next step needs."""
    missing = [a for a in ARTIFACTS if not (work / a).is_file()]
    assert not missing, f"missing artifacts: {missing}"
    assert len(json.loads((work / "data/labels.json").read_text())) == users
    state = json.loads((work / "checkpoints/run_state.json").read_text())
    assert state["stages_done"] == ["1", "2", "3"] and state["random_teacher"] is True
    for s in "123":
        assert list((work / f"checkpoints/stage{s}").glob("best-*.ckpt")), f"stage {s} kept no best checkpoint"
    metrics = json.loads((work / "results/metrics.json").read_text())
    assert metrics["random_teacher"] is True
    assert str(metrics["overall"]["lpips"]).startswith("unavailable")
    stats = torch.load(work / "results/latents_stats.pt", weights_only=True)
    assert stats["mean"].shape == (1, 8, 1, 1) and stats["std"].shape == (1, 8, 1, 1)
    export = torch.load(work / "results/vavae_encoder_for_dit.pt", weights_only=True)
    assert export["labels"] == json.loads((work / "data/labels.json").read_text())
    final = torch.load(work / "checkpoints/vavae_microdoppler_final.pt", weights_only=True)
    assert final["format"] == "aetune.autoencoder/1" and final["stage"] == "3"


def _run(*args: str) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_five_steps_as_subprocesses(tmp_path: Path) -> None:
    work = str(tmp_path / "work")
    _run("step1_setup_environment.py", "--output_dir", work, "--check_only", "--min_free_gb", "0")
    assert "nothing to fetch" in _run("step2_download_models.py", "--output_dir", work, "--config", "demo")
    _run(
        "step3_prepare_dataset.py", "--synthetic", "microdoppler", "--num_users", "3", "--images_per_user", "6",
        "--image_size", "32", "--output_dir", work, "--no_progress",
    )  # fmt: skip
    _run(
        "step4_train.py",
        "--config",
        "demo",
        "--set",
        "data.image_size=32",
        "--output_dir",
        work,
        "--no_progress",
        *SHORT_TRAINING,
    )
    out = _run("step5_validate_export.py", "--all", "--output_dir", work, "--no_progress")
    assert "vavae_encoder_for_dit.pt" in out and "load_encoder" in out
    check_work_dir(Path(work), users=3)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_kaggle_notebook_runs_headless_in_demo_mode(tmp_path: Path, monkeypatch) -> None:
    work = tmp_path / "work"
    monkeypatch.setenv("AETUNE_NOTEBOOK_DEMO", "1")
    monkeypatch.setenv("AETUNE_REPO", str(REPO))
    monkeypatch.setenv("AETUNE_WORK", str(work))
    monkeypatch.setenv("AETUNE_DEMO_TRAIN_ARGS", " ".join([*SHORT_TRAINING, "--set", "data.image_size=32"]))
    nb = nbformat.read(REPO / "notebooks" / "kaggle_microdoppler.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code_cells), "a code cell did not run"
    errors = [o for c in code_cells for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    assert any(o.output_type == "display_data" for o in code_cells[-1].outputs), "the report cell showed no figure"
    check_work_dir(work, users=4)
