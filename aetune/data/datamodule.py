"""The training and validation loaders of step 4: cached uint8 images in a resumable, rank-aware order.

The training order is one stream of items: data epoch ``e``'s permutation (seeded by ``seed + e``) followed by
epoch ``e + 1``'s, and so on. After the stage has trained ``n`` images (all ranks together), the next step reads
the stream from position ``n``, and DDP rank ``r`` of ``W`` takes the ``r``-th of ``W`` consecutive slices of the
step. A run resumed after ``n`` images (from ``last.ckpt``) therefore sees exactly the images an uninterrupted
run would, without Lightning's mid-epoch loader state, also on another number of devices: every image is seen
once per epoch whatever the step size (a step that crosses an epoch's end takes the next epoch's first items).
A dataset whose items are drawn anew each epoch (``keyed_by_epoch``: random clips and crops) is indexed by
``(index, seed, epoch)`` instead, so its draws follow the same stream in every worker and on every rank.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from aetune.data.kinds import get_data_kind
from aetune.data.prepared import PreparedData
from aetune.errors import AetuneError


def batches_per_epoch(num_items: int, batch_size: int, world_size: int) -> int:
    """Batches each rank trains per data epoch (an incomplete last batch is dropped).

    Raises:
        AetuneError: not even one batch.
    """
    n = num_items // (batch_size * world_size)
    if n == 0:
        raise AetuneError(
            f"the training split has {num_items} images, fewer than one batch of {batch_size} x {world_size} "
            "device(s): lower --batch_size or add images"
        )
    return n


class StageBatchSampler(Sampler[list[Any]]):
    """Batches of indices for one pass, starting where the stage's image counter says (see the module docstring).

    Each ``iter()`` yields steps from stream position ``position()`` until the step that reaches the end of that
    data epoch; Lightning calls ``iter()`` once per (its) epoch, after all earlier batches were trained, so
    ``position()`` is exact.

    Args:
        num_items: size of the training split.
        batch_size: images per batch and rank.
        seed: seeds the per-epoch permutations.
        position: the images the stage has trained, all ranks together (restored from checkpoints).
        rank, world_size: this process's DDP rank and the number of ranks.
        keyed: yield ``(index, seed, epoch)`` keys instead of indices (a ``keyed_by_epoch`` dataset).
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int,
        position: Callable[[], int],
        rank: int = 0,
        world_size: int = 1,
        keyed: bool = False,
    ) -> None:
        self.batches_per_epoch = batches_per_epoch(num_items, batch_size, world_size)
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.position, self.rank, self.world_size, self.keyed = position, rank, world_size, keyed

    def __len__(self) -> int:
        return self.batches_per_epoch

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The permutation of data epoch ``epoch``: (num_items,) int64."""
        return torch.randperm(self.num_items, generator=torch.Generator().manual_seed(self.seed + epoch))

    def items(self, start: int, count: int) -> list[Any]:
        """The ``count`` items at stream positions ``start``, ``start + 1``, ... (across epoch boundaries)."""
        out: list[Any] = []
        epoch, offset = divmod(start, self.num_items)
        while len(out) < count:
            order = self.epoch_order(epoch)[offset : offset + count - len(out)].tolist()
            out += [(i, self.seed, epoch) for i in order] if self.keyed else order
            epoch, offset = epoch + 1, 0
        return out

    def __iter__(self) -> Iterator[list[Any]]:
        position = self.position()
        step = self.batch_size * self.world_size
        end = (position // self.num_items + 1) * self.num_items  # this pass ends with the epoch it starts in
        while position < end:
            yield self.items(position + self.rank * self.batch_size, self.batch_size)
            position += step


class ImageDataModule(pl.LightningDataModule):
    """Train/val loaders over the cached images of step 3's split.

    Args:
        prepared: what step 3 wrote (``load_prepared``).
        work_dir: the work directory (file cache under ``cache/``).
        image_size: side length images are resized to.
        batch_size: images per batch and device.
        num_workers: loader worker processes (0: in the main process).
        cache: ``ram`` or ``file`` (see ``aetune.data.cache``).
        seed: seeds the training order (see the module docstring).
        position: the images the stage has trained (the LightningModule's ``images_seen``).
        progress: show decoding progress bars.
        kind: the data kind the recipe consumes (``aetune.data.kinds``).
    """

    def __init__(
        self,
        prepared: PreparedData,
        work_dir: Path,
        image_size: int,
        batch_size: int,
        num_workers: int,
        cache: str,
        seed: int,
        position: Callable[[], int],
        progress: bool = True,
        kind: str = "image",
    ) -> None:
        super().__init__()
        if not prepared.val:
            raise AetuneError("the validation split is empty: re-run step 3 with a larger --val_ratio")
        self.prepared, self.work_dir, self.image_size = prepared, Path(work_dir), image_size
        self.batch_size, self.num_workers, self.cache = batch_size, num_workers, cache
        self.seed, self.position, self.progress = seed, position, progress
        self.kind = get_data_kind(kind)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def prepare_data(self) -> None:
        """Build the file caches once (Lightning calls this on local rank 0 only, before ``setup``)."""
        if self.cache == "file":
            for split in ("train", "val"):
                self.kind.prepare(self.prepared, split, self.image_size, self.work_dir, self.progress)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self._dataset("train")
            self.val_set = self._dataset("val")

    def _dataset(self, split: str) -> Dataset:
        show = self.progress and (self.trainer is None or self.trainer.is_global_zero)
        return self.kind.dataset(self.prepared, split, self.image_size, self.cache, self.work_dir, show)

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "setup() runs before the loaders"
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        keyed = getattr(self.train_set, "keyed_by_epoch", False)
        sampler = StageBatchSampler(len(self.train_set), self.batch_size, self.seed, self.position, rank, world, keyed)
        return DataLoader(
            self.train_set,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        """The whole validation split on every rank, in order (every rank reports the same numbers)."""
        assert self.val_set is not None, "setup() runs before the loaders"
        return DataLoader(
            self.val_set,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
        )
