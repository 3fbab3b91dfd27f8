"""taehv's training clips: the TAEHV notebook's random frame delta and random resized crops, drawn reproducibly
(resume, workers), and an epoch sized by clips, not videos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aetune.config import load_config
from aetune.data.datamodule import ImageDataModule, StageBatchSampler, batches_per_epoch
from aetune.data.kinds import get_data_kind
from aetune.data.kinds.video import RandomClips, random_resized_crop, register_video_kind
from aetune.data.prepared import load_prepared
from aetune.data.video import VideoClips, build_clip_cache

pytest.importorskip("av")


def counting_video(folder: Path, name: str, frames: int, h: int = 24, w: int = 40) -> Path:
    """A cached video whose frame t is filled with t (channel 0) over a horizontal ramp (channel 1)."""
    arr = np.zeros((frames, h, w, 3), np.uint8)
    arr[..., 0] = np.arange(frames, dtype=np.uint8)[:, None, None]
    arr[..., 1] = np.linspace(0, 255, w, dtype=np.uint8)[None, None, :]
    path = folder / f"{name}.npy"
    np.save(path, arr)
    return path


def test_a_clip_takes_every_dth_frame_and_short_videos_the_largest_delta_that_fits(tmp_path: Path) -> None:
    long, short = counting_video(tmp_path, "long", 60), counting_video(tmp_path, "short", 9)
    clips = RandomClips([long, short], [0, 1], frames=5, max_delta=5, crop=None)
    assert len(clips) == len(VideoClips([long, short], [0, 1], 5)) == 12 + 1  # slots of 5 frames: clips, not videos
    deltas = set()
    for i in range(len(clips)):
        for epoch in range(8):
            clip, label = clips[(i, 7, epoch)]
            t = clip[:, 0, 0, 0].long()
            d = int(t[1] - t[0])
            assert clip.shape == (5, 3, 24, 40) and clip.dtype == torch.uint8
            assert torch.equal(t, t[0] + d * torch.arange(5)) and 1 <= d <= 5, t  # equally spaced, delta 1..5
            if label == 1:
                assert d in (1, 2), t  # 9 frames: a 5-frame clip fits delta 2 at most
            deltas.add(d)
    assert deltas == {1, 2, 3, 4, 5}
    torch.testing.assert_close(clips[(3, 7, 2)][0], clips[(3, 7, 2)][0])  # a key always draws the same clip
    assert any(not torch.equal(clips[(3, 7, 0)][0], clips[(3, 7, e)][0]) for e in range(1, 4))  # new each epoch


def test_one_random_resized_crop_for_the_whole_clip() -> None:
    clip = np.zeros((4, 30, 50, 3), np.uint8)
    clip[..., 1] = np.arange(50, dtype=np.uint8)[None, None, :] * 5
    clip[..., 2] = np.arange(30, dtype=np.uint8)[None, :, None] * 8
    clip[..., 0] = np.arange(4, dtype=np.uint8)[:, None, None] * 60
    sides = set()
    for seed in range(30):
        out = random_resized_crop(clip, 16, np.random.default_rng(seed))
        assert out.shape == (4, 16, 16, 3) and out.dtype == np.uint8
        assert all(np.array_equal(out[0, ..., 1:], out[k, ..., 1:]) for k in range(4))  # one crop for all frames
        sides.add(int(out[0, 0, -1, 1]) - int(out[0, 0, 0, 1]))  # the crop's width shows in the ramp's span
    assert len(sides) > 5  # the side varies (uniform in [16, 30] px)
    tiny = random_resized_crop(clip[:, :10, :12], 16, np.random.default_rng(0))  # reflect-padded to the crop
    assert tiny.shape == (4, 16, 16, 3)


@pytest.fixture(scope="module")
def video_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import step3_prepare_dataset as step3

    work = tmp_path_factory.mktemp("video_work")
    argv = ["--output_dir", str(work), "--synthetic", "microdoppler_video", "--num_users", "2", "--image_size", "32"]
    assert step3.main(step3.parse_args([*argv, "--no_progress"])) == 0
    return work


def loader_keys(data: ImageDataModule, batches: int) -> list[torch.Tensor]:
    it = iter(data.train_dataloader())
    return [next(it)[0] for _ in range(batches)]


def test_training_draws_follow_the_stream_in_workers_and_after_a_resume(video_work: Path) -> None:
    register_video_kind(frames=5, max_delta=5, crop_source=32)
    try:
        prepared = load_prepared(video_work)

        def module(workers: int, position: int) -> ImageDataModule:
            data = ImageDataModule(prepared, video_work, 16, 4, workers, "file", 11, lambda: position, False, "video")
            data.prepare_data()
            data.setup()
            return data

        whole = loader_keys(module(0, 0), 5)
        assert whole[0].shape == (4, 5, 3, 16, 16)
        torch.testing.assert_close(loader_keys(module(2, 0), 5), whole)  # worker processes draw the same
        torch.testing.assert_close(loader_keys(module(0, 8), 3), whole[2:])  # resumed after 2 batches of 4
        val = module(0, 0).val_set
        assert type(val) is VideoClips and val[0][0].shape == (5, 3, 16, 16)  # validation stays deterministic
    finally:
        register_video_kind()


def test_keyed_sampler_keys_carry_the_epoch_and_ddp_shards_them() -> None:
    ranks = [StageBatchSampler(10, 2, 5, lambda: 8, r, 2, keyed=True) for r in range(2)]
    assert [next(iter(s)) for s in ranks] == [
        [(int(i), 5, 0) for i in ranks[0].epoch_order(0)[8:]],
        [(int(i), 5, 1) for i in ranks[0].epoch_order(1)[:2]],
    ]  # rank 0 ends epoch 0, rank 1 takes epoch 1's first items (each item with its own epoch)


def test_an_epoch_is_the_clips_the_loader_serves(video_work: Path, tmp_path: Path) -> None:
    """The runner's per_epoch (planned batches of a 1-epoch stage) equals ``len(train_dataloader)``."""
    import shutil

    from aetune.train.runner import TrainRequest, run_training

    work = tmp_path / "work"
    shutil.copytree(video_work / "data", work / "data")
    cfg = load_config(
        "taehv_demo",
        ["clip.frames=5", "clip.max_delta=3", "clip.crop=true", "clip.crop_source=32", "data.image_size=16",
         "train.stages.1.epochs=1", "train.stages.1.max_steps=-1", "train.val_every_n_steps=1000", "data.cache=file"],
    )  # fmt: skip
    result = run_training(TrainRequest(work, cfg, ["1"], accelerator="cpu", progress_bar=False))
    assert result.status == "done", result
    planned = json.loads((work / "checkpoints/run_state.json").read_text())["stages"]["1"]["planned_batches"]
    prepared = load_prepared(work)
    data = ImageDataModule(prepared, work, 16, cfg.train.batch_size, 0, "file", 0, lambda: 0, False, "video")
    data.setup()
    assert isinstance(data.train_set, RandomClips)
    assert planned == len(data.train_dataloader()) == batches_per_epoch(len(data.train_set), 4, 1)
    assert planned > len(prepared.train) // 4  # videos would have made a shorter epoch
    assert get_data_kind("image").count(prepared, "train", work) == len(prepared.train)  # one item per image
    files = build_clip_cache(prepared, "train", 32, 1, work, progress=False)
    assert all(np.load(f, mmap_mode="r").shape[1:] == (32, 32, 3) for f in files)  # crops' frames: never upscaled
