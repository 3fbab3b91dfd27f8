"""Step 4 sessions: an interrupted-then-resumed stage equals an uninterrupted one; deadlines; NaN handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aetune.config import Config
from aetune.errors import AetuneError
from aetune.train.module import AutoencoderModule
from aetune.train.runner import TrainRequest, TrainResult, run_training
from tests.train_helpers import make_work_dir, nan_inputs_at, tiny_config

# GAN from batch 1, accumulation over 2 batches, 1.5 epochs of 9 batches (14), validation every 3, saves every 2.
RESUME_SETS = ("train.stages.1.loss.disc_start=1", "train.gradient_accumulation=2", "train.batch_size=2",
               "train.stages.1.epochs=2", "train.stages.1.max_steps=14", "train.val_every_n_steps=3")  # fmt: skip


def train(work: Path, cfg: Config, **kw: object) -> TrainResult:
    return run_training(TrainRequest(work, cfg, ["1"], accelerator="cpu", progress_bar=False, **kw))


def fresh(tmp_path: Path, name: str, *sets: str) -> tuple[Path, Config]:
    (tmp_path / name).mkdir()
    return make_work_dir(tmp_path / name), tiny_config(tmp_path / name, *sets)


def final_state(work: Path) -> dict:
    return torch.load(work / "checkpoints/stage1/last.ckpt", weights_only=True)


def history(work: Path) -> list[dict]:
    records = json.loads((work / "checkpoints/stage1/validation_history.json").read_text())["validations"]
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


def assert_same_training(a: dict, b: dict) -> None:
    assert a["aetune"]["batches_seen"] == b["aetune"]["batches_seen"] == 14
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=0, atol=1e-6, msg=k)
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        for i, s in opt_a["state"].items():
            for name in ("exp_avg", "exp_avg_sq", "step"):
                torch.testing.assert_close(s[name], opt_b["state"][i][name], rtol=0, atol=1e-6)


def test_interrupted_runs_resume_to_the_same_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference, cfg = fresh(tmp_path, "uninterrupted", *RESUME_SETS)
    assert train(reference, cfg).status == "done"
    expected = final_state(reference)

    # A session limit after 3 batches stops at the end of the accumulation window (batch 4), mid-epoch.
    stopped, cfg = fresh(tmp_path, "stopped", *RESUME_SETS)
    first = train(stopped, cfg, stop_after_batches=3)
    assert (first.status, first.batches, first.total_batches) == ("session_limit", 4, 14)
    assert "--stop_after_batches 3" in first.reason
    assert final_state(stopped)["aetune"]["window"] is None
    assert train(stopped, cfg).status == "done"
    assert_same_training(expected, final_state(stopped))
    assert history(stopped) == history(reference)  # no extra validation at the stop

    # A crash in batch 12 (a killed session): it resumes from the periodic last.ckpt of batch 10 (epoch 2).
    crashed, cfg = fresh(tmp_path, "crashed", *RESUME_SETS)
    real_step = AutoencoderModule.training_step

    def crash(self: AutoencoderModule, batch: object, batch_idx: int) -> None:
        if self.batches_seen == 11:
            raise RuntimeError("session killed")
        real_step(self, batch, batch_idx)

    monkeypatch.setattr(AutoencoderModule, "training_step", crash)
    with pytest.raises(RuntimeError, match="session killed"):
        train(crashed, cfg)
    monkeypatch.undo()
    assert final_state(crashed)["aetune"]["batches_seen"] == 10
    run_state = crashed / "checkpoints/run_state.json"
    state = json.loads(run_state.read_text())
    assert state["sessions"][0]["exit"] == "error" and state["stages"]["1"]["batches"] == 10
    state["sessions"][0]["exit"] = "running"  # what a killed process leaves behind
    run_state.write_text(json.dumps(state))
    assert train(crashed, cfg).status == "done"
    assert_same_training(expected, final_state(crashed))
    assert history(crashed) == history(reference)
    sessions = json.loads(run_state.read_text())["sessions"]
    assert [s["exit"] for s in sessions] == ["lost (no clean exit recorded)", "done"]


def test_session_deadline_saves_stops_and_resumes(tmp_path: Path) -> None:
    work, cfg = fresh(tmp_path, "deadline")
    first = train(work, cfg, max_hours=1e-9)
    assert (first.status, first.batches) == ("session_limit", 1) and "--max_hours" in first.reason
    state = json.loads((work / "checkpoints/run_state.json").read_text())
    assert state["sessions"][-1]["exit"] == "session_limit" and state["current_stage"] == "1"
    assert state["stages"]["1"]["status"] == "running" and state["last_good_checkpoint"] == "stage1/last.ckpt"
    assert final_state(work)["aetune"]["batches_seen"] == 1
    assert not (work / "checkpoints/stage1/validation_history.json").exists()
    second = train(work, cfg)
    assert (second.status, second.stages_done, second.batches) == ("done", ["1"], 4)


def test_nonfinite_loss_skips_the_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work, cfg = fresh(tmp_path, "one_nan")
    nan_inputs_at(monkeypatch, {0})
    assert train(work, cfg).status == "done"
    ckpt = final_state(work)
    assert (ckpt["aetune"]["nonfinite_total"], ckpt["aetune"]["nonfinite_streak"]) == (1, 0)
    assert ckpt["optimizer_states"][0]["state"][0]["step"].item() == 3  # 4 batches, the first step skipped


def test_nonfinite_losses_in_a_row_save_and_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work, cfg = fresh(tmp_path, "all_nan", "train.max_nonfinite=2")
    nan_inputs_at(monkeypatch, set(range(100)))
    with pytest.raises(AetuneError, match="diverged at batch 2.*--precision 32 or a lower --learning_rate"):
        train(work, cfg)
    ckpt = final_state(work)
    assert ckpt["aetune"]["nonfinite_streak"] == 2 and ckpt["optimizer_states"][0]["state"] == {}
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    state = json.loads((work / "checkpoints/run_state.json").read_text())
    assert state["sessions"][-1]["exit"] == "error" and state["stages_done"] == []


def test_validation_inside_an_accumulation_window_changes_nothing(tmp_path: Path) -> None:
    """Validating after every batch (inside open windows) must leave the training identical to not validating."""
    sets = ("train.stages.1.loss.disc_start=0", "train.gradient_accumulation=2")
    often, cfg_often = fresh(tmp_path, "often", *sets, "train.val_every_n_steps=1")
    rarely, cfg_rarely = fresh(tmp_path, "rarely", *sets, "train.val_every_n_steps=100")
    train(often, cfg_often)
    train(rarely, cfg_rarely)
    assert len(history(often)) == 4 and len(history(rarely)) == 1  # the stage end always validates
    a, b = final_state(often)["state_dict"], final_state(rarely)["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
