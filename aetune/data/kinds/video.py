"""The ``video`` data kind of step 4: clips of ``ClipConfig.frames`` frames from the per-video clip cache.

Items are ``(clip (frames, 3, S, S) uint8, label)`` (``aetune.data.video.VideoClips``), S = the stage's
``data.image_size``. The kind API passes only the image size, so the clip length and frame stride are bound
when the ``taehv`` recipe is built (:func:`register_video_kind`, called with its ``clip`` section) and are the
same on every rank, each of which builds the recipe before its data module.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from torch.utils.data import Dataset

from aetune.data.kinds.registry import register_data_kind
from aetune.data.prepared import PreparedData
from aetune.data.video import VideoClips, build_clip_cache

DEFAULT_FRAMES, DEFAULT_STRIDE = 12, 1
"""The seed's clips (12 consecutive frames) until a recipe binds its own."""


def _prepare(prepared: PreparedData, split: str, size: int, work_dir: Path, progress: bool, *, stride: int) -> None:
    build_clip_cache(prepared, split, (size, size), stride, work_dir, progress)


def _dataset(
    prepared: PreparedData, split: str, size: int, cache: str, work_dir: Path, progress: bool, *, frames: int,
    stride: int,
) -> Dataset:  # fmt: skip
    """``data.cache`` does not apply: videos are always cached as files (decoding them per epoch is the slow part)."""
    files = build_clip_cache(prepared, split, (size, size), stride, work_dir, progress)
    return VideoClips(files, [s.label for s in prepared.split(split)], frames)


def register_video_kind(frames: int = DEFAULT_FRAMES, stride: int = DEFAULT_STRIDE) -> None:
    """(Re-)register ``video`` with clips of ``frames`` frames, every ``stride``-th frame of a video."""
    register_data_kind("video", partial(_prepare, stride=stride), partial(_dataset, frames=frames, stride=stride))


def bind_clips(config: dict) -> None:
    """Register ``video`` with the clips of a run's resolved config (``Config.to_dict()``, its ``clip`` section)."""
    clip = config.get("clip") or {}
    register_video_kind(clip.get("frames", DEFAULT_FRAMES), clip.get("stride", DEFAULT_STRIDE))


register_video_kind()
