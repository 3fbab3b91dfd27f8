"""Step 4 under DDP: two CPU processes (gloo) launched by the script itself, over two stages and a resume."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from tests.train_helpers import make_work_dir, tiny_preset

SCRIPT = Path(__file__).resolve().parent.parent / "step4_train.py"


def step4(work: Path, preset: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), "--config", str(preset), "--output_dir", str(work), "--accelerator", "cpu",
           "--devices", "2", "--no_progress", "--set", "train.batch_size=2", *extra]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=SCRIPT.parent)


def test_two_process_ddp_trains_stages_and_resumes(tmp_path: Path) -> None:
    work, preset = make_work_dir(tmp_path), tiny_preset(tmp_path)
    first = step4(work, preset, "--stages", "1,2", "--stop_after_batches", "6")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "stopped at the session batch limit" in first.stdout and "stage 2 at batch 2 of 4" in first.stdout
    state = json.loads((work / "checkpoints/run_state.json").read_text())
    assert state["stages_done"] == ["1"] and state["current_stage"] == "2"
    second = step4(work, preset, "--stages", "1,2")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "stage 1 is done (run_state.json): skipping it" in second.stdout
    state = json.loads((work / "checkpoints/run_state.json").read_text())
    assert state["stages_done"] == ["1", "2"] and [s["exit"] for s in state["sessions"]] == ["session_limit", "done"]
    # 18 training images, 2 ranks x batch 2: 4 batches per rank and epoch.
    ckpt = torch.load(work / "checkpoints/stage2/last.ckpt", weights_only=True)
    assert ckpt["aetune"]["batches_seen"] == 4 and ckpt["global_step"] == 8  # G and D steps each batch
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    assert (work / "checkpoints/vavae_tiny_final.pt").is_file()
    assert second.stdout.count("stage 2\n") == 1  # the child process prints no summary of its own
    assert re.search(r"batches +4 of 4 \(this session 2\); 0 skipped for non-finite values", second.stdout)
    assert "images/s incl. validation (batch 2 x 2 device(s), 32-true)" in second.stdout


PROBE = Path(__file__).resolve().parent / "ddp_comm_probe.py"


def test_ddp_all_reduces_each_network_once_per_window_with_the_split_backward(tmp_path: Path) -> None:
    """GAN on and VF adaptive (the split backward's costliest case), accumulation 2, two gloo ranks: DDP's reducer
    sends nothing; each window's last batch all-reduces G's and D's gradients once (plus one flag each)."""
    work, preset = make_work_dir(tmp_path), tiny_preset(tmp_path)
    log = tmp_path / "comm.jsonl"
    cmd = [sys.executable, str(PROBE), "--config", str(preset), "--output_dir", str(work), "--accelerator", "cpu",
           "--devices", "2", "--no_progress", "--stages", "1", "--set", "train.batch_size=2",
           "--set", "train.gradient_accumulation=2", "--set", "train.stages.1.loss.disc_start=0",
           "--set", "loss.split_backward=true", "--set", "train.grad_norm_every=0"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=SCRIPT.parent,
                         env={**os.environ, "AETUNE_COMM_LOG": str(log)})  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["batch"] for r in records] == [1, 2, 3, 4] and [r["closed"] for r in records] == [False, True] * 2
    for r in records:
        assert r["reducer"] == 0 and r["split"] == 1  # the split backward runs under DDP
        window = sum(n + 1 for n in r["params"].values()) * 4  # float32 gradients + one flag per network
        assert r["direct"] == (window if r["closed"] else 0), r


def test_torchrun_ranks_wait_for_rank_zero_to_import_the_previous_session(tmp_path: Path) -> None:
    """``--resume_from`` under torchrun: rank 0 copies the previous session while rank 1 waits (without the wait it
    reads a work directory with no data/ and no checkpoints/ yet); the stage then ends with the planned images."""
    before, after, preset = make_work_dir(tmp_path), tmp_path / "next_session", tiny_preset(tmp_path)
    first = step4(before, preset, "--devices", "1", "--stages", "1", "--stop_after_batches", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    step = [str(SCRIPT), "--config", str(preset), "--output_dir", str(after), "--resume_from", str(before),
            "--accelerator", "cpu", "--devices", "2", "--no_progress", "--stages", "1",
            "--set", "train.batch_size=2"]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29613", *step]
    out = subprocess.run(cmd, cwd=SCRIPT.parent, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "imported the previous session" in out.stdout
    meta = torch.load(after / "checkpoints/stage1/last.ckpt", weights_only=True)["aetune"]
    # Planned on one device (batch 2): 9 batches of 2 images; the first session trained 2 of them, this one steps
    # 4 images at a time: 4 + 4 x 4 = 20, the first step at or past the planned 18 images.
    assert (meta["batch_images"], meta["total_batches"], meta["images_seen"]) == (2, 9, 20)
