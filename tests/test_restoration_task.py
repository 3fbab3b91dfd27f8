"""The restoration task selected by ``model.task`` (presets, config, module): steps 3-5 on pairs and on HF data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import step3_prepare_dataset as step3
import step5_validate_export as step5
from aetune.cli import run_main
from aetune.config import config_from_dict, load_config
from aetune.errors import AetuneError
from aetune.tasks.restoration.options import RestorationLossConfig
from aetune.train.runner import TrainRequest, run_training
from tests.test_restoration_recipe import TINY


def test_presets_carry_the_forks_numbers() -> None:
    seed, fork_5k, demo = load_config("restoration"), load_config("restoration_5k"), load_config("restoration_demo")
    assert (seed.model.family, seed.model.task, seed.schema.data_kind) == ("kl", "restoration", "pair")
    assert seed.loss == RestorationLossConfig()  # the seed's recipe (sd2_finetune_5k_improved) is the default
    w = seed.loss
    assert (w.l1_weight, w.l2_weight, w.lpips_weight, w.ssim_weight, w.gan_weight) == (2.0, 2.0, 3.0, 1.0, 0.3)
    assert (seed.train.learning_rate, seed.train.d_learning_rate, seed.train.monitor) == (2e-5, 5e-6, "val/Final_Score")
    assert [seed.stage_optimizer("1", p).weight_decay for p in "gd"] == [1e-4, 1e-4]
    assert (seed.data.image_size, seed.data.hflip, seed.restoration.rot90, seed.restoration.native_val) == (
        512,
        True,
        True,
        False,
    )  # the fork's protocol: 512 px pairs, hflip + rotations, validation at 512
    w = fork_5k.loss
    assert (w.l1_weight, w.l2_weight, w.lpips_weight, w.ssim_weight, w.gan_weight) == (1.0, 1.0, 5.0, 0.0, 0.5)
    assert (fork_5k.train.learning_rate, fork_5k.train.d_learning_rate) == (1e-5, 1e-5)
    assert [fork_5k.stage_optimizer("1", p).weight_decay for p in "gd"] == [1e-2, 1e-2]
    assert (fork_5k.data.image_size, fork_5k.train.monitor) == (512, "val/Final_Score")
    assert (demo.train.monitor, demo.data.image_size, demo.loss.ssim_weight) == ("val/PSNR", 64, 1.0)
    with pytest.raises(AetuneError, match="unknown model.task 'restore'.*restoration"):
        load_config(None, ["model.task=restore", "model.family=kl"])
    with pytest.raises(AetuneError, match="unknown config key 'loss.kl_weight'"):
        load_config("restoration", ["loss.kl_weight=1"])  # the task's loss section replaces the family's


def test_steps_3_to_5_on_pairs_with_a_validation_folder(tmp_path: Path) -> None:
    work = tmp_path / "work"
    args = ["--synthetic", "paired", "--pairs_per_type", "3", "--image_size", "32", "--output_dir", str(work)]
    assert run_main(step3.main, step3.parse_args([*args, "--no_progress"])) == 0
    cfg = config_from_dict({**TINY, "model": {**TINY["model"], "task": "restoration"}})
    assert run_training(TrainRequest(work, cfg, ["1"], accelerator="cpu", progress_bar=False)).status == "done"
    history = json.loads((work / "checkpoints/stage1/validation_history.json").read_text())
    last = history["validations"][-1]
    for t in ("Blur", "Noise", "LowLight", "Occlusion"):
        assert isinstance(last[f"{t}/PSNR"], float) and isinstance(last[f"{t}/SSIM"], float)
    args = ["--output_dir", str(work), "--metrics", "--figures", "--device", "cpu", "--no_progress"]
    assert run_main(step5.main, step5.parse_args(args)) == 0
    metrics = json.loads((work / "results/metrics.json").read_text())
    assert set(metrics["per_user"]) == {"Blur", "LowLight", "Noise", "Occlusion"}
    # step 5 measures the last validated model as its validation did (Y of the 8-bit images, 32 px bilinear)
    assert metrics["overall"]["psnr_y"] == pytest.approx(last["PSNR"], abs=1e-4)
    assert metrics["overall"]["ssim_y"] == pytest.approx(last["SSIM"], abs=1e-5)
    assert metrics["protocol"]["resolution"].startswith("32x32") and metrics["protocol"]["crop_border"] == 0


def test_task_flag_selects_the_task_preset_and_refuses_a_preset_of_another_task() -> None:
    import step4_train
    from aetune.train.flags import build_config

    cfg, _ = build_config(step4_train.parse_args(["--task", "restoration"]))
    assert cfg.model.task == "restoration" and cfg.preset == "restoration"
    with pytest.raises(AetuneError, match="--task restoration but --config vavae is a reconstruction preset"):
        build_config(step4_train.parse_args(["--task", "restoration", "--config", "vavae"]))
    cfg, _ = build_config(step4_train.parse_args(["--family", "taesd", "--task", "restoration"]))
    assert (cfg.preset, cfg.model.family, cfg.model.task) == ("restoration", "taesd", "restoration")
    cfg, _ = build_config(step4_train.parse_args(["--family", "hypir", "--task", "restoration"]))
    assert (cfg.preset, cfg.model.family) == ("hypir", "hypir")  # the family's own preset already trains the task
    with pytest.raises(AetuneError, match="--family rae but --config taesd is a taesd preset"):
        build_config(step4_train.parse_args(["--family", "rae", "--config", "taesd"]))
