"""Learning-rate schedules as pure functions of the stage's batch count: exact across resumes by construction."""

from __future__ import annotations

import math
from collections.abc import Callable

from aetune.config import OptimizerConfig


def lr_at(batch: int, peak: float, total: int, opt: OptimizerConfig) -> float:
    """The learning rate for the optimizer step taken after ``batch`` batches of the stage (0-based).

    ``constant``: ``peak`` after the warm-up. ``cosine``: linear warm-up from 0 over ``warmup_batches``, then
    cosine from ``peak`` down to ``min_lr_ratio * peak`` at the stage's last batch (RAE: 1 warm-up epoch,
    2e-4 -> 2e-5). The warm-up applies to both.

    Args:
        batch: batches trained in this stage before this step (the counter every schedule follows); with
            ``count: updates``, only those in which the phase ran (``ScheduleClock``).
        peak: the phase's learning rate.
        total: batches the stage trains in all.
        opt: the phase's optimiser settings.
    """
    warm = opt.warmup_batches
    if warm > 0 and batch < warm:
        return peak * (batch + 1) / warm
    if opt.schedule == "constant":
        return peak
    span = max(1, total - warm - 1)
    progress = min(1.0, max(0.0, (batch - warm) / span))
    floor = peak * opt.min_lr_ratio
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


class ScheduleClock:
    """What ``lr_at`` counts for one phase: the stage's batches, or (``count: updates``) the batches before this one
    in which the phase ran, as the released RAE's discriminator scheduler, stepped on D updates only.

    A pure function of the batch number and the recipe's ``phase_active`` (exact across resumes); kept
    incrementally so a step costs O(1), recounted from 0 when asked for an earlier batch.

    Args:
        count: ``OptimizerConfig.count``.
        active: ``batch -> whether the phase ran at that batch`` (the recipe's ``phase_active`` for the phase).
    """

    def __init__(self, count: str, active: Callable[[int], bool]) -> None:
        self.count, self.active = count, active
        self._upto = self._ran = 0  # the phase ran in ``_ran`` of the batches 0 .. _upto - 1

    def __call__(self, batch: int) -> int:
        """The schedule position of the step taken after stage batch ``batch`` (0-based)."""
        if self.count == "batches":
            return batch
        if batch < self._upto:
            self._upto = self._ran = 0
        for b in range(self._upto, batch):
            self._ran += bool(self.active(b))
        self._upto = batch
        return self._ran
