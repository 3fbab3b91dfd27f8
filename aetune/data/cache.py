"""Decoded images held as one uint8 array, so no epoch after the first decodes a PNG again.

Every image of a split is decoded and resized once (``load_rgb_resized``) into an (N, S, S, 3) uint8
array: in RAM (``data.cache: ram``) or in a ``.npy`` file of the work directory (``data.cache: file``),
memory-mapped afterwards, so DDP ranks and a re-run share one decode. A file cache is keyed by the
image list and size; a different list or size rebuilds it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from aetune.data.images import load_rgb_resized
from aetune.data.prepared import PreparedData, Sample
from aetune.errors import AetuneError
from aetune.io import atomic_path, atomic_write_json, read_json

log = logging.getLogger(__name__)


def to_model_range(images: Tensor) -> Tensor:
    """Cached uint8 (B, 3, H, W) in [0, 255] -> float32 in [-1, 1], the autoencoders' input range."""
    return images.float() / 127.5 - 1.0


CACHE_MODES = ("ram", "file")
CACHE_SUBDIR = "cache"


def open_cached_array(f: Path, what: str) -> np.ndarray:
    """A cache file (``.npy``) memory-mapped; one error line naming it when it is damaged.

    Args:
        what: what the cache holds, in words (``video``, ``volume``): the message says it is rebuilt from those.
    """
    try:
        return np.load(f, mmap_mode="r")
    except (OSError, ValueError, EOFError) as e:
        raise AetuneError(
            f"cached {what} {f} is damaged ({str(e).splitlines()[0] if str(e) else type(e).__name__}): delete "
            f"{f.parent} and re-run (it is rebuilt from the {what}s)"
        ) from e


def decode_images(paths: list[Path], size: int, desc: str = "decoding", progress: bool = True) -> np.ndarray:
    """Decode and resize ``paths`` -> (N, size, size, 3) uint8, on a few threads (Pillow frees the GIL).

    Raises:
        AetuneError: an image that step 3 accepted can no longer be read (naming it).
    """
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)

    def one(i: int) -> None:
        try:
            out[i] = load_rgb_resized(paths[i], size)
        except (OSError, ValueError) as e:
            raise AetuneError(f"cannot decode {paths[i]} ({e}); re-run step 3 to re-scan the dataset") from e

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        jobs = pool.map(one, range(len(paths)))
        list(tqdm(jobs, total=len(paths), desc=desc, leave=False, mininterval=2, disable=not progress))
    return out


def cache_key(samples: list[Sample], size: int) -> str:
    """Short hash of the image list and size: a file cache is valid only for exactly these."""
    h = hashlib.sha1(f"{size}\n".encode())
    for s in samples:
        h.update(s.relpath.encode("utf-8") + b"\n")
    return h.hexdigest()[:12]


def cache_file(work_dir: Path, split: str, size: int) -> Path:
    """``<work>/cache/<split>_<size>px.npy`` (its key lies beside it in ``.json``)."""
    return Path(work_dir) / CACHE_SUBDIR / f"{split}_{size}px.npy"


def build_file_cache(prepared: PreparedData, split: str, size: int, work_dir: Path, progress: bool = True) -> Path:
    """Write the ``split`` cache file unless a valid one exists; return its path.

    The array is written atomically before its key, so a crash leaves either no valid cache or an old
    one whose key no longer matches (rebuilt on the next run).
    """
    samples = prepared.split(split)
    path = cache_file(work_dir, split, size)
    meta_path = path.with_suffix(".json")
    key = cache_key(samples, size)
    if path.is_file() and meta_path.is_file() and read_json(meta_path).get("key") == key:
        return path
    paths = [prepared.path(s) for s in samples]
    images = decode_images(paths, size, desc=f"caching {split} ({size} px)", progress=progress)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, images)
    atomic_write_json(meta_path, {"key": key, "count": len(samples), "size": size, "split": split})
    log.info("cached %d %s images (%d px, %.0f MB) in %s", len(samples), split, size, images.nbytes / 2**20, path)
    return path


def load_images(
    prepared: PreparedData, split: str, size: int, mode: str, work_dir: Path, progress: bool = True
) -> np.ndarray:
    """The ``split`` images as (N, size, size, 3) uint8: decoded now (``ram``) or from the file cache.

    Raises:
        AetuneError: unknown mode, or a file cache that does not match the split (``prepare_data`` of
            the data module builds it first).
    """
    if mode not in CACHE_MODES:
        raise AetuneError(f"data.cache must be one of {', '.join(CACHE_MODES)}, got '{mode}'")
    samples = prepared.split(split)
    if mode == "ram":
        paths = [prepared.path(s) for s in samples]
        return decode_images(paths, size, desc=f"decoding {split} ({size} px)", progress=progress)
    path = cache_file(work_dir, split, size)
    meta_path = path.with_suffix(".json")
    if not (path.is_file() and meta_path.is_file() and read_json(meta_path).get("key") == cache_key(samples, size)):
        raise AetuneError(f"{path} is missing or stale: delete it and re-run (it is rebuilt from the images)")
    return np.load(path, mmap_mode="r")


class CachedImages(Dataset):
    """Items of a uint8 image array: ``(image (3, S, S) uint8, label)``.

    Images stay uint8 until they reach the device (a quarter of the float32 transfer); the LightningModule
    maps them to [-1, 1].
    """

    def __init__(self, images: np.ndarray, labels: list[int]) -> None:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img = torch.from_numpy(np.array(self.images[i])).permute(2, 0, 1)  # copy (H, W, 3) -> (3, H, W)
        return img, self.labels[i]
