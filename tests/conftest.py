"""Shared fixtures: small image folders built in ``tmp_path``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_png(path: Path, seed: int, size: int = 32, mode: str = "RGB") -> Path:
    """Write a random image of ``mode`` (deterministic for ``seed``) and return its path."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert(mode).save(path)
    return path


def make_user_folders(root: Path, counts: dict[str, int], size: int = 32, seed: int = 0) -> Path:
    """``root/<user>/img_<i>.png`` with ``counts[user]`` distinct random images per user."""
    for u, (user, n) in enumerate(counts.items()):
        for i in range(n):
            write_png(root / user / f"img_{i:03d}.png", seed=seed * 100_000 + u * 1000 + i, size=size)
    return root


@pytest.fixture
def user_folders(tmp_path: Path) -> Path:
    """Three users (ID_1, ID_2, ID_10) with 10, 6 and 3 images of 32 px."""
    return make_user_folders(tmp_path / "dataset", {"ID_1": 10, "ID_2": 6, "ID_10": 3})
