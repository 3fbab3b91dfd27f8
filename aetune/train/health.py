"""The early health gate: one validation PSNR, early in a stage, against the preset's bar.

A run whose reconstructions are still poor after ~1,000 batches rarely recovers by training longer; the
usual causes are a reconstruction term outweighed by the others or a learning rate far off. The gate
checks once (``HealthGate``), names those causes ranked from the run's own numbers (``health_check``),
and its result goes into ``validation_history.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

from pytorch_lightning.utilities.rank_zero import rank_zero_only

log = logging.getLogger(__name__)

RECONSTRUCTION_KEYS = ("rec", "l1", "l2", "mse", "pixel", "charbonnier")
"""Fragments of a loss-weight name that mark the pixel reconstruction term. Without one, its weight is 1 (the
VA-VAE and KL objectives add their other terms to an unweighted reconstruction nll)."""

COMPETING_TERMS = (
    ("KL", ("kl",), 1e-4),
    ("adversarial", ("disc", "gan", "adv"), 0.1),
    ("perceptual (LPIPS)", ("perceptual", "lpips"), 0.5),
    ("distillation", ("distill", "teacher"), 0.1),
    ("alignment", ("vf", "align", "distmat", "cos", "repa"), 0.1),
)
"""(kind, name fragments, weight / reconstruction weight from which the term can hold PSNR down). The KL is
summed over every latent element, so it competes from ~1e-4 (VA-VAE uses 1e-6); LPIPS trades PSNR for
texture from about half the pixel weight; the GAN, teacher and alignment terms from a tenth."""
OTHER_TERM_RATIO = 0.1
"""The same threshold for a weight whose name matches no kind above."""

LR_HIGH, LR_LOW = 5e-4, 1e-6
"""Fine-tuning learning rates outside [1e-6, 5e-4] (usual: 1e-5 pretrained ... 2e-4 a fresh RAE decoder)."""


def loss_weights(options: Any) -> dict[str, float]:
    """The ``*_weight`` numbers of a family's loss options dataclass (booleans and other fields left out)."""
    return {
        f.name: float(getattr(options, f.name))
        for f in dataclasses.fields(options)
        if f.name.endswith("_weight")
        and isinstance(getattr(options, f.name), int | float)
        and not isinstance(getattr(options, f.name), bool)
    }


def _kind(name: str) -> tuple[str, float] | None:
    """(kind, threshold) of a competing weight, or None for the reconstruction weight."""
    low = name.lower()
    if any(k in low for k in RECONSTRUCTION_KEYS):
        return None
    for kind, fragments, ratio in COMPETING_TERMS:
        if any(f in low for f in fragments):
            return kind, ratio
    return name.removesuffix("_weight"), OTHER_TERM_RATIO


def health_check(psnr: float, batches: int, bar: float, lr: float, weights: dict[str, float]) -> str | None:
    """A one-line loud warning naming the likely causes when ``psnr`` is under ``bar`` (or not finite), else None.

    Causes are ranked: a learning rate outside [LR_LOW, LR_HIGH] first (the most common cause of a bad
    start), then every competing loss weight whose ratio to the reconstruction weight reaches its kind's
    threshold (``COMPETING_TERMS``), largest ratio / threshold first.

    Args:
        psnr: validation PSNR in dB (nan or inf from a diverged run fails the check).
        batches: batches of the stage trained when it was measured.
        bar: the preset's minimum PSNR in dB.
        lr: the generator's (peak) learning rate.
        weights: loss weight name -> value, e.g. ``loss_weights(cfg.loss)`` (``{"kl_weight": 1e-6, ...}``);
            a name holding ``rec``/``l1``/``l2``/``mse``/``pixel`` is the reconstruction weight (1 if none).
    """
    if math.isfinite(psnr) and psnr >= bar:
        return None
    rec = [v for k, v in weights.items() if _kind(k) is None]
    rec_weight = sum(rec) if rec else 1.0
    causes: list[str] = []
    if lr > LR_HIGH:
        causes.append(f"the learning rate {lr:g} is high for fine-tuning (usual 1e-5 to 2e-4): lower it")
    elif lr < LR_LOW:
        causes.append(f"the learning rate {lr:g} is too low to move the weights in {batches} batches: raise it")
    ranked = []
    for name, value in weights.items():
        kind = _kind(name)
        if kind is None or value <= 0:
            continue
        ratio = value / rec_weight if rec_weight > 0 else math.inf
        if ratio >= kind[1]:
            ranked.append(
                (ratio / kind[1], f"the {kind[0]} weight {name}={value:g} is {ratio:.3g}x the reconstruction's")
            )
    causes += [text for _, text in sorted(ranked, key=lambda r: -r[0])]
    if rec_weight <= 0:
        causes.insert(0, f"the reconstruction weight is {rec_weight:g}: nothing pulls reconstructions to the input")
    if causes:
        listed = "; ".join(f"({i}) {c}" for i, c in enumerate(causes, 1))
        advice = f"Likely causes, most likely first: {listed}."
    else:
        advice = "No learning rate or loss weight stands out: check the start weights and the training images."
    return (
        f"HEALTH CHECK FAILED at batch {batches}: validation PSNR {psnr:.2f} dB is below the preset's bar of "
        f"{bar:.2f} dB (train.health_min_psnr), so this run is unlikely to reach a useful quality. {advice} "
        f"Change them with --set (e.g. --set loss.<name>=<value>) and restart the stage."
    )


@rank_zero_only
def _announce(warning: str) -> None:
    log.warning("%s", warning)


class HealthGate:
    """Checks the first validation at or after ``at_batch`` once per stage, across resumes.

    Args:
        at_batch: batches of the stage after which the next validation is checked (``train.health_batch``).
        bar: minimum validation PSNR in dB (``train.health_min_psnr``); None = no gate.
        lr: the generator's (peak) learning rate, for the warning.
        weights: the loss weights, for the warning (``loss_weights(cfg.loss)``).
    """

    def __init__(self, at_batch: int, bar: float | None, *, lr: float, weights: dict[str, float]) -> None:
        self.at_batch, self.bar, self.lr, self.weights = at_batch, bar, lr, dict(weights)
        self.result: dict[str, Any] | None = None

    def observe(self, batches: int, record: dict[str, Any]) -> dict[str, Any] | None:
        """Check this validation if it is the gate's; the result (to store in the history) or None.

        Args:
            batches: batches of the stage trained so far.
            record: the validation's metrics, with ``psnr`` in dB (``ValidationRecorder``'s record).

        Returns:
            ``{"batches", "psnr", "bar", "passed", "warning"}`` the first time a validation at or after
            ``at_batch`` is seen (the warning is also logged on rank 0; None when passed), else None.
        """
        if self.bar is None or self.result is not None or batches < self.at_batch:
            return None
        if "psnr" not in record:
            raise ValueError(f"the health gate needs the validation's psnr; the record has {sorted(record)}")
        psnr = float(record["psnr"])
        warning = health_check(psnr, batches, self.bar, self.lr, self.weights)
        self.result = {"batches": batches, "psnr": psnr, "bar": self.bar, "passed": warning is None, "warning": warning}
        if warning is not None:
            _announce(warning)
        return self.result

    def state_dict(self) -> dict[str, Any]:
        return {"result": self.result}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.result = state_dict["result"]
