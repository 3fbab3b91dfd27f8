"""Step 4 under DDP: two CPU processes (gloo) launched by the script itself, over two stages and a resume."""

from __future__ import annotations

import json
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
