"""Step 4 building blocks without training: data order, image cache, stage plan, run state, precision, files."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from aetune.data.cache import CachedImages, build_file_cache, cache_file, load_images
from aetune.data.datamodule import StageBatchSampler, batches_per_epoch
from aetune.data.prepared import load_prepared
from aetune.errors import AetuneError
from aetune.setup.env import GpuFact
from aetune.train.callbacks import AtomicCheckpointIO
from aetune.train.csvlog import StageCSVLogger
from aetune.train.plan import RunState, check_order, import_session, parse_stages
from aetune.train.precision import check_precision, parse_devices, plan_devices
from tests.train_helpers import make_work_dir, tiny_config, tiny_preset

T4 = GpuFact(0, "Tesla T4", (7, 5), 15.0)
A100 = GpuFact(0, "A100", (8, 0), 40.0)


def sampler(images: int, rank: int = 0, world: int = 1) -> StageBatchSampler:
    """20 items, batch 3 per rank, after ``images`` images (the sampler counts images, all ranks together)."""
    return StageBatchSampler(num_items=20, batch_size=3, seed=7, position=lambda: images, rank=rank, world_size=world)


def test_sampler_resumes_mid_epoch_with_the_same_batches() -> None:
    first = list(sampler(0))  # steps at 0, 3, ..., 18: the last one takes epoch 1's first item
    assert len(first) == 7 and all(len(b) == 3 for b in first)
    stream = [i for b in first for i in b]
    assert sorted(stream[:20]) == list(range(20))  # every item once per epoch, none dropped
    second = list(sampler(21))  # the next pass continues the stream in epoch 1
    assert stream[20] == sampler(0).epoch_order(1)[0]
    assert [i for b in second for i in b][:19] == sampler(0).epoch_order(1).tolist()[1:20]
    assert list(sampler(12)) == first[4:]  # resumed after 12 images: the rest of the pass, exactly


def test_sampler_ranks_take_disjoint_slices() -> None:
    r0, r1 = list(sampler(0, 0, 2)), list(sampler(0, 1, 2))
    assert len(r0) == len(r1) == 4 and batches_per_epoch(20, 3, 2) == 3  # 4 steps of 6 reach the end of 20
    assert not {i for b in r0[:3] for i in b} & {i for b in r1[:3] for i in b}


def test_sampler_sees_every_image_once_per_epoch_across_device_counts() -> None:
    """A stage planned on 1 device (batch 2), resumed on 2, then on 1 again: the image counter, not a per-rank
    batch counter, says where the data order continues, so no image of an epoch is skipped or repeated."""
    seen: list[int] = []
    images = 0
    for world, steps in ((1, 2), (2, 2), (1, 3)):  # 4 + 8 + 6 = 18 images: one whole epoch of 18 items
        for _ in range(steps):
            for rank in range(world):
                pass_ = StageBatchSampler(18, 2, seed=3, position=lambda n=images: n, rank=rank, world_size=world)
                seen += next(iter(pass_))
            images += 2 * world
    assert sorted(seen) == list(range(18))
    one_device = [i for b in StageBatchSampler(18, 2, seed=3, position=lambda: 0) for i in b]
    assert seen == one_device  # the same order as a run that never changed devices


def test_too_few_images_for_one_batch_is_an_error() -> None:
    with pytest.raises(AetuneError, match="lower --batch_size"):
        batches_per_epoch(5, 4, 2)


def test_file_cache_is_built_once_and_matches_ram(tmp_path: Path) -> None:
    work = make_work_dir(tmp_path, users=2, per_user=4)
    prepared = load_prepared(work)
    path = build_file_cache(prepared, "train", 16, work)
    stamp = path.stat().st_mtime_ns
    assert build_file_cache(prepared, "train", 16, work).stat().st_mtime_ns == stamp  # valid: reused
    ram = load_images(prepared, "train", 16, "ram", work)
    mapped = load_images(prepared, "train", 16, "file", work)
    assert ram.shape == (len(prepared.train), 16, 16, 3) and ram.dtype == np.uint8
    np.testing.assert_array_equal(ram, mapped)
    img, label = CachedImages(mapped, [s.label for s in prepared.train])[1]
    assert img.shape == (3, 16, 16) and img.dtype == torch.uint8 and label == prepared.train[1].label
    with pytest.raises(AetuneError, match="stale"):
        load_images(prepared, "train", 24, "file", work)  # another size has no cache yet
    assert cache_file(work, "train", 16) == path


def test_stage_plan_order_and_gaps(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    assert parse_stages("3,1", cfg) == ["1", "3"] and parse_stages(None, cfg) == ["1", "2", "3"]
    with pytest.raises(AetuneError, match="not in the plan"):
        parse_stages("4", cfg)
    state = RunState("vavae", None, "tiny", True, stages_done=["1"])
    check_order(["2", "3"], state, cfg, allow_gap=False)
    with pytest.raises(AetuneError, match="stage 2 has not finished.*--allow_stage_gap"):
        check_order(["3"], state, cfg, allow_gap=False)
    check_order(["3"], state, cfg, allow_gap=True)


def test_run_state_round_trip_and_import(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    state = RunState("vavae", "vavae", "tiny", False, stages_done=["1"])
    state.record("1").last = "stage1/last.ckpt"
    state.sessions.append({"started": "2026-01-01 00:00:00", "ended": None, "stages": ["1"], "exit": "done"})
    state.save(old)
    (old / "checkpoints" / "stage1").mkdir()
    (old / "checkpoints" / "stage1" / "last.ckpt").write_bytes(b"weights")
    (old / "data").mkdir()
    (old / "data" / "split.json").write_text("{}")
    assert RunState.load(old) == state
    os.chmod(old, 0o555)  # the source is read-only, as /kaggle/input is
    assert import_session(old, new) is True
    assert (new / "checkpoints" / "stage1" / "last.ckpt").read_bytes() == b"weights"
    assert (new / "data" / "split.json").is_file()
    assert import_session(old, new) is False  # continuing the same run: nothing to copy
    other = RunState("vavae", "vavae", "tiny", False)
    other.sessions.append({"started": "2026-02-02 00:00:00", "ended": None, "stages": ["1"], "exit": "done"})
    other.save(new)
    with pytest.raises(AetuneError, match="another run"):
        import_session(old, new)
    with pytest.raises(AetuneError, match="no run_state.json"):
        import_session(tmp_path / "nothing", new)


def test_precision_rules() -> None:
    assert check_precision("32", "cpu", []) == "32-true"
    assert check_precision("16-mixed", "gpu", [T4]) == "16-mixed"
    assert check_precision("bf16-mixed", "gpu", [A100]) == "bf16-mixed"
    with pytest.raises(AetuneError, match="no native bf16.*16-mixed"):
        check_precision("bf16-mixed", "gpu", [A100, T4])
    with pytest.raises(AetuneError, match="needs a CUDA GPU"):
        check_precision("16-mixed", "cpu", [])
    with pytest.raises(AetuneError, match="use one of"):
        check_precision("fp8", "gpu", [A100])
    assert parse_devices("2", "cpu") == 2
    with pytest.raises(AetuneError, match="number of processes"):
        parse_devices("0,1", "cpu")


def test_cpu_plan_defaults_to_fp32(tmp_path: Path) -> None:
    plan = plan_devices("cpu", None, None, tmp_path)
    assert (plan.accelerator, plan.devices, plan.world_size, plan.precision) == ("cpu", 1, 1, "32-true")
    assert plan_devices("cpu", "2", "32", tmp_path).world_size == 2


def test_csv_logger_continues_across_sessions(tmp_path: Path) -> None:
    first = StageCSVLogger(tmp_path)
    first.log_metrics({"train/g_total": 1.5}, step=0)
    first.save()
    second = StageCSVLogger(tmp_path)  # a resumed session
    second.log_metrics({"val/psnr": 20.0}, step=10)
    second.finalize("success")
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["0", "10"]
    assert rows[0]["train/g_total"] == "1.5" and rows[1]["val/psnr"] == "20.0" and rows[0]["val/psnr"] == ""


def test_checkpoint_write_crash_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": torch.tensor(1)}, path)

    def crash(obj: object, f: object) -> None:
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("killed mid-write")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="mid-write"):
        io.save_checkpoint({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_bench_reports_each_phase(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aetune.tools import bench

    preset = str(tiny_preset(tmp_path))
    common = ["--config", preset, "--batch_size", "2", "--steps", "2", "--warmup", "0", "--device", "cpu"]
    assert bench.main(bench.parse_args(common)) == 0  # default stage: the first with the GAN on (2)
    out = capsys.readouterr().out
    assert "vavae stage 2, batch 2, 32-true, CPU, 2 steps" in out
    rows = {line.split("  ")[1].strip(): line for line in out.splitlines() if "images/s" in line}
    assert set(rows) == {"generator", "discriminator", "whole step"}
    for line in rows.values():
        rate, mib = float(line.split("images/s")[0].split()[-1]), float(line.split("MiB")[0].split()[-1])
        assert rate > 0 and mib > 100  # torch alone keeps a few hundred MiB resident
    assert bench.main(bench.parse_args([*common, "--stage", "1"])) == 0
    assert "discriminator  skipped (GAN off in stage 1)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("monitor", "mode"),
    [("val/psnr", "max"), ("val/PSNR", "max"), ("val/Final_Score", "max"), ("val/lpips", "min"),
     ("val/LPIPS", "min"), ("val/rfid", "min"), ("val/rec_loss", "min")],
)  # fmt: skip
def test_the_monitor_direction_ignores_the_keys_case(monitor: str, mode: str) -> None:
    from aetune.train.runner import monitor_mode

    assert monitor_mode(monitor) == mode


def test_pretrained_path_lists_the_parts_of_one_release() -> None:
    from aetune.recipes.base import pretrained_files

    assert pretrained_files("enc.pth, dec.pth") == ["enc.pth", "dec.pth"]
    assert pretrained_files("model.pt,") == ["model.pt"]
