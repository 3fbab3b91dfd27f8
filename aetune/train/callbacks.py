"""Callbacks of a training stage: its length, the session limit, count-based checkpoints, validation records.

Lightning's own ``every_n_train_steps`` counts optimizer steps (two per batch with G and D, fewer with
accumulation or skipped steps) and its time-based saving is ignored under manual optimisation, so
``last.ckpt`` is saved here every N batches (when no gradients are pending) and whenever training ends (a
window still open then is saved with it), and written atomically (``AtomicCheckpointIO``): a crash
mid-write keeps the previous file.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torchvision.utils import save_image

from aetune.io import atomic_path, atomic_torch_save, atomic_write_json
from aetune.train.health import HealthGate

if TYPE_CHECKING:
    from aetune.train.module import AutoencoderModule

log = logging.getLogger(__name__)

HISTORY_FILE = "validation_history.json"
SAMPLES_SUBDIR = "samples"


def stop_without_validation(trainer: pl.Trainer) -> None:
    """Stop after this batch, skipping the validation Lightning runs when ``should_stop`` is set.

    That validation suits a stage's end, but one at a session limit would add a record (and an early
    stopping count) that an uninterrupted run does not have. The Trainer is discarded after the stage.
    """
    trainer.limit_val_batches = 0
    trainer.should_stop = True


SIGTERM_REASON = "SIGTERM (the notebook was stopped or the session is ending)"
SIGINT_REASON = "Ctrl-C (SIGINT)"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file beside the target, then rename: never a half-written checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_torch_save(checkpoint, path)


class StageLength(Callback):
    """Stop when the stage has trained its planned number of batches (counted across sessions)."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: AutoencoderModule, *args: Any) -> None:
        if pl_module.batches_seen >= pl_module.total_batches:
            trainer.should_stop = True


class SessionLimit(Callback):
    """Stop cleanly before the session ends: after ``max_hours``, after ``max_batches`` batches, or on a SIGTERM.

    Lightning's ``max_time`` is not used: it accumulates time over resumed runs. The deadline and batch limit
    are taken when no gradients are pending (a smaller ``last.ckpt``); a SIGTERM (Lightning sets
    ``trainer.received_sigterm``) or a Ctrl-C (SIGINT, caught here during training) stops after the current
    batch, with a save, as an interruption; a second Ctrl-C stops at once (Lightning's KeyboardInterrupt
    handling, unsaved). Every decision is reduced over DDP ranks.

    Args:
        started: ``time.time()`` when this process started.
        max_hours: hours this session may train; None = no deadline.
        max_batches: batches this session may train; None = no limit.
    """

    def __init__(self, started: float, max_hours: float | None, max_batches: int | None) -> None:
        self.started, self.max_hours, self.max_batches = started, max_hours, max_batches
        self.batches = 0
        self.reason: str | None = None
        self.sigint = False
        self._previous_handler: Any = None

    @property
    def interrupted(self) -> bool:
        """The session ended on a signal (SIGTERM or Ctrl-C), not on a limit."""
        return self.reason in (SIGTERM_REASON, SIGINT_REASON, "another rank's interrupt")

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.sigint:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.sigint = True
        log.warning("Ctrl-C: saving after this batch, then stopping (press Ctrl-C again to stop at once, unsaved)")

    def on_train_start(self, trainer: pl.Trainer, pl_module: AutoencoderModule) -> None:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)

    def teardown(self, trainer: pl.Trainer, pl_module: AutoencoderModule, stage: str) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: AutoencoderModule, *args: Any) -> None:
        self.batches += 1
        sigterm = bool(getattr(trainer, "received_sigterm", False))
        if trainer.strategy.reduce_boolean_decision(sigterm or self.sigint, all=False):
            # No waiting for the window to close: the checkpoint keeps the window, and the kill follows soon.
            self.reason = SIGTERM_REASON if sigterm else SIGINT_REASON if self.sigint else "another rank's interrupt"
            stop_without_validation(trainer)
            return
        if pl_module.window_open or trainer.should_stop:  # the stage is ending anyway, with its validation
            return
        reason = None
        if self.max_hours is not None and time.time() - self.started >= self.max_hours * 3600:
            reason = f"the session deadline (--max_hours {self.max_hours:g})"
        elif self.max_batches is not None and self.batches >= self.max_batches:
            reason = f"the session batch limit (--stop_after_batches {self.max_batches})"
        if trainer.strategy.reduce_boolean_decision(reason is not None, all=False):
            self.reason = reason or "another rank's session limit"
            stop_without_validation(trainer)


class LastCheckpoint(Callback):
    """Save ``last.ckpt`` every ``every_n_batches`` batches and when training ends, then call ``on_saved``.

    Args:
        path: the stage's ``last.ckpt``.
        every_n_batches: batches between saves (count-based; 0 = only at the end).
        on_saved: called on rank 0 after each save (updates ``run_state.json``).
    """

    def __init__(self, path: Path, every_n_batches: int, on_saved: Callable[[AutoencoderModule], None]) -> None:
        self.path, self.every, self.on_saved = Path(path), every_n_batches, on_saved
        self.saved_at = 0

    def save(self, trainer: pl.Trainer, pl_module: AutoencoderModule) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)
        self.saved_at = pl_module.batches_seen
        if trainer.is_global_zero:
            self.on_saved(pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: AutoencoderModule) -> None:
        self.saved_at = pl_module.batches_seen  # a resumed stage counts from where its checkpoint was

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: AutoencoderModule, *args: Any) -> None:
        due = self.every > 0 and pl_module.batches_seen // self.every > self.saved_at // self.every
        if due and not pl_module.window_open and not trainer.should_stop:
            self.save(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: AutoencoderModule) -> None:
        self.save(trainer, pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: AutoencoderModule, exception: BaseException) -> None:
        """Lightning ends a fit after a SIGTERM with ``SIGTERMException`` (past on_train_end): save what was trained."""
        if isinstance(exception, SIGTERMException) and pl_module.batches_seen > self.saved_at:
            self.save(trainer, pl_module)


class ValidationRecorder(Callback):
    """After each validation: append to ``validation_history.json`` and save a reconstruction grid.

    The history lives in the checkpoint (callback state) and the file is rewritten from it, so a resumed
    stage never lists validations its weights did not see. Each record also carries the module's
    ``validation_extras`` (rFID with its image count and note) and, once, the health gate's verdict.

    Args:
        stage_dir: ``checkpoints/stage<N>``.
        notes: facts every record carries (e.g. a random teacher, no LPIPS).
        gate: the early health gate (None: off).
    """

    def __init__(self, stage_dir: Path, notes: dict[str, Any], gate: HealthGate | None = None) -> None:
        self.stage_dir, self.notes, self.gate = Path(stage_dir), notes, gate
        self.history: list[dict[str, Any]] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: AutoencoderModule) -> None:
        if trainer.sanity_checking:
            return
        values = {k.split("/", 1)[1]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        record = {
            "batches": pl_module.batches_seen,
            "optimizer_steps": trainer.global_step,
            **values,
            **pl_module.validation_extras,
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        pl_module.validation_extras = {}
        health = self.gate.observe(pl_module.batches_seen, record) if self.gate is not None else None
        if health is not None:
            record["health"] = health
        self.history.append(record)
        if not trainer.is_global_zero:
            return
        atomic_write_json(self.stage_dir / HISTORY_FILE, {**self.notes, "validations": self.history})
        if pl_module.val_preview is not None:
            originals, recs = pl_module.val_preview
            grid = torch.cat([originals, recs])  # row 1: originals, row 2: reconstructions
            target = self.stage_dir / SAMPLES_SUBDIR / f"val_b{pl_module.batches_seen:07d}.png"
            with atomic_path(target) as tmp:
                save_image(grid, tmp, nrow=len(originals), format="png")

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "gate": self.gate.state_dict() if self.gate is not None else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])
        if self.gate is not None and state_dict.get("gate") is not None:
            self.gate.load_state_dict(state_dict["gate"])
