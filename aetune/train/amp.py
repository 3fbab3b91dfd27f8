"""fp16 loss scaling for two optimizers that share one accumulation window (generator and discriminator).

Lightning's ``MixedPrecision`` updates its ``GradScaler`` after every optimizer step. With a generator and a
discriminator whose losses were both scaled with the same factor before either step, updating after the
generator's step changes the factor the discriminator's gradients are then unscaled with: after each scale
change the discriminator steps with gradients off by a power of two (or is skipped for a non-existent
overflow). PyTorch's AMP recipe for several optimizers is one ``scaler.update()`` per iteration, after all of
them stepped; this plugin leaves the update to the module, which calls :func:`update_scaler` when it closes
the window.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.plugins.precision import MixedPrecision
from pytorch_lightning.plugins.precision.amp import _optimizer_handles_unscaling


class WindowMixedPrecision(MixedPrecision):
    """``MixedPrecision`` whose ``optimizer_step`` unscales and steps but does not update the scale."""

    def optimizer_step(  # type: ignore[override]
        self, optimizer: Any, model: pl.LightningModule, closure: Callable[[], Any], **kwargs: Any
    ) -> Any:
        if self.scaler is None:  # bf16: nothing to scale
            return super().optimizer_step(optimizer, model=model, closure=closure, **kwargs)
        closure()
        if not _optimizer_handles_unscaling(optimizer):
            self.scaler.unscale_(optimizer)  # clipping and the grad-norm logs see true gradients
        self._after_closure(model, optimizer)
        return self.scaler.step(optimizer, **kwargs)  # skipped by the scaler itself on inf/NaN gradients


def update_scaler(trainer: pl.Trainer) -> None:
    """Update the fp16 loss scale once, after every optimizer of the window stepped (no-op otherwise)."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if scaler is not None:
        scaler.update()
