"""Sessions as Kaggle ends them: a SIGTERM mid-stage, and a stage resumed on another device count."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.train_helpers import make_work_dir, tiny_preset

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "step4_train.py"


def command(work: Path, preset: Path, *extra: str) -> list[str]:
    return [sys.executable, str(SCRIPT), "--config", str(preset), "--output_dir", str(work), "--accelerator", "cpu",
            "--no_progress", "--stages", "1", "--set", "train.batch_size=2", *extra]  # fmt: skip


@pytest.mark.parametrize(
    ("signum", "reason"),
    [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "Ctrl-C (SIGINT)")],
    ids=["sigterm", "ctrl_c"],
)
def test_a_signal_saves_says_what_to_run_and_exits_non_zero(tmp_path: Path, signum: int, reason: str) -> None:
    """SIGTERM (a notebook's stop, Kaggle's session end) and Ctrl-C (a terminal, a notebook's interrupt button):
    saved after the batch, exit 3 with the resume command; the resumed session continues at that batch, so
    metrics.csv holds every logged batch once."""
    work, preset = make_work_dir(tmp_path), tiny_preset(tmp_path)
    long = ("--set", "train.stages.1.epochs=50", "--set", "train.val_every_n_steps=1000")
    proc = subprocess.Popen(
        command(work, preset, *long), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    last = work / "checkpoints/stage1/last.ckpt"
    deadline = time.time() + 180
    while not last.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    os.kill(proc.pid, signum)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 3, err[-3000:]
    line = [ln for ln in err.splitlines() if ln.startswith(f"interrupted by {reason}")]
    assert line and "re-run `python step4_train.py" in line[0]
    state = json.loads((work / "checkpoints/run_state.json").read_text())
    assert state["sessions"][-1]["exit"] == "interrupted" and state["stages_done"] == []
    ckpt = torch.load(last, weights_only=True)
    stopped_at = ckpt["aetune"]["batches_seen"]
    assert 0 < stopped_at < ckpt["aetune"]["total_batches"] and state["stages"]["1"]["batches"] == stopped_at
    resumed = subprocess.run(
        command(work, preset, *long, "--stop_after_batches", "1"), cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {last} at batch {stopped_at}" in resumed.stdout
    rows = [r.split(",") for r in (work / "checkpoints/stage1/metrics.csv").read_text().splitlines()]
    step, loss = rows[0].index("step"), rows[0].index("train/g_total")
    steps = [int(float(r[step])) for r in rows[1:] if r[loss]]
    assert steps and steps == sorted(set(steps))


def test_a_stage_resumes_on_two_devices_and_back_on_one(tmp_path: Path) -> None:
    work, preset = make_work_dir(tmp_path), tiny_preset(tmp_path)
    plan = ("--set", "train.stages.1.epochs=3")
    runs = [("1", "--stop_after_batches", "2"), ("2", "--stop_after_batches", "2"), ("1",)]
    for devices, *extra in runs:
        out = subprocess.run(
            command(work, preset, *plan, "--devices", devices, *extra),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert out.returncode == 0, out.stderr[-3000:]
    ckpt = torch.load(work / "checkpoints/stage1/last.ckpt", weights_only=True)
    planned = ckpt["aetune"]["total_batches"]
    assert ckpt["aetune"]["batches_seen"] == planned == 3 * (18 // 2)  # the plan of the first session is kept
    assert ckpt["aetune"]["images_seen"] == 3 * 18  # three epochs' images: none skipped by the device changes
    state = json.loads((work / "checkpoints/run_state.json").read_text())
    assert state["stages_done"] == ["1"] and [s["exit"] for s in state["sessions"]] == ["session_limit"] * 2 + ["done"]
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_torchrun_launch_with_a_global_batch(tmp_path: Path) -> None:
    """Two processes started as ``torchrun --nproc_per_node=2`` starts them (8 GPUs per node: same command)."""
    work, preset = make_work_dir(tmp_path), tiny_preset(tmp_path)
    step4 = command(work, preset, "--devices", "2", "--global_batch_size", "8", "--set", "train.batch_size=2")[1:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29611", *step4]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "global batch 8 = 2 per device x 2 device(s) x 2 accumulation" in out.stdout
    ckpt = torch.load(work / "checkpoints/stage1/last.ckpt", weights_only=True)
    assert ckpt["aetune"]["world_size"] == 2 and ckpt["aetune"]["batches_seen"] == ckpt["aetune"]["total_batches"]
    config = (work / "checkpoints/stage1/config.yaml").read_text()
    assert "gradient_accumulation: 2" in config and "global_batch_size: 8" in config


def test_a_run_that_cannot_fit_the_disk_fails_before_training(tmp_path: Path, monkeypatch) -> None:
    from aetune.train import runner
    from aetune.train.disk_budget import DiskBudgetError
    from tests.train_helpers import tiny_config

    work = make_work_dir(tmp_path)
    monkeypatch.setattr(runner, "disk_facts", lambda *a: {"free_gb": 0.0001})
    cfg = tiny_config(tmp_path)
    with pytest.raises(DiskBudgetError, match=r"the run needs .* more in .* but .* are free"):
        runner.run_training(runner.TrainRequest(work, cfg, ["1"], accelerator="cpu", progress_bar=False))
    assert not (work / "checkpoints/stage1").exists()
