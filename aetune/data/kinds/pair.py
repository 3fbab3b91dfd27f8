"""The ``pair`` data kind: LQ/GT pairs of step 3's paired split as uint8 tensors for the restoration recipe.

Items are ``(LQ uint8 (3, S, S), GT uint8 (3, S, S), label)``, the label being the degradation type's. Both
sides are decoded and resized once into RAM (``aetune.data.cache.decode_images``, bicubic to S x S whatever
their stored sizes, which is also what ``--pair_resize`` relies on). The file cache of the image kind is
keyed by one file per item, so ``data.cache: file`` is served from RAM too, and said so once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from aetune.data.cache import decode_images
from aetune.data.kinds.registry import register_data_kind
from aetune.data.paired import PairedData, load_paired
from aetune.data.prepared import PreparedData

log = logging.getLogger(__name__)


class PairedImages(Dataset):
    """Items of two aligned uint8 arrays (N, S, S, 3): ``(lq (3, S, S), gt (3, S, S), label)``."""

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


def _prepare(prepared: PreparedData, split: str, size: int, work_dir: Path, progress: bool) -> None:
    """Nothing to build ahead: pairs are decoded into RAM by each process."""


def _dataset(prepared: PreparedData, split: str, size: int, cache: str, work_dir: Path, progress: bool) -> Dataset:
    if cache == "file":
        log.info("pair data: decoded into RAM (data.cache: file applies to single images only)")
    data = prepared if isinstance(prepared, PairedData) else load_paired(work_dir, prepared.data_root)
    samples = data.train if split == "train" else data.val if split == "val" else data.train + data.val
    lq = decode_images([data.lq_path(s) for s in samples], size, desc=f"decoding {split} LQ", progress=progress)
    gt = decode_images([data.gt_path(s) for s in samples], size, desc=f"decoding {split} GT", progress=progress)
    return PairedImages(lq, gt, [s.label for s in samples])


register_data_kind("pair", _prepare, _dataset)
