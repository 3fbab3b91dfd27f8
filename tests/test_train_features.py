"""The training features every family shares: schedules, EMA, progressive stages, rFID, health gate, records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from aetune.config import OptimizerConfig, load_config
from aetune.errors import AetuneError
from aetune.train import runner as runner_py
from aetune.train.rfid import build_fid_tracker
from aetune.train.runner import TrainRequest, run_training
from aetune.train.schedule import lr_at
from tests.train_helpers import make_work_dir, nan_inputs_at, tiny_preset

ONE_STAGE = {"1": {"epochs": 1, "max_steps": 4, "loss": {"disc_start": 0}}}


def tiny_config(tmp: Path, *sets: str, stages: dict | None = None):
    """The tiny preset with its plan replaced by ``stages`` (one 4-batch GAN stage by default)."""
    path = tmp / "plan.yaml"
    plan = {"base": str(tiny_preset(tmp)), "train": {"val_every_n_steps": 2, "stages": stages or ONE_STAGE}}
    path.write_text(yaml.safe_dump(plan), encoding="utf-8")
    return load_config(str(path), list(sets))


def train(work: Path, cfg, **kw):
    return run_training(TrainRequest(work, cfg, list(cfg.train.stages), accelerator="cpu", progress_bar=False, **kw))


def last(work: Path, stage: str = "1") -> dict:
    return torch.load(work / f"checkpoints/stage{stage}/last.ckpt", weights_only=True)


def test_cosine_schedule_values_at_given_batches() -> None:
    opt = OptimizerConfig(schedule="cosine", warmup_batches=4, min_lr_ratio=0.1)
    peak, total = 2e-4, 14
    assert [lr_at(b, peak, total, opt) for b in range(4)] == pytest.approx([5e-5, 1e-4, 1.5e-4, 2e-4])
    assert lr_at(4, peak, total, opt) == pytest.approx(2e-4)  # cosine starts at the peak
    mid = 4 + (total - 4 - 1) / 2
    assert lr_at(int(mid * 2) // 2, peak, total, opt) == pytest.approx(
        2e-5 + 0.5 * 1.8e-4 * (1 + math.cos(math.pi * (int(mid) - 4) / 9))
    )
    assert lr_at(total - 1, peak, total, opt) == pytest.approx(2e-5)  # the floor at the last batch
    assert lr_at(3, peak, total, OptimizerConfig(warmup_batches=0)) == peak  # constant


def test_ema_weights_after_n_steps_match_a_hand_computation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EMA from batch 1 with decay 0.5: ema = w_1 after the first update, then 0.5 ema + 0.5 w_k."""
    work = make_work_dir(tmp_path)
    cfg = tiny_config(tmp_path, "train.ema.decay=0.5", "train.ema.start_batch=1")
    seen: list[torch.Tensor] = []
    real_close = runner_py.AutoencoderModule._close_window

    def close(self, *args) -> None:
        real_close(self, *args)
        seen.append(self.autoencoder.decoder.conv_out.weight.detach().clone())

    monkeypatch.setattr(runner_py.AutoencoderModule, "_close_window", close)
    assert train(work, cfg).status == "done"
    ema = seen[1]  # batch 1 is not averaged (start_batch 1 averages from the step after batch 2 on)
    for w in seen[2:]:
        ema = 0.5 * ema + 0.5 * w
    state = last(work)["state_dict"]
    torch.testing.assert_close(state["ema.module.decoder.conv_out.weight"], ema, rtol=0, atol=1e-7)
    assert int(state["ema.n_averaged"]) == 3
    final = torch.load(work / "checkpoints/vavae_tiny_final.pt", weights_only=True)
    torch.testing.assert_close(final["state_dict"]["decoder.conv_out.weight"], ema, rtol=0, atol=1e-7)


def test_resume_with_ema_and_a_schedule_is_exact(tmp_path: Path) -> None:
    sets = (
        "train.ema.decay=0.9",
        "train.optimizer.g.schedule=cosine",
        "train.optimizer.g.warmup_batches=2",
    )
    sets = (*sets, "train.gradient_accumulation=2", "train.stages.1.max_steps=6")
    whole, split = make_work_dir(tmp_path / "a"), make_work_dir(tmp_path / "b")
    cfg = tiny_config(tmp_path, *sets)
    train(whole, cfg)
    assert train(split, cfg, stop_after_batches=1).status == "session_limit"  # stops at the window's end: 2
    assert train(split, cfg).status == "done"
    a, b = last(whole), last(split)
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=0, atol=1e-6, msg=k)
    lrs = [g["lr"] for g in a["optimizer_states"][0]["param_groups"]]
    assert lrs == pytest.approx([lr_at(5, 1e-3, 6, cfg.stage_optimizer("1", "g"))])


def test_a_stage_can_change_resolution_and_loss_terms(tmp_path: Path) -> None:
    work = make_work_dir(tmp_path, size=32)
    plan = {
        "1": {"epochs": 1, "max_steps": 2, "image_size": 16, "loss": {"disc_start": -1}},
        "2": {"epochs": 1, "max_steps": 2},
    }
    cfg = tiny_config(tmp_path, stages=plan)
    assert (cfg.stage_image_size("1"), cfg.stage_image_size("2")) == (16, 32)
    assert train(work, cfg).status == "done"
    grids = [json.loads((work / f"checkpoints/stage{s}/validation_history.json").read_text()) for s in "12"]
    assert all(g["validations"] for g in grids)
    from PIL import Image

    sizes = [Image.open(next((work / f"checkpoints/stage{s}/samples").glob("*.png"))).size for s in "12"]
    assert sizes[0][1] < sizes[1][1]  # 16 px rows in stage 1, 32 px in stage 2
    assert last(work, "1")["global_step"] == 2 and last(work, "2")["global_step"] == 4  # no GAN in stage 1


def test_rfid_is_logged_with_its_image_count_on_a_tiny_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_py, "build_rfid", lambda cfg, work, device: build_fid_tracker(None, True, "cpu")[0])
    work = make_work_dir(tmp_path)
    cfg = tiny_config(tmp_path, "train.rfid_images=4")
    assert train(work, cfg).status == "done"
    history = json.loads((work / "checkpoints/stage1/validation_history.json").read_text())["validations"]
    final = history[-1]
    assert final["batches"] == 4 and final["rfid"] > 0 and final["rfid_images"] == 4
    assert "rank-deficient" in final["rfid_note"] and "not FID" in final["rfid_note"]
    assert "rfid" not in history[0]  # rFID only at the stage end (rfid_every 0)


def test_rfid_without_inception_weights_is_a_note_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))  # no FID weights in the hub cache
    work = make_work_dir(tmp_path)
    cfg = tiny_config(tmp_path, "train.rfid_images=4")
    assert train(work, cfg).status == "done"
    assert "rFID is off for this run" in caplog.text
    history = json.loads((work / "checkpoints/stage1/validation_history.json").read_text())["validations"]
    assert "rfid" not in history[-1]


def test_health_gate_warns_loudly_below_the_bar(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    work = make_work_dir(tmp_path)
    cfg = tiny_config(tmp_path, "train.health_batch=2", "train.health_min_psnr=99")
    assert train(work, cfg).status == "done"
    history = json.loads((work / "checkpoints/stage1/validation_history.json").read_text())["validations"]
    gated = [r for r in history if "health" in r]
    assert len(gated) == 1 and gated[0]["batches"] == 2 and gated[0]["health"]["passed"] is False
    assert "HEALTH CHECK FAILED" in gated[0]["health"]["warning"]
    assert "HEALTH CHECK FAILED" in caplog.text


def test_each_session_is_recorded_with_its_note(tmp_path: Path) -> None:
    work = make_work_dir(tmp_path)
    cfg = tiny_config(tmp_path)
    train(work, cfg, stop_after_batches=2, note="first try")
    train(work, cfg)
    entries = yaml.safe_load((work / "checkpoints/experiments.yaml").read_text())
    assert [e["notes"] for e in entries] == ["first try", ""]
    assert [e["exit"] for e in entries] == ["session_limit", "done"]
    assert entries[1]["best"]["1"]["psnr"] > 0 and entries[0]["data_fingerprint"] == entries[1]["data_fingerprint"]
    assert entries[0]["config"]["model"]["family"] == "vavae"


def test_clipping_is_off_by_default_and_norms_are_logged(tmp_path: Path) -> None:
    assert load_config("vavae").train.gradient_clip_val == 0.0
    work = make_work_dir(tmp_path)
    train(work, tiny_config(tmp_path))
    header = (work / "checkpoints/stage1/metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/grad_norm_g", "train/grad_norm_d", "grad_norm/rec", "grad_norm/gan"} <= set(header)


def test_gan_stages_do_not_stop_early_by_default(tmp_path: Path) -> None:
    """A GAN trades PSNR: with patience 1 a PSNR monitor would stop it at its second validation."""
    work = make_work_dir(tmp_path)
    cfg = tiny_config(tmp_path, "train.patience=1", "train.val_every_n_steps=1", "train.learning_rate=0")
    assert train(work, cfg).status == "done"
    assert last(work)["aetune"]["batches_seen"] == 4 and last(work)["aetune"]["early_stopped"] is False
    own = tiny_config(tmp_path, "train.stages.1.patience=1", "train.val_every_n_steps=1", "train.learning_rate=0")
    work2 = make_work_dir(tmp_path / "own")
    assert train(work2, own).status == "done"
    assert last(work2)["aetune"]["early_stopped"] is True
    state = json.loads((work2 / "checkpoints/run_state.json").read_text())
    assert state["stages"]["1"]["early_stopped"] is True


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.batch_size=0", r"train.batch_size = 0 is out of range: valid 1 .. 4096"),
        ("train.gradient_accumulation=-2", r"train.gradient_accumulation = -2 is out of range"),
        ("data.num_workers=1000", r"data.num_workers = 1000 is out of range: valid 0 .. 64"),
        ("data.image_size=0", r"data.image_size = 0 is out of range"),
        ("train.stages.1.epochs=0", r"train.stages.1.epochs = 0 is out of range"),
        ("train.ema.decay=1.5", r"train.ema.decay = 1.5 is out of range"),
        ("train.optimizer.g.name=sgd", r"train.optimizer.g.name must be one of adam, adamw"),
        ("loss.kl_weight=-1", r"loss.kl_weight = -1.0 is out of range"),
    ],
)
def test_numbers_out_of_range_name_the_key_and_range(override: str, message: str) -> None:
    with pytest.raises(AetuneError, match=message):
        load_config("vavae", [override])


def test_vavae_preset_freezes_three_encoder_levels() -> None:
    assert load_config("vavae").model.freeze_encoder_levels == 3


def test_a_nonfinite_stop_at_the_window_close_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """NaN at batch 1, inside window [0, 2]: the window's finite flags stay on the device until it closes (one host
    read per window), so the stop comes at its close, with the window's gradients dropped and nothing open."""
    nan_inputs_at(monkeypatch, {1})
    sets = ("train.gradient_accumulation=3",)  # 4 batches: windows [0, 2] and [3]
    reference, stopped = make_work_dir(tmp_path / "ref"), make_work_dir(tmp_path / "stop")
    assert train(reference, tiny_config(tmp_path, *sets, "train.max_nonfinite=5")).status == "done"
    with pytest.raises(AetuneError, match="diverged at batch 3"):
        train(stopped, tiny_config(tmp_path, *sets, "train.max_nonfinite=1"))
    meta = last(stopped)["aetune"]
    assert meta["window"] is None and meta["nonfinite_streak"] == 1
    assert last(stopped)["optimizer_states"][0]["state"] == {}  # the bad window stepped nothing
    assert train(stopped, tiny_config(tmp_path, *sets, "train.max_nonfinite=5")).status == "done"
    a, b = last(reference), last(stopped)
    for k in a["state_dict"]:
        # NaN images also reach the PatchGAN's BatchNorm running statistics (in both runs alike).
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=0, atol=1e-6, equal_nan=True, msg=k)
