"""Step 4 under mixed precision, emulated on the CPU (``tests/fp16_emulation.py``): fp16 with a real loss scaler at
its start scale, the non-finite guard in every phase combination, scale growth, the scale across stages, bf16."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import aetune.train.module as module_file
from aetune.config import Config
from aetune.families.vavae.recipe import KLRecipe
from aetune.train.runner import TrainRequest, TrainResult, run_training
from tests.fp16_emulation import emulate_mixed_precision
from tests.train_helpers import make_work_dir, nan_inputs_at, tiny_config

FP16 = "train.precision=16-mixed"
START_SCALE = 2.0**16
GAN_ON = ("train.stages.1.loss.disc_start=0",)  # stage 1 with both phases from batch 0
VF_ADAPTIVE_GAN_OFF = ()  # the tiny preset's stage 1: the split backward cuts at z (the seed's stage 1)


def train(work: Path, cfg: Config, stages: tuple[str, ...] = ("1",)) -> TrainResult:
    return run_training(TrainRequest(work, cfg, list(stages), accelerator="cpu", progress_bar=False))


def last(work: Path, stage: str = "1") -> dict:
    return torch.load(work / f"checkpoints/stage{stage}/last.ckpt", weights_only=True)


def scales_per_window(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the fp16 scale after each window's update."""
    seen: list[float] = []
    real = module_file.update_scaler

    def update(trainer, stepped=True, overflow=False):
        real(trainer, stepped, overflow)
        seen.append(trainer.precision_plugin.scaler.get_scale())

    monkeypatch.setattr(module_file, "update_scaler", update)
    return seen


def nan_discriminator_at(monkeypatch: pytest.MonkeyPatch, batches: set[int]) -> None:
    """A non-finite discriminator loss at the given stage batches (the generator phase stays finite)."""
    real = KLRecipe.discriminator_step

    def step(self, x, target, g, ctx):
        result = real(self, x, target, g, ctx)
        if ctx.batch in batches:
            result.total = result.total * float("nan")
        return result

    monkeypatch.setattr(KLRecipe, "discriminator_step", step)


@pytest.mark.parametrize("sets", [VF_ADAPTIVE_GAN_OFF, GAN_ON], ids=["cut_at_z", "cut_at_x_rec"])
def test_fp16_split_backward_trains_from_the_start_scale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], sets: tuple[str, ...]
) -> None:
    """The gradient read at the cut overflows at 65536: the scaler must see it, back off, and training go on.

    The tiny model's summed-pixel gradients overflow fp16 down to a scale of 64 (ten halvings, measured): the
    stage must get there, then step."""
    emulate_mixed_precision(monkeypatch)
    scales = scales_per_window(monkeypatch)
    work = make_work_dir(tmp_path)
    cfg = tiny_config(tmp_path, FP16, "loss.split_backward=true", "train.stages.1.epochs=3", *sets)
    result = train(work, cfg)
    assert result.status == "done" and result.batches == 12
    ckpt = last(work)
    assert ckpt["WindowMixedPrecision"]["scale"] == scales[-1] < START_SCALE  # backed off
    meta = ckpt["aetune"]
    assert meta["nonfinite_total"] == 0 and meta["overflow_total"] == sum(
        b < a for a, b in zip([START_SCALE, *scales], scales, strict=False)
    )
    steps = ckpt["optimizer_states"][0]["state"][0]["step"].item()
    assert 0 < steps == 12 - meta["overflow_total"]  # every window stepped but the overflowing ones
    summary = f"0 skipped for non-finite values; {meta['overflow_total']} skipped by the fp16 loss scaler (overflow)"
    assert summary in capsys.readouterr().out  # the summary counts the scaler's skips too
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_fp16_scale_growth_overflows_again_and_backs_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scaler doubles after ``growth_interval`` clean windows (2000 by default; 2 here): that can overflow again,
    and a stage that survived its start must survive that too. It starts at 64, the tiny model's settled scale."""
    emulate_mixed_precision(monkeypatch, growth_interval=2, init_scale=64.0)
    scales = scales_per_window(monkeypatch)
    work = make_work_dir(tmp_path)
    result = train(work, tiny_config(tmp_path, FP16, "train.stages.1.epochs=2"))
    assert result.status == "done" and result.batches == 8
    rises = [b for a, b in zip([64.0, *scales], scales, strict=False) if b > a]
    falls = [b for a, b in zip([64.0, *scales], scales, strict=False) if b < a]
    assert rises and falls  # grew after clean windows and backed off after overflows
    assert last(work)["aetune"]["nonfinite_total"] == 0


@pytest.mark.parametrize(
    ("where", "sets", "bad_batch"),
    [
        ("g", (), 0),  # GAN off, the first batch: nothing steps, and nothing was ever scaled yet
        ("g", GAN_ON, 2),  # NaN images: both phases bad
        ("d", GAN_ON, 2),  # the discriminator alone bad, the generator steps
    ],
    ids=["g_alone_first_batch", "both_phases", "d_only"],
)
def test_fp16_nonfinite_window_counts_as_an_overflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, sets: tuple[str, ...], bad_batch: int
) -> None:
    """A bad window steps nothing of its bad phases, lowers the scale (also before any scale() on batch 0) and
    training goes on; it counts toward ``train.max_nonfinite``, not as a routine overflow. The scaler starts
    at 64, where the tiny model's clean windows do not overflow, so only the bad window moves it."""
    emulate_mixed_precision(monkeypatch, init_scale=64.0)
    scales = scales_per_window(monkeypatch)
    if where == "g":
        nan_inputs_at(monkeypatch, {bad_batch})
    else:
        nan_discriminator_at(monkeypatch, {bad_batch})
    work = make_work_dir(tmp_path)
    cfg = tiny_config(tmp_path, FP16, "loss.split_backward=false", *sets)
    result = train(work, cfg)
    assert result.status == "done" and result.batches == 4
    assert scales == [64.0] * bad_batch + [32.0] * (4 - bad_batch)
    meta = last(work)["aetune"]
    assert (meta["nonfinite_total"], meta["nonfinite_streak"], meta["overflow_total"]) == (1, 0, 0)
    assert all(torch.isfinite(v).all() for k, v in last(work)["state_dict"].items() if "running" not in k)


def test_fp16_nonfinite_windows_in_a_row_stop_at_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emulate_mixed_precision(monkeypatch)
    nan_inputs_at(monkeypatch, set(range(100)))
    work = make_work_dir(tmp_path)
    with pytest.raises(Exception, match="diverged at batch 2"):
        train(work, tiny_config(tmp_path, FP16, "train.max_nonfinite=2"))
    assert last(work)["aetune"]["nonfinite_streak"] == 2


def test_fp16_scale_carries_into_the_next_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage 2 starts at the scale stage 1 ended with, not at 65536 (which would skip its first windows again)."""
    plugins = emulate_mixed_precision(monkeypatch)
    scales = scales_per_window(monkeypatch)
    work = make_work_dir(tmp_path)
    assert train(work, tiny_config(tmp_path, FP16), ("1", "2")).status == "done"
    end_of_stage_1 = last(work, "1")["WindowMixedPrecision"]["scale"]
    assert end_of_stage_1 == scales[3] < START_SCALE and len(plugins) == 2
    assert scales[4] in (end_of_stage_1, end_of_stage_1 / 2)  # its first window continued from there


def test_bf16_autocast_trains_the_gan_and_alignment_stages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emulate_mixed_precision(monkeypatch)
    work = make_work_dir(tmp_path)
    cfg = tiny_config(tmp_path, "train.precision=bf16-mixed", "loss.split_backward=true")
    result = train(work, cfg, ("1", "2"))
    assert result.status == "done" and result.stages_done == ["1", "2"]
    ckpt = last(work, "2")
    assert ckpt["aetune"]["nonfinite_total"] == 0 and ckpt["optimizer_states"][1]["state"][0]["step"].item() == 4
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_fp16_gradients_nan_at_every_scale_stop_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A finite loss whose gradients are NaN whatever the scale is no overflow: once the scale falls below 1 such
    windows count as non-finite, and ``train.max_nonfinite`` stops the run instead of an endless silent back-off."""
    emulate_mixed_precision(monkeypatch, init_scale=4.0)
    real = module_file.AutoencoderModule.on_train_start

    def poison(self):
        real(self)
        self.autoencoder.decoder.conv_out.weight.register_hook(lambda g: g * float("nan"))

    monkeypatch.setattr(module_file.AutoencoderModule, "on_train_start", poison)
    work = make_work_dir(tmp_path)
    with pytest.raises(Exception, match="diverged at batch 4"):
        train(work, tiny_config(tmp_path, FP16, "train.max_nonfinite=2", "train.stages.1.epochs=2"))
    meta = last(work)["aetune"]
    assert last(work)["WindowMixedPrecision"]["scale"] < 1 and meta["nonfinite_streak"] == 2
