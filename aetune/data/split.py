"""Per-user train/val split by seeded content score alone: deterministic, leak-free, stable without memory.

Groups. Images joined by an exact copy (same pixel hash, in any users) or a near-duplicate link
(:mod:`aetune.data.neardup`) form one group, transitively; a group always lands on one side.

Scores. Each image has ``s = content_score(seed, sha1)``, uniform in [0, 1) and a function of its
pixels only. A group's score ``S`` is the *largest* score of its images.

Rule, for ``val_ratio = r`` in (0, MAX_VAL_RATIO]:
0. eligible: a group can go to validation only when every user it holds images of has two or more
   groups (a user's only group stays in training).
1. drawn: an eligible group goes to validation when ``S < r``.
2. minimum one: a user with an eligible group and no drawn group gets its lowest-``S`` eligible group
   in validation (ties by path). Picks are made from the drawn sides alone, so the result does not
   depend on the order users are visited.
Everything else is training. Nothing is read from an earlier split: a fresh work directory (a new
Kaggle session without the old ``split.json``) gives the same split for the same images.

Guarantees when images are only added (same seed and ratio, no image removed or changed):
- An image in training stays in training, unless an added image is an exact or near-duplicate of an
  existing one, or a user that had a single group gains a second one (the old group becomes eligible).
  Taking the maximum as the group score is what makes rule 1 safe: joining a group can only raise
  ``S``, so it can move a group to training, never to validation.
- An image in validation moves to training only if (a) it was its user's minimum-one pick and an added
  image of that user is drawn or scores lower, or (b) an added duplicate joins its group with a score
  of at least ``r``.
No rule without memory can keep every image in place and a minimum of one: if {a, b} puts a in
validation and {a, b, c} keeps it there, then {b, c} (which {a, b, c} also extends) needs c in
validation, and {a, c} is left with no training image.
Moving an image from validation to training is the harmless direction (a model trained earlier
never saw it); training to validation would validate a model on an image it trained on.

Cost of the safety: a group of k distinct images is drawn with probability ``r**k`` instead of ``r``,
so datasets with many near-duplicates get fewer validation images (the minimum-one rule still gives
every user of two or more groups one).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence

from aetune.data.scan import ImageRecord, natural_key
from aetune.errors import InvalidArgument

MAX_VAL_RATIO = 0.5
"""Largest validation fraction: beyond it a small user often keeps no training image (p = r**groups)."""


def content_score(seed: int, sha1: str) -> float:
    """Seeded hash of an image's pixel digest, uniform in [0, 1)."""
    h = hashlib.sha256(f"{seed}:{sha1}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def check_val_ratio(val_ratio: float, name: str = "val_ratio") -> None:
    """Raise InvalidArgument naming ``name`` unless ``0 < val_ratio <= MAX_VAL_RATIO`` (NaN fails too)."""
    if not 0.0 < val_ratio <= MAX_VAL_RATIO:
        raise InvalidArgument(
            f"{name} must be in (0, {MAX_VAL_RATIO}] (step 4 needs validation images, and training images "
            f"in every user), got {val_ratio}"
        )


def split_groups(records: Sequence[ImageRecord], links: Iterable[tuple[str, str]] = ()) -> list[list[str]]:
    """The groups of the module docstring: relpath lists (natural order), every record in exactly one.

    Args:
        records: accepted images.
        links: near-duplicate pairs of relpaths (both must be in ``records``).

    Returns:
        All groups, singletons included, ordered by their first path.
    """
    parent = {r.relpath: r.relpath for r in records}

    def root(p: str) -> str:
        while parent[p] != p:
            parent[p] = parent[parent[p]]  # path halving keeps the trees flat
            p = parent[p]
        return p

    def join(a: str, b: str) -> None:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    first_of_hash: dict[str, str] = {}
    for r in records:
        join(first_of_hash.setdefault(r.sha1, r.relpath), r.relpath)
    for a, b in links:
        join(a, b)
    groups: dict[str, list[str]] = defaultdict(list)
    for r in records:
        groups[root(r.relpath)].append(r.relpath)
    return sorted((sorted(g, key=natural_key) for g in groups.values()), key=lambda g: natural_key(g[0]))


def split_records(
    records: Sequence[ImageRecord], val_ratio: float, seed: int, links: Iterable[tuple[str, str]] = ()
) -> tuple[list[str], list[str]]:
    """Split accepted images into train and val relpaths (each list in natural order), by the module rule.

    Args:
        records: accepted images from the scan.
        val_ratio: validation fraction, in (0, MAX_VAL_RATIO].
        seed: hash seed.
        links: near-duplicate pairs of relpaths to keep on one side.

    Returns:
        (train relpaths, val relpaths).

    Raises:
        InvalidArgument: ``val_ratio`` out of range.
    """
    check_val_ratio(val_ratio)
    by_path = {r.relpath: r for r in records}
    groups = split_groups(records, links)
    score = [max(content_score(seed, by_path[p].sha1) for p in g) for g in groups]
    users_of = [{by_path[p].user for p in g} for g in groups]
    of_user: dict[str, set[int]] = defaultdict(set)
    for i, users in enumerate(users_of):
        for user in users:
            of_user[user].add(i)
    eligible = [all(len(of_user[u]) >= 2 for u in users_of[i]) for i in range(len(groups))]
    drawn = [e and s < val_ratio for e, s in zip(eligible, score, strict=True)]
    in_val = list(drawn)
    for mine in of_user.values():
        candidates = [i for i in mine if eligible[i]]
        if candidates and not any(drawn[i] for i in mine):
            in_val[min(candidates, key=lambda i: (score[i], natural_key(groups[i][0])))] = True
    train = sorted((p for g, v in zip(groups, in_val, strict=True) if not v for p in g), key=natural_key)
    val = sorted((p for g, v in zip(groups, in_val, strict=True) if v for p in g), key=natural_key)
    return train, val


def duplicate_groups(records: Sequence[ImageRecord]) -> list[list[str]]:
    """Groups (2+ relpaths) of images with identical pixels, in natural order."""
    groups: dict[str, list[str]] = defaultdict(list)
    for r in records:
        groups[r.sha1].append(r.relpath)
    dups = [sorted(g, key=natural_key) for g in groups.values() if len(g) > 1]
    return sorted(dups, key=lambda g: natural_key(g[0]))
