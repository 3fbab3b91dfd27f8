"""Data kinds by name (``image``, ``pair``, ``video``, ``volume``): how step 4 turns step 3's split into datasets.

A recipe names the kind it consumes (``Recipe.data_kind``); the data module asks this registry for the
datasets. A kind registers two functions: ``prepare`` (build file caches once, on local rank 0, before any
rank reads them: Lightning's ``prepare_data``) and ``dataset`` (the split as a ``torch`` Dataset whose items
the recipe's ``inputs`` understands), and, when a sample of step 3 is not one item, ``count`` (the items the
split's dataset will serve, known before any cache is built: step 4 sizes an epoch by it). Adding a kind is one
module in this package that calls :func:`register_data_kind`, imported by the package's ``__init__``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from aetune.data.prepared import PreparedData
from aetune.errors import AetuneError

Prepare = Callable[[PreparedData, str, int, Path, bool], None]
"""(prepared, split, size, work_dir, progress) -> None: build the split's file cache."""
MakeDataset = Callable[[PreparedData, str, int, str, Path, bool], Dataset]
"""(prepared, split, size, cache mode, work_dir, progress) -> the split's dataset."""
Count = Callable[[PreparedData, str, Path], int]
"""(prepared, split, work_dir) -> ``len`` of the split's dataset."""


def split_items(prepared: PreparedData, split: str, work_dir: Path) -> int:
    """One item per sample of step 3's split (images, LQ/GT pairs, volumes)."""
    return len(prepared.split(split))


@dataclass(frozen=True)
class DataKind:
    """How one kind of data is cached and served."""

    name: str
    prepare: Prepare
    dataset: MakeDataset
    count: Count = split_items


_KINDS: dict[str, DataKind] = {}


def register_data_kind(name: str, prepare: Prepare, dataset: MakeDataset, count: Count = split_items) -> DataKind:
    """Register (or re-register) the kind ``name``."""
    kind = DataKind(name, prepare, dataset, count)
    _KINDS[name] = kind
    return kind


def get_data_kind(name: str) -> DataKind:
    """The registered kind ``name``; one error line listing the kinds otherwise."""
    if name not in _KINDS:
        raise AetuneError(f"unknown data kind '{name}'; known: {', '.join(sorted(_KINDS))}")
    return _KINDS[name]
