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
    base, improved = load_config("restoration"), load_config("restoration_improved")
    assert (base.model.family, base.model.task, base.schema.data_kind) == ("kl", "restoration", "pair")
    assert base.loss == RestorationLossConfig()  # sd2_finetune_5k: L1 1, L2 1, LPIPS 5, SSIM 0, GAN 0.5
    assert (base.train.learning_rate, base.train.d_learning_rate, base.train.monitor) == (1e-5, 1e-5, "val/final_score")
    w = improved.loss
    assert (w.gan_weight, w.lpips_weight, w.l2_weight, w.l1_weight, w.ssim_weight) == (0.3, 3.0, 2.0, 2.0, 1.0)
    assert (improved.train.learning_rate, improved.train.d_learning_rate) == (2e-5, 5e-6)
    assert [improved.stage_optimizer("1", p).weight_decay for p in "gd"] == [1e-4, 1e-4]
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
        assert isinstance(last[f"{t}/psnr"], float) and isinstance(last[f"{t}/ssim"], float)
    args = ["--output_dir", str(work), "--metrics", "--figures", "--device", "cpu", "--no_progress"]
    assert run_main(step5.main, step5.parse_args(args)) == 0
    metrics = json.loads((work / "results/metrics.json").read_text())
    assert set(metrics["per_user"]) == {"Blur", "LowLight", "Noise", "Occlusion"}


def test_task_flag_selects_the_task_preset_and_refuses_a_preset_of_another_task() -> None:
    import step4_train
    from aetune.train.flags import build_config

    cfg, _ = build_config(step4_train.parse_args(["--task", "restoration"]))
    assert cfg.model.task == "restoration" and cfg.preset == "restoration"
    with pytest.raises(AetuneError, match="--task restoration but --config vavae is a reconstruction preset"):
        build_config(step4_train.parse_args(["--task", "restoration", "--config", "vavae"]))
