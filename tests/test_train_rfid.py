"""rFID tracker of training: accumulation, the small-N note, DDP gathering, and the builder's missing weights."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits
from torch import Tensor

from aetune import metrics
from aetune.train.rfid import RANDOM_WEIGHTS_NOTE, FIDTracker, build_fid_tracker


@pytest.fixture(autouse=True)
def one_blas_thread() -> None:
    """2048 x 2048 eigendecompositions on 2 shared CI cores: multi-threaded OpenBLAS thrashes there (10x slower)."""
    with threadpool_limits(1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def inception_tracker() -> FIDTracker:
    torch.manual_seed(0)
    tracker, note = build_fid_tracker(None, random_weights=True, device="cpu")
    assert note is None and tracker is not None
    return tracker


def images(seed: int, n: int = 3, size: int = 32) -> Tensor:
    """(n, 3, size, size) random images in [0, 1]."""
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


PROJECTION = torch.randn(48, 8, generator=torch.Generator().manual_seed(7))


def pooled_features(x: Tensor) -> Tensor:
    """A cheap stand-in feature network: (B, 3, H, W) -> (B, 8)."""
    return F.adaptive_avg_pool2d(x, 4).flatten(1) @ PROJECTION  # (B, 3*4*4) -> (B, 8)


def test_identical_sets_score_zero_and_different_sets_do_not(inception_tracker: FIDTracker) -> None:
    tracker = inception_tracker
    tracker.reset()
    real = images(1)
    tracker.update(real, real.clone())
    same = tracker.compute()
    feats = tracker.features(real).double().numpy()  # (3, 2048)
    scale = float(np.trace(np.cov(feats, rowvar=False)))  # the size of a typical distance between feature sets
    assert same["rfid_images"] == 3
    # not 1e-12: with 3 images, ~2045 eigenvalues of S1 S2 are float64 round-off, and their square roots add up
    assert abs(same["rfid"]) < 1e-5 * scale
    assert "3 images < 2048 feature dimensions" in same["rfid_note"]
    assert RANDOM_WEIGHTS_NOTE in same["rfid_note"]

    tracker.reset()
    tracker.update(real, (real * 0.5 + 0.25 * images(9)).clamp(0, 1))  # pulled towards other noise
    diff = tracker.compute()
    assert diff["rfid_images"] == 3 and diff["rfid"] > 0.01 * scale


def test_accumulating_batches_equals_scoring_all_images_at_once() -> None:
    tracker = FIDTracker(pooled_features)
    real, fake = [images(1, n=5), images(2, n=5)], [images(3, n=5), images(4, n=5)]  # 10 images > D = 8
    for x, y in zip(real, fake, strict=True):
        tracker.update(x, y)
    expected = metrics.rfid(pooled_features(torch.cat(real)), pooled_features(torch.cat(fake)))
    assert expected > 0
    assert tracker.compute() == {"rfid": pytest.approx(expected, rel=1e-12), "rfid_images": 10, "rfid_note": None}


def test_too_few_and_non_finite_images_give_no_value_and_say_why() -> None:
    tracker = FIDTracker(pooled_features)
    assert tracker.compute() == {"rfid": None, "rfid_images": 0, "rfid_note": "rFID needs at least 2 images, got 0"}
    tracker.update(images(1, n=1), images(2, n=1))
    assert tracker.compute()["rfid"] is None
    bad = images(3)
    bad[0, 0, 0, 0] = float("nan")
    tracker.update(images(4), bad)
    result = tracker.compute()
    assert result["rfid"] is None and result["rfid_images"] == 4 and "non-finite" in result["rfid_note"]
    tracker.reset()
    assert tracker.images == 0


def test_mismatched_batches_are_refused() -> None:
    with pytest.raises(ValueError, match="one shape"):
        FIDTracker(pooled_features).update(images(1, n=2), images(2, n=3))


class ThreadWorld:
    """W threads standing in for W ranks: ``gather(rank)`` behaves as ``DDPStrategy.all_gather`` ((W, ...))."""

    def __init__(self, world: int) -> None:
        self.slots: list[Tensor | None] = [None] * world
        self.barrier = threading.Barrier(world, timeout=30)

    def gather(self, rank: int):
        def all_gather(t: Tensor) -> Tensor:
            self.slots[rank] = t.clone()
            self.barrier.wait()  # every rank has put its tensor
            if len({s.shape for s in self.slots}) != 1:  # as torch.distributed.all_gather requires
                raise RuntimeError(f"all_gather of unequal shapes {[tuple(s.shape) for s in self.slots]}")
            out = torch.stack(self.slots)
            self.barrier.wait()  # every rank has read before the next call overwrites
            return out

        return all_gather


def test_ddp_gather_scores_every_ranks_images_once_on_every_rank() -> None:
    batches = {0: [images(1), images(2)], 1: [images(3, n=2)], 2: []}  # unequal counts, one rank without images
    world = ThreadWorld(len(batches))
    results: dict[int, dict] = {}

    def rank_main(rank: int) -> None:
        tracker = FIDTracker(pooled_features)
        for x in batches[rank]:
            tracker.update(x, (x + 0.1 * images(rank + 10, n=len(x))).clamp(0, 1))
        results[rank] = tracker.compute(world.gather(rank))

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    single = FIDTracker(pooled_features)  # the same pairs, in rank order, in one process
    for rank, xs in batches.items():
        for x in xs:
            single.update(x, (x + 0.1 * images(rank + 10, n=len(x))).clamp(0, 1))
    expected = single.compute()
    assert expected["rfid_images"] == 8 and expected["rfid"] > 0
    for rank in batches:
        assert results[rank]["rfid_images"] == 8
        assert results[rank]["rfid"] == pytest.approx(expected["rfid"], rel=1e-12)


def test_single_device_gather_returns_the_tensor_itself() -> None:
    tracker = FIDTracker(pooled_features)
    tracker.update(images(1, n=4), images(2, n=4))
    assert tracker.compute(lambda t: t) == tracker.compute()  # SingleDeviceStrategy.all_gather


@pytest.mark.parametrize("content", [None, b"not a checkpoint", b""])
def test_missing_or_corrupt_weights_turn_rfid_off_with_a_note(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / metrics.FID_WEIGHTS_FILE
    if content is not None:
        path.write_bytes(content)
    tracker, note = build_fid_tracker(str(path), random_weights=False, device="cpu")
    assert tracker is None
    assert note.startswith("rFID is off for this run:") and "--only fid_inception" in note and "\n" not in note
