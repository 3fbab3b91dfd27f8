"""Outputs of a frozen network on un-augmented images, computed once and reused across epochs and sessions.

Any family with a frozen network on its input uses this (the VA-VAE teacher; RAE's encoder, a distillation
teacher's latents): ``FeatureCache.build_or_load`` computes the network on every image of a split once and
stores the outputs as float16 in ``<work>/cache/features/<name>.npy``; ``lookup`` returns a batch's rows by
the images' content. The cache is keyed by

- each image's content (:func:`fingerprint`, a 64-bit hash of the uint8 pixels, computed on the device
  from the batch itself: no change to what datasets yield),
- the network's weights (:func:`weights_hash`),
- the input settings (a dict the caller gives: image size, grid, normalisation, ...),

and rebuilt, with a warning naming what changed, when any of them differs. With augmentation the network's
input changes every epoch: callers must not use a cache then (``data.hflip``). Under DDP, rank 0 builds while
the others wait at a barrier; every rank then memory-maps the same file.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from aetune.data.cache import CACHE_SUBDIR
from aetune.io import atomic_path, atomic_write_json, read_json

log = logging.getLogger(__name__)

FEATURES_SUBDIR = "features"
_MIX = 0x9E3779B97F4A7C15 - 2**64  # odd 64-bit constants (as int64) for the position weights of the hash
_ODD = 0xBF58476D1CE4E5B9 - 2**64


def fingerprint(images: Tensor) -> Tensor:
    """A 64-bit content hash per image: uint8 (B, C, H, W) on any device -> int64 (B,), same on CPU and CUDA.

    ``sum_i p_i * w_i`` (wrapping int64 arithmetic) with odd pseudo-random weights per position ``i``, computed
    in the logical (C, H, W) order, so the memory format does not matter.
    """
    if images.dtype != torch.uint8 or images.ndim < 2:
        raise ValueError(f"fingerprint takes uint8 (B, ...) images, got {images.dtype} {tuple(images.shape)}")
    flat = images.reshape(images.shape[0], -1).long()  # (B, N) in logical order
    pos = torch.arange(1, flat.shape[1] + 1, device=images.device, dtype=torch.long)
    weights = (pos * _MIX) ^ (pos * _ODD >> 17) | 1  # odd: every pixel change moves the hash
    return (flat * weights).sum(dim=1) + flat.shape[1]


def weights_hash(module: nn.Module) -> str:
    """SHA-1 (12 hex) of a module's parameters and buffers, names, shapes and values."""
    h = hashlib.sha1()
    for name, t in sorted(module.state_dict().items()):
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:12]


def to_uint8(x: Tensor) -> Tensor:
    """Model-range images in [-1, 1] (exactly ``u / 127.5 - 1`` of uint8 ``u``) -> the uint8 ``u``."""
    return ((x.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


class FeatureCache:
    """Features of a frozen network for a fixed set of images, looked up by image content.

    Args:
        features: (N, ...) float16 array (memory-mapped file or in RAM).
        fingerprints: (N,) int64 content hashes of the images, row by row.
    """

    def __init__(self, features: np.ndarray, fingerprints: np.ndarray) -> None:
        if len(features) != len(fingerprints):
            raise ValueError(f"{len(features)} feature rows but {len(fingerprints)} fingerprints")
        self.features = features
        self.rows = {int(f): i for i, f in enumerate(fingerprints)}
        self.pin = torch.cuda.is_available()

    def __len__(self) -> int:
        return len(self.rows)

    def lookup(self, images: Tensor, keys: Tensor | None = None) -> Tensor | None:
        """The cached features of uint8 ``images`` (B, C, H, W) as float32 on their device; None if any is missing.

        ``keys``: the images' fingerprints, taken on the host before the batch moved (no device read here);
        without them the hashes are computed on the images' device and read back (one sync). The rows travel
        host-to-device from pinned memory, non-blocking.
        """
        keys = (fingerprint(images) if keys is None else keys).tolist()
        rows = [self.rows.get(k) for k in keys]
        if any(r is None for r in rows):
            return None
        out = torch.from_numpy(np.stack([self.features[r] for r in rows]))
        if images.is_cuda and self.pin:
            out = out.pin_memory()
        return out.to(images.device, non_blocking=True).float()

    @classmethod
    def build_or_load(
        cls,
        work_dir: Path,
        name: str,
        network: nn.Module,
        settings: dict[str, Any],
        images: np.ndarray,
        compute: Callable[[Tensor], Tensor],
        batch_size: int = 16,
        device: torch.device | str = "cpu",
        progress: bool = True,
    ) -> FeatureCache:
        """The cache of ``compute`` on ``images``: loaded when its key matches, else (re)built on rank 0.

        Args:
            work_dir: the work directory (files under ``cache/features/``).
            name: the file stem (e.g. ``teacher_train``).
            network: the frozen network (its weights are part of the key).
            settings: what else decides the output (image size, grid, normalisation, ...): JSON values.
            images: (N, H, W, 3) uint8 (``aetune.data.cache`` arrays).
            compute: uint8 (B, 3, H, W) on ``device`` -> (B, ...) features.
            batch_size: images per ``compute`` call while building.

        Returns:
            The cache, its features memory-mapped.
        """
        folder = Path(work_dir) / CACHE_SUBDIR / FEATURES_SUBDIR
        path, meta_path = folder / f"{name}.npy", folder / f"{name}.json"
        prints = np.concatenate(
            [fingerprint(torch.from_numpy(np.ascontiguousarray(images[i : i + 256])).permute(0, 3, 1, 2)).numpy()
             for i in range(0, len(images), 256)]
        ) if len(images) else np.zeros(0, dtype=np.int64)  # fmt: skip
        if len(set(prints.tolist())) != len(prints):
            log.warning("feature cache %s: some images are identical (same content hash); they share a row", name)
        key = {
            "images": hashlib.sha1(prints.tobytes()).hexdigest()[:12],
            "count": len(prints),
            "weights": weights_hash(network),
            "settings": settings,
        }
        dist = torch.distributed
        ddp = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not ddp or dist.get_rank() == 0:
            old = read_json(meta_path) if meta_path.is_file() and path.is_file() else None
            if old is None or old.get("key") != key:
                if old is not None:
                    changed = [k for k in key if old.get("key", {}).get(k) != key[k]]
                    log.warning("feature cache %s is stale (%s changed): rebuilding it", path, ", ".join(changed))
                _build(path, meta_path, key, prints, images, compute, batch_size, torch.device(device), progress)
        if ddp:
            dist.barrier()  # every rank reads the file rank 0 has finished
        return cls(np.load(path, mmap_mode="r"), prints)


def _build(
    path: Path,
    meta_path: Path,
    key: dict[str, Any],
    prints: np.ndarray,
    images: np.ndarray,
    compute: Callable[[Tensor], Tensor],
    batch_size: int,
    device: torch.device,
    progress: bool,
) -> None:
    """Compute and write the features (atomically, the array before its key)."""
    t0 = time.perf_counter()
    rows: list[np.ndarray] = []
    with torch.no_grad():
        for i in tqdm(
            range(0, len(images), batch_size), desc=f"caching {path.stem}", leave=False, disable=not progress
        ):
            batch = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).permute(0, 3, 1, 2)
            rows.append(compute(batch.to(device)).to(torch.float16).cpu().numpy())
    features = np.concatenate(rows)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, features)
    atomic_write_json(meta_path, {"key": key, "shape": list(features.shape), "dtype": "float16"})
    seconds = time.perf_counter() - t0
    log.warning(
        "built feature cache %s: %d images in %.1f s (%.1f ms/image), %.0f MiB float16",
        path, len(images), seconds, 1000 * seconds / max(len(images), 1), features.nbytes / 2**20,
    )  # fmt: skip
