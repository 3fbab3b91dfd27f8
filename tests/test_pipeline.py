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

from aetune.config import load_config

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
    channels = load_config("demo").model.args["embed_dim"]  # the demo's latent channels (8)
    assert stats["mean"].shape == (1, channels, 1, 1) and stats["std"].shape == (1, channels, 1, 1)
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


def cpu_settings(tmp_path: Path) -> str:
    """The notebook's settings for a CPU run: this checkout, a small synthetic dataset, the demo preset."""
    from aetune.data.synthetic import generate_microdoppler_dataset

    data = generate_microdoppler_dataset(tmp_path / "data", 4, 12, 64, progress=False)
    train = " ".join(["--accelerator", "cpu", "--no_progress", *SHORT_TRAINING, "--set", "data.image_size=32"])
    flags = {1: "--check_only --min_free_gb 1", 2: "", 3: "--no_progress", 4: train, 5: "--no_progress"}
    values = {
        "REPO": str(REPO), "DATA_ROOT": str(data), "VARIANT": "single", "SESSION": 1, "WORK": str(tmp_path / "work"),
        "CONFIG": "demo", "STEP_FLAGS": flags,
    }  # fmt: skip
    return "\n".join(f"{name} = {value!r}" for name, value in values.items())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_kaggle_notebook_runs_headless_on_cpu(tmp_path: Path) -> None:
    nb = nbformat.read(REPO / "notebooks" / "kaggle_microdoppler.ipynb", as_version=4)
    assert nb.metadata["kaggle"]["accelerator"] == "nvidiaTeslaT4"  # Kaggle opens it on GPU T4 x2
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    settings = nb.cells[code[0]]
    assert settings.metadata.get("tags") == ["parameters"]  # the one cell a user edits comes first
    text = "".join(c.source for c in nb.cells)
    assert "pretrained_path" not in text and "P100-class" not in text and "os.environ" not in text
    # Overrides after the settings cell, as papermill injects parameters: the rest runs as on Kaggle
    injected = nbformat.v4.new_code_cell(cpu_settings(tmp_path), metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(code[0] + 1, injected)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code_cells), "a code cell did not run"
    errors = [o for c in code_cells for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    assert any(o.output_type == "display_data" for o in code_cells[-1].outputs), "the report cell showed no figure"
    check_work_dir(tmp_path / "work", users=4)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_kaggle_notebook_clones_the_code_when_asked(tmp_path: Path) -> None:
    if not (REPO / ".git").is_dir():
        pytest.skip("this checkout is not a git repository: nothing to clone from")
    nb = nbformat.read(REPO / "notebooks" / "kaggle_microdoppler.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    clone = tmp_path / "aetune"
    settings = f"REPO = {str(clone)!r}\nGIT_URL = {REPO.as_uri()!r}\nWORK = {str(tmp_path / 'work')!r}"
    nb.cells = [code[0], nbformat.v4.new_code_cell(settings), code[1]]  # the settings, the overrides, the setup
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert (clone / "step5_validate_export.py").is_file()  # cloned, and the steps run from there
    assert f"code: {clone}" in "".join(o.get("text", "") for o in nb.cells[-1].outputs)
