"""The ``video`` data kind of step 4: clips of ``ClipConfig.frames`` frames from the per-video clip cache.

Items are ``(clip (frames, 3, S, S) uint8, label)``, S = the stage's ``data.image_size``. Validation (and step 5)
clips are ``aetune.data.video.VideoClips``: non-overlapping, every ``stride``-th frame, frames square-resized.
Training clips may instead be drawn as the TAEHV training notebook (madebyollin/seraena) draws them
(:class:`RandomClips`): a random frame delta and a random resized crop shared by the clip's frames, drawn anew
each data epoch from a seed of (data seed, epoch, item), so a resumed run draws what an uninterrupted one would.

The kind API passes only the image size, so the clip settings are bound when the ``taehv`` recipe is built
(:func:`register_video_kind`, called with its ``clip`` section) and are the same on every rank, each of which
builds the recipe before its data module.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from aetune.data.kinds.registry import register_data_kind
from aetune.data.prepared import DATASET_FILE, PreparedData, data_dir
from aetune.data.video import FrameSize, VideoClips, build_clip_cache
from aetune.errors import AetuneError
from aetune.io import read_json

DEFAULT_FRAMES, DEFAULT_STRIDE = 12, 1
"""The seed's clips (12 consecutive frames) until a recipe binds its own."""


def random_resized_crop(clip: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """One square crop for all frames, resized to ``size``: (T, H, W, 3) uint8 -> (T, size, size, 3) uint8.

    The notebook's ``random_resize_crop``: side uniform in [size, min(H, W)] pixels, then x, then y uniform over
    every position (the notebook's ``randrange`` leaves out the last one), bicubic resize; frames smaller than
    ``size`` are first reflect-padded to it.
    """
    h, w = clip.shape[1:3]
    py, px = max(0, size - h), max(0, size - w)
    if py or px:
        clip = np.pad(clip, ((0, 0), (py // 2, py - py // 2), (px // 2, px - px // 2), (0, 0)), mode="reflect")
        h, w = clip.shape[1:3]
    side = int(rng.integers(size, min(h, w) + 1))
    x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    crops = [Image.fromarray(f[y : y + side, x : x + side]) for f in clip]
    return np.stack([np.asarray(c.resize((size, size), Image.Resampling.BICUBIC)) for c in crops])


class RandomClips(VideoClips):
    """Training clips of cached videos drawn anew each data epoch: ``(clip (frames, 3, S, S) uint8, label)``.

    Item ``i`` is a slot of ``VideoClips``' index (a video has ``T // frames`` of them, so an epoch still counts
    clips, not videos); its clip is drawn, with ``numpy``'s generator seeded by the key ``(i, seed, epoch)`` the
    data module passes (``keyed_by_epoch``), as the TAEHV notebook draws one: a frame delta ``d`` uniform in
    1..``max_delta``, a start uniform over the video, then every ``d``-th cached frame. A video shorter than a clip
    at the drawn delta takes the largest delta that fits, ``(T - 1) // (frames - 1)``. With ``crop``, one random
    resized crop (:func:`random_resized_crop`) for every frame of the clip.

    Args:
        files, labels, frames: as ``VideoClips``.
        max_delta: the largest frame delta (1: consecutive cached frames).
        crop: the output side S of the crops (frames cached at a larger short side), or None: the cached frames
            are S x S already.
    """

    keyed_by_epoch = True
    """The data module indexes this dataset by ``(index, seed, epoch)``: its draws depend on the epoch."""

    def __init__(self, files: list[Path], labels: list[int], frames: int, max_delta: int, crop: int | None) -> None:
        super().__init__(files, labels, frames)
        if max_delta < 1:
            raise AetuneError(f"clip.max_delta must be >= 1, got {max_delta}")
        self.max_delta, self.crop = max_delta, crop

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[Tensor, int]:  # type: ignore[override]
        i, seed, epoch = key
        rng = np.random.default_rng((seed, epoch, i))
        v, n = self.index[i][0], self.lengths[self.index[i][0]]
        delta = int(rng.integers(1, self.max_delta + 1))
        if self.frames > 1:
            delta = min(delta, (n - 1) // (self.frames - 1))  # the largest delta that fits a short video
        span = (self.frames - 1) * delta + 1
        start = int(rng.integers(0, n - span + 1))
        clip = np.array(np.load(self.files[v], mmap_mode="r")[start : start + span : delta])  # copy (T, H, W, 3)
        if self.crop is not None:
            clip = random_resized_crop(clip, self.crop, rng)
        return torch.from_numpy(clip).permute(0, 3, 1, 2), self.labels[v]  # (T, H, W, 3) -> (T, 3, H, W)


def _frame_size(split: str, size: int, crop_source: int | None) -> FrameSize:
    """Training frames for crops keep their aspect at a short side of at most ``crop_source``; others are S x S."""
    if split == "train" and crop_source is not None:
        if crop_source < size:
            raise AetuneError(
                f"clip.crop_source {crop_source} is below the image size {size}: crops are cut from frames of that "
                "short side, so raise clip.crop_source"
            )
        return crop_source
    return (size, size)


def _prepare(
    prepared: PreparedData, split: str, size: int, work_dir: Path, progress: bool, *, stride: int,
    crop_source: int | None,
) -> None:  # fmt: skip
    build_clip_cache(prepared, split, _frame_size(split, size, crop_source), stride, work_dir, progress)


def _count(prepared: PreparedData, split: str, work_dir: Path, *, frames: int, stride: int) -> int:
    """Clips of the split from step 3's frame counts (no cache needed): ``ceil(frames_v / stride) // frames`` each."""
    recorded = {a["relpath"]: a["frames"] for a in read_json(data_dir(work_dir) / DATASET_FILE)["accepted"]}
    return sum(-(-recorded[s.relpath] // stride) // frames for s in prepared.split(split))


def _dataset(
    prepared: PreparedData, split: str, size: int, cache: str, work_dir: Path, progress: bool, *, frames: int,
    stride: int, max_delta: int, crop_source: int | None,
) -> Dataset:  # fmt: skip
    """``data.cache`` does not apply: videos are always cached as files (decoding them per epoch is the slow part).

    Raises:
        AetuneError: the cached videos hold other frame counts than step 3 recorded (a video changed since).
    """
    shape = _frame_size(split, size, crop_source)
    files = build_clip_cache(prepared, split, shape, stride, work_dir, progress)
    labels = [s.label for s in prepared.split(split)]
    if split == "train" and (max_delta > 1 or crop_source is not None):
        clips: VideoClips = RandomClips(files, labels, frames, max_delta, None if crop_source is None else size)
    else:
        clips = VideoClips(files, labels, frames)
    expected = _count(prepared, split, work_dir, frames=frames, stride=stride)
    if len(clips) != expected:
        raise AetuneError(
            f"the {split} videos give {len(clips)} clips, step 3's frame counts {expected}: videos changed since step "
            "3; re-run step 3"
        )
    return clips


def register_video_kind(
    frames: int = DEFAULT_FRAMES, stride: int = DEFAULT_STRIDE, max_delta: int = 1, crop_source: int | None = None
) -> None:
    """(Re-)register ``video``: clips of ``frames`` frames, every ``stride``-th frame of a video; training clips with
    a random frame delta up to ``max_delta`` and, with ``crop_source`` (the short side crops are cut from), random
    resized crops (:class:`RandomClips`)."""
    register_data_kind(
        "video",
        partial(_prepare, stride=stride, crop_source=crop_source),
        partial(_dataset, frames=frames, stride=stride, max_delta=max_delta, crop_source=crop_source),
        partial(_count, frames=frames, stride=stride),
    )


def bind_clips(config: dict) -> None:
    """Register ``video`` with the clips of a run's resolved config (``Config.to_dict()``, its ``clip`` section), as
    step 5 reads them: deterministic clips only (the random draws are for training)."""
    clip = config.get("clip") or {}
    register_video_kind(clip.get("frames", DEFAULT_FRAMES), clip.get("stride", DEFAULT_STRIDE))


register_video_kind()
