"""Data kinds by name (``image``, ``pair``, ``video``, ``volume``): how step 4 turns step 3's split into datasets.

A recipe names the kind it consumes (``Recipe.data_kind``); the data module asks this registry for the
datasets. A kind registers two functions: ``prepare`` (build file caches once, on local rank 0, before any
rank reads them: Lightning's ``prepare_data``) and ``dataset`` (the split as a ``torch`` Dataset whose items
the recipe's ``inputs`` understands). Adding a kind is one module that calls :func:`register_data_kind`,
imported at the bottom of this file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from aetune.data.cache import CachedImages, build_file_cache, load_images
from aetune.data.prepared import PreparedData
from aetune.errors import AetuneError

Prepare = Callable[[PreparedData, str, int, Path, bool], None]
"""(prepared, split, size, work_dir, progress) -> None: build the split's file cache."""
MakeDataset = Callable[[PreparedData, str, int, str, Path, bool], Dataset]
"""(prepared, split, size, cache mode, work_dir, progress) -> the split's dataset."""


@dataclass(frozen=True)
class DataKind:
    """How one kind of data is cached and served."""

    name: str
    prepare: Prepare
    dataset: MakeDataset


_KINDS: dict[str, DataKind] = {}


def register_data_kind(name: str, prepare: Prepare, dataset: MakeDataset) -> DataKind:
    """Register (or re-register) the kind ``name``."""
    kind = DataKind(name, prepare, dataset)
    _KINDS[name] = kind
    return kind


def get_data_kind(name: str) -> DataKind:
    """The registered kind ``name``; one error line listing the kinds otherwise."""
    if name not in _KINDS:
        raise AetuneError(f"unknown data kind '{name}'; known: {', '.join(sorted(_KINDS))}")
    return _KINDS[name]


def _image_dataset(
    prepared: PreparedData, split: str, size: int, cache: str, work_dir: Path, progress: bool
) -> Dataset:
    """Items ``(uint8 image (3, size, size), label)``."""
    images = load_images(prepared, split, size, cache, work_dir, progress)
    return CachedImages(images, [s.label for s in prepared.split(split)])


register_data_kind("image", build_file_cache, _image_dataset)

# The other kinds register themselves on import (they use register_data_kind above).
from aetune.data import pair_kind, video_kind, volume_kind  # noqa: E402, F401
