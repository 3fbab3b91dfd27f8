"""Per-user train/val split by seeded content hash: stratified, deterministic, stable, leak-free.

Each image gets a score ``u = sha256(seed : pixel sha1)`` in [0, 1). Identical images share a
score, so they form one unit and always land on the same side. For each user, the ``k`` units with
the lowest scores go to validation, ``k = max(1, round(units * val_ratio))`` for users with two or
more units, 0 for a single one. A score depends on content only, never on a list order, so the split
does not depend on file names or on the order files are listed in.

Stability: when ``data/split.json`` already exists for the same seed and ratio, every image it lists
keeps its side and only new images are placed (lowest scores to validation until the user's quota is
met). Adding images therefore never moves an existing image across.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Sequence

from aetune.data.scan import ImageRecord, natural_key

log = logging.getLogger(__name__)


def content_score(seed: int, sha1: str) -> float:
    """Seeded hash of an image's pixel digest, uniform in [0, 1)."""
    h = hashlib.sha256(f"{seed}:{sha1}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def val_quota(units: int, val_ratio: float) -> int:
    """Validation units for a user with ``units`` distinct images."""
    if units < 2 or val_ratio <= 0:
        return 0
    return min(units - 1, max(1, round(units * val_ratio)))


def split_records(
    records: Sequence[ImageRecord],
    val_ratio: float,
    seed: int,
    previous: dict[str, str] | None = None,
) -> tuple[list[str], list[str]]:
    """Split accepted images into train and val relpaths (each list in natural order).

    Args:
        records: accepted images from the scan.
        val_ratio: fraction of each user's distinct images for validation, in [0, 1).
        seed: hash seed.
        previous: relpath -> "train" | "val" from an earlier split with the same seed and ratio.

    Returns:
        (train relpaths, val relpaths).
    """
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    previous = previous or {}
    units: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        units[r.user][r.sha1].append(r.relpath)
    side: dict[str, str] = {}
    for by_hash in units.values():
        known = {h: [previous[p] for p in paths if p in previous] for h, paths in by_hash.items()}
        decided = {h: ("train" if "train" in sides else "val") for h, sides in known.items() if sides}
        k = val_quota(len(by_hash), val_ratio)
        in_val = sum(1 for s in decided.values() if s == "val")
        for h in sorted((h for h in by_hash if h not in decided), key=lambda h: content_score(seed, h)):
            decided[h] = "val" if in_val < k else "train"
            in_val += decided[h] == "val"
        for h, paths in by_hash.items():
            for p in paths:
                side[p] = decided[h]
    # An image copied into two users' folders must not be trained on and validated on.
    by_hash_all: dict[str, list[str]] = defaultdict(list)
    for r in records:
        by_hash_all[r.sha1].append(r.relpath)
    for paths in by_hash_all.values():
        if len({side[p] for p in paths}) > 1:
            log.warning("identical image in several users (%s): all copies kept in train", ", ".join(paths))
            for p in paths:
                side[p] = "train"
    train = sorted((p for p, s in side.items() if s == "train"), key=natural_key)
    val = sorted((p for p, s in side.items() if s == "val"), key=natural_key)
    return train, val


def duplicate_groups(records: Sequence[ImageRecord]) -> list[list[str]]:
    """Groups (2+ relpaths) of images with identical pixels, in natural order."""
    groups: dict[str, list[str]] = defaultdict(list)
    for r in records:
        groups[r.sha1].append(r.relpath)
    dups = [sorted(g, key=natural_key) for g in groups.values() if len(g) > 1]
    return sorted(dups, key=lambda g: natural_key(g[0]))
