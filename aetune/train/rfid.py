"""rFID during training: Inception pool features of originals and reconstructions, accumulated over batches.

The features (2048-d, ``aetune.metrics.InceptionFeatureExtractor``, the network step 5 uses) are kept on
the CPU in float64 and scored with ``aetune.metrics.rfid``, so a training-time rFID and step 5's agree for
the same images and weights. Under DDP each rank holds its own images' features; ``compute(all_gather)``
collects every rank's, so every rank returns the same number (same decisions on every rank).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from aetune.metrics import InceptionFeatureExtractor, rfid
from aetune.setup.hub import WeightCorrupt, WeightsUnavailable

log = logging.getLogger(__name__)

AllGather = Callable[[Tensor], Tensor]
"""A collective gather, e.g. ``trainer.strategy.all_gather``: a (n, ...) tensor on this rank -> (W, n, ...)
from all W ranks (DDP, FSDP), or the tensor itself unchanged (a single-device strategy)."""

RANDOM_WEIGHTS_NOTE = "random Inception weights (test/demo): the value is not FID, compare it only within this run"


class FIDTracker:
    """Accumulates Inception features of real and reconstructed images; ``compute`` returns the rFID.

    Args:
        features: (B, 3, H, W) in [0, 1] -> (B, D) features; an :class:`InceptionFeatureExtractor` (D = 2048)
            or a stand-in in tests.
        device: where ``features`` runs (and where ``compute`` places tensors for a collective gather:
            NCCL gathers CUDA tensors only). Inputs of ``update`` are moved there.
        note: a fact every result carries (e.g. random Inception weights), or None.
    """

    def __init__(
        self, features: Callable[[Tensor], Tensor], device: torch.device | str = "cpu", note: str | None = None
    ) -> None:
        self.features, self.device, self.note = features, torch.device(device), note
        self._real: list[Tensor] = []
        self._fake: list[Tensor] = []

    @property
    def images(self) -> int:
        """Image pairs accumulated on this rank since the last ``reset``."""
        return sum(len(r) for r in self._real)

    @torch.no_grad()
    def update(self, real: Tensor, fake: Tensor) -> None:
        """Add one batch of originals and their reconstructions.

        Args:
            real, fake: (B, 3, H, W) in [0, 1] (callers clamp reconstructions), on any device.
        """
        if real.shape != fake.shape or real.ndim != 4 or real.shape[1] != 3:
            raise ValueError(
                f"expected two (B, 3, H, W) tensors of one shape, got {tuple(real.shape)}, {tuple(fake.shape)}"
            )
        # fp32 as in step 5: under a mixed-precision Trainer the convolutions would otherwise run in fp16/bf16
        with torch.autocast(self.device.type, enabled=False):
            for images, store in ((real, self._real), (fake, self._fake)):
                store.append(self.features(images.to(self.device)).detach().to("cpu", torch.float64))  # (B, D)

    def reset(self) -> None:
        """Forget every accumulated feature (call before each rFID pass)."""
        self._real, self._fake = [], []

    def _local(self, store: list[Tensor]) -> Tensor:
        """(n, D) float64 features of this rank; (0, 0) when it saw no image."""
        return torch.cat(store) if store else torch.zeros(0, 0, dtype=torch.float64)

    def _gathered(self, local: Tensor, all_gather: AllGather) -> Tensor:
        """Concatenate every rank's (n_r, D) features in rank order; ranks may hold different n_r (even 0).

        A collective gather needs one shape on every rank, so the shapes are gathered first and each rank
        pads its features to the largest count; the padding is cut off again after the gather.
        """
        shape = torch.tensor([[len(local), local.shape[1]]], dtype=torch.int64, device=self.device)
        shapes = all_gather(shape).reshape(-1, 2)  # (W, 1, 2) -> (W, 2); (1, 2) on a single device
        counts = shapes[:, 0].tolist()
        dim = int(shapes[:, 1].max())  # a rank without images has D = 0: take the others' D
        padded = torch.zeros(max(counts), dim, dtype=torch.float64, device=self.device)
        if len(local):
            padded[: len(local)] = local.to(self.device)
        out = all_gather(padded).to("cpu")
        if out.ndim == padded.ndim:  # a single-device strategy returns the tensor itself
            out = out.unsqueeze(0)
        return torch.cat([out[r, :n] for r, n in enumerate(counts)])

    def compute(self, all_gather: AllGather | None = None) -> dict[str, Any]:
        """rFID of everything accumulated (over all ranks when ``all_gather`` is given).

        Args:
            all_gather: ``trainer.strategy.all_gather`` under DDP/FSDP (a collective: call ``compute`` on every
                rank, with every rank's ``update`` calls done); None scores this process's features only.

        Returns:
            ``{"rfid": float | None, "rfid_images": N, "rfid_note": str | None}``: None when fewer than 2
            images or non-finite features (the note says which); the note also says when N < 2048 (a
            rank-deficient covariance: values are comparable only at the same N) and when the Inception
            weights are random.
        """
        real, fake = self._local(self._real), self._local(self._fake)
        if all_gather is not None:
            real, fake = self._gathered(real, all_gather), self._gathered(fake, all_gather)
        n = len(real)
        notes = [self.note] if self.note else []
        value = None
        if n < 2:
            notes.append(f"rFID needs at least 2 images, got {n}")
        elif not (torch.isfinite(real).all() and torch.isfinite(fake).all()):
            notes.append(f"non-finite Inception features among the {n} images (a diverged reconstruction?)")
        else:
            value = rfid(real.numpy(), fake.numpy())
            if n < real.shape[1]:  # D = FID_FEATURE_DIM for the Inception network
                notes.append(
                    f"{n} images < {real.shape[1]} feature dimensions: covariance is rank-deficient, "
                    f"compare values only at the same N"
                )
        return {"rfid": value, "rfid_images": n, "rfid_note": "; ".join(notes) or None}


def build_fid_tracker(
    weights_path: str | Path | None, random_weights: bool, device: torch.device | str
) -> tuple[FIDTracker | None, str | None]:
    """The rFID tracker with the FID Inception network on ``device``, or None and a one-line note why not.

    Args:
        weights_path: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (step 2 records it as
            ``fid_inception``: ``aetune.setup.hub.recorded_weight(work_dir, "fid_inception")``); None looks in the
            torch hub cache, as step 5 does.
        random_weights: random Inception weights (tests and the offline demo only; every result says so).
        device: where the network runs.

    Returns:
        ``(tracker, None)``, or ``(None, note)`` when the weights file is missing or corrupt: training goes
        on without rFID, never crashes for it.
    """
    try:
        extractor = InceptionFeatureExtractor(weights_path, random_weights=random_weights).to(device)
    except (WeightsUnavailable, WeightCorrupt) as e:
        note = f"rFID is off for this run: {e}"
        log.warning("%s", note)
        return None, note
    return FIDTracker(extractor, device, RANDOM_WEIGHTS_NOTE if random_weights else None), None
