"""Tiny prepared work directories by data kind, for the family contract tests.

A family whose recipe consumes another kind (``pair``, ``video``, ``volume``) adds its maker here:
``TINY_DATA[kind](tmp_path) -> work_dir`` with step 3 already run (a few items, at most 32 px).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.train_helpers import make_work_dir

TINY_DATA: dict[str, Callable[[Path], Path]] = {
    "image": lambda tmp: make_work_dir(tmp, users=2, per_user=8, size=32),
}
