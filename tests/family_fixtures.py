"""Tiny prepared work directories by data kind, for the family contract tests.

A family whose recipe consumes another kind (``pair``, ``video``, ``volume``) adds its maker here:
``TINY_DATA[kind](tmp_path) -> work_dir`` with step 3 already run (a few items, at most 32 px).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.train_helpers import make_work_dir


def make_video_work_dir(tmp: Path) -> Path:
    """2 users x 6 synthetic videos of 12 frames at 32 px, prepared by step 3's video code in ``tmp/work``."""
    from aetune.data.synthetic.video import generate_video_dataset
    from aetune.data.video import prepare_video_dataset

    root = generate_video_dataset(tmp / "videos", num_users=2, videos_per_user=6, frames=12, size=32, progress=False)
    prepare_video_dataset(root, tmp / "work", name="tiny", val_ratio=0.25, seed=0, progress=False)
    return tmp / "work"


def tiny_volume_work_dir(tmp: Path) -> Path:
    """Two classes of 7 synthetic 32^3 phantoms (4 batches of 2 in training), step 3 run (kind ``volume``)."""
    from aetune.data.kinds.volume import prepare_volume_dataset
    from aetune.data.synthetic.phantoms import generate_phantoms

    root = generate_phantoms(tmp / "phantoms", 2, 7, (32, 32, 32), file_format="npy", progress=False)
    prepare_volume_dataset(root, tmp / "work", "phantoms", val_ratio=0.2, progress=False)
    return tmp / "work"


TINY_DATA: dict[str, Callable[[Path], Path]] = {
    "image": lambda tmp: make_work_dir(tmp, users=2, per_user=8, size=32),
    "video": make_video_work_dir,
    "volume": tiny_volume_work_dir,
}
