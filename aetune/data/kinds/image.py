"""The ``image`` data kind: step 3's split as uint8 images with their labels (file or RAM cache)."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from aetune.data.cache import CachedImages, build_file_cache, load_images
from aetune.data.kinds.registry import register_data_kind
from aetune.data.prepared import PreparedData


def image_dataset(prepared: PreparedData, split: str, size: int, cache: str, work_dir: Path, progress: bool) -> Dataset:
    """Items ``(uint8 image (3, size, size), label)``."""
    images = load_images(prepared, split, size, cache, work_dir, progress)
    return CachedImages(images, [s.label for s in prepared.split(split)])


register_data_kind("image", build_file_cache, image_dataset)
