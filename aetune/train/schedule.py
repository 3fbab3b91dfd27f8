"""Learning-rate schedules as pure functions of the stage's batch count: exact across resumes by construction."""

from __future__ import annotations

import math

from aetune.config import OptimizerConfig


def lr_at(batch: int, peak: float, total: int, opt: OptimizerConfig) -> float:
    """The learning rate for the optimizer step taken after ``batch`` batches of the stage (0-based).

    ``constant``: ``peak`` after the warm-up. ``cosine``: linear warm-up from 0 over ``warmup_batches``, then
    cosine from ``peak`` down to ``min_lr_ratio * peak`` at the stage's last batch (RAE: 1 warm-up epoch,
    2e-4 -> 2e-5). The warm-up applies to both.

    Args:
        batch: batches trained in this stage before this step (the counter every schedule follows).
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
