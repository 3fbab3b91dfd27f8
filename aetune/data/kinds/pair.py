"""The ``pair`` data kind: LQ/GT pairs of step 3's paired split as uint8 tensors for the restoration recipe.

Items are ``(LQ uint8 (3, H, W), GT uint8 (3, H, W), label)``, the label being the degradation type's. Both sides
are decoded once into RAM and resized to S x S (S = the stage's ``data.image_size``) with Pillow's bilinear
filter, whatever their stored sizes: the HYPIR fork's validation protocol (torchvision ``Resize((512, 512))`` on
PIL images, bilinear with antialiasing), and what ``--pair_resize`` relies on. The file cache of the image kind is
keyed by one file per item, so ``data.cache: file`` is served from RAM too, and said so once.

The kind API passes only the image size, so the validation options are bound when the restoration recipe is
built (:func:`register_pair_kind`), the same on every rank: ``native_val`` serves validation pairs at their
stored size (the LQ resized to its GT's size if they differ; one size per batch), ``per_type`` keeps the first
``per_type`` validation pairs of each type (the fork's ``num_samples_per_type``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from aetune.data.images import load_rgb
from aetune.data.kinds.registry import register_data_kind
from aetune.data.paired import PairedData, PairSample, load_paired, per_type_subset
from aetune.data.prepared import PreparedData
from aetune.errors import AetuneError

log = logging.getLogger(__name__)

RESAMPLE = Image.Resampling.BILINEAR
"""The fork validates on ``transforms.Resize((512, 512))`` of PIL images: Pillow's bilinear (antialiased)."""


class PairedImages(Dataset):
    """Items of two aligned uint8 arrays (N, H, W, 3): ``(lq (3, H, W), gt (3, H, W), label)``."""

    def __init__(self, lq: np.ndarray, gt: np.ndarray, labels: list[int]) -> None:
        if lq.shape != gt.shape or lq.ndim != 4 or lq.dtype != np.uint8 or gt.dtype != np.uint8:
            raise ValueError(f"LQ and GT must be (N, H, W, 3) uint8 of one shape, got {lq.shape}, {gt.shape}")
        if len(lq) != len(labels):
            raise ValueError(f"{len(lq)} pairs but {len(labels)} labels")
        self.lq, self.gt, self.labels = lq, gt, labels

    def __len__(self) -> int:
        return len(self.lq)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        lq = torch.from_numpy(np.array(self.lq[i])).permute(2, 0, 1)  # copy (H, W, 3) -> (3, H, W)
        gt = torch.from_numpy(np.array(self.gt[i])).permute(2, 0, 1)
        return lq, gt, self.labels[i]


def _resized(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width, 3) uint8 by :data:`RESAMPLE` (unchanged when already that size)."""
    if rgb.shape[:2] == (height, width):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), RESAMPLE))


def _decode_pair(data: PairedData, sample: PairSample, size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(LQ, GT) uint8 (S, S, 3) each, or at the GT's stored size when ``size`` is None."""
    lq_path, gt_path = data.lq_path(sample), data.gt_path(sample)
    try:
        lq, gt = load_rgb(lq_path), load_rgb(gt_path)
    except (OSError, ValueError) as e:
        raise AetuneError(f"cannot decode {lq_path} or {gt_path} ({e}); re-run step 3 to re-scan the dataset") from e
    height, width = (size, size) if size is not None else gt.shape[:2]
    return _resized(lq, width, height), _resized(gt, width, height)


def decode_pairs(
    data: PairedData, samples: Sequence[PairSample], size: int, native: bool, desc: str, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``samples`` into two (N, H, W, 3) uint8 blocks (LQ, GT), on a few threads (Pillow frees the GIL).

    Args:
        size: the square side S (H = W = S).
        native: keep the GTs' stored size instead (their LQ brought to it), which must be one for all: the
            loader batches them.

    Raises:
        AetuneError: a file can no longer be decoded, or native-size pairs of several sizes.
    """
    shape = (size, size)
    if native and samples:
        shape = _decode_pair(data, samples[0], None)[1].shape[:2]
    lq, gt = (np.empty((len(samples), *shape, 3), np.uint8) for _ in range(2))  # written in place: no 2nd copy

    def one(i: int) -> None:
        a, b = _decode_pair(data, samples[i], None if native else size)
        if b.shape[:2] != shape:
            raise AetuneError(
                f"restoration.native_val needs validation pairs of one size, found {shape[1]}x{shape[0]} and "
                f"{b.shape[1]}x{b.shape[0]} ({data.gt_path(samples[i])}): set restoration.native_val false"
            )
        lq[i], gt[i] = a, b

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        jobs = pool.map(one, range(len(samples)))
        list(tqdm(jobs, total=len(samples), desc=desc, leave=False, mininterval=2, disable=not progress))
    return lq, gt


def _prepare(prepared: PreparedData, split: str, size: int, work_dir: Path, progress: bool) -> None:
    """Nothing to build ahead: pairs are decoded into RAM by each process."""


def _dataset(
    prepared: PreparedData, split: str, size: int, cache: str, work_dir: Path, progress: bool, *,
    native_val: bool, per_type: int | None,
) -> Dataset:  # fmt: skip
    if cache == "file":
        log.info("pair data: decoded into RAM (data.cache: file applies to single images only)")
    data = prepared if isinstance(prepared, PairedData) else load_paired(work_dir, prepared.data_root)
    samples = data.train if split == "train" else data.val if split == "val" else data.train + data.val
    if split == "val":
        samples = per_type_subset(samples, per_type)
    native = native_val and split == "val"
    lq, gt = decode_pairs(data, samples, size, native, f"decoding {split} pairs", progress)
    return PairedImages(lq, gt, [s.label for s in samples])


def register_pair_kind(native_val: bool = False, per_type: int | None = None) -> None:
    """(Re-)register ``pair`` with the validation options of a run (the restoration section's)."""
    register_data_kind("pair", _prepare, partial(_dataset, native_val=native_val, per_type=per_type))


register_pair_kind()
