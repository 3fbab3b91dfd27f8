"""fp16 loss scaling for two optimizers that share one accumulation window (generator and discriminator).

Lightning's ``MixedPrecision`` updates its ``GradScaler`` after every optimizer step. With a generator and a
discriminator whose losses were both scaled with the same factor before either step, updating after the
generator's step changes the factor the discriminator's gradients are then unscaled with: after each scale
change the discriminator steps with gradients off by a power of two (or is skipped for a non-existent
overflow). PyTorch's AMP recipe for several optimizers is one ``scaler.update()`` per iteration, after all of
them stepped; this plugin leaves the update to the module, which calls :func:`update_scaler` when it closes
the window.

A window in which a loss was non-finite steps no optimizer (the module's guard), so the scaler recorded no
inf checks and ``GradScaler.update()`` would raise. Under fp16 a non-finite loss is almost always an
overflow, so such a window counts as one: the scale backs off and its growth count restarts, as
``update()`` does after an inf gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
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


def window_scaler(trainer: pl.Trainer) -> torch.amp.GradScaler | None:
    """The fp16 loss scaler of ``trainer``'s precision plugin; None under fp32 / bf16."""
    return getattr(trainer.precision_plugin, "scaler", None)


def update_scaler(trainer: pl.Trainer, stepped: bool = True, overflow: bool = False) -> None:
    """Update the fp16 loss scale once per window, after every optimizer of the window stepped (no-op without fp16).

    Args:
        trainer: the stage's Trainer.
        stepped: an optimizer stepped (through the plugin) in this window, so the scaler recorded inf checks.
        overflow: the window had a non-finite loss: back off as after an overflow, whatever was recorded.
    """
    scaler = window_scaler(trainer)
    if scaler is None or not (stepped or overflow):
        return
    if not overflow:
        scaler.update()
        return
    state = scaler.state_dict()  # one host read, only in a window that overflowed
    state.update(scale=state["scale"] * state["backoff_factor"], _growth_tracker=0)
    if stepped:
        scaler.update(new_scale=state["scale"])  # clears what this window's optimizers recorded
    scaler.load_state_dict(state)  # also before the first scale(): the lazily made scale starts from it


def scaler_state(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The fp16 scaler state a Lightning checkpoint saved with :class:`WindowMixedPrecision` (None without)."""
    state = checkpoint.get(WindowMixedPrecision.__qualname__)
    return state if isinstance(state, dict) and "scale" in state else None
