"""The table printed at the end of each stage (and of each session that stops inside one)."""

from __future__ import annotations

from pathlib import Path

from pytorch_lightning.callbacks import ModelCheckpoint

from aetune.config import Config
from aetune.train.callbacks import HISTORY_FILE, SAMPLES_SUBDIR
from aetune.train.csvlog import METRICS_FILE
from aetune.train.module import AutoencoderModule
from aetune.train.plan import LAST_CKPT
from aetune.train.precision import DevicePlan


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min`` or ``1.52 h``."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.2f} h"


def stage_summary(
    stage: str,
    module: AutoencoderModule,
    best: ModelCheckpoint,
    seconds: float,
    session_batches: int,
    plan: DevicePlan,
    folder: Path,
    cfg: Config,
) -> str:
    """Best PSNR, batches, time, throughput and where the files are, as aligned text lines."""
    monitor = best.monitor or "val/psnr"
    if module.stage_finished:
        early = module.batches_seen < module.total_batches
        status = (
            f"done EARLY at batch {module.batches_seen:,} of {module.total_batches:,}: early stopping saw no "
            f"{monitor} gain; the rest of the planned batches were not trained"
            if early
            else "done"
        )
    else:
        status = "stopped inside the stage (resume with the same command)"
    images = session_batches * cfg.train.batch_size * plan.world_size
    rate = images / seconds if seconds > 0 else 0.0
    score = best.best_model_score
    best_line = f"{float(score):.4g}  ({Path(best.best_model_path).name})" if score is not None else "no validation yet"
    rows = [
        ("status", status),
        (
            "batches",
            f"{module.batches_seen:,} of {module.total_batches:,} (this session {session_batches:,}); "
            f"{module.nonfinite_total} skipped for non-finite values"
            + (
                f"; {module.overflow_total} skipped by the fp16 loss scaler (overflow)"
                if plan.precision == "16-mixed"
                else ""
            ),
        ),
        (f"best {monitor}", best_line),
        (
            "time",
            f"{duration(seconds)} this session, {rate:.1f} images/s incl. validation "
            f"(batch {cfg.train.batch_size} x {plan.world_size} device(s), {plan.precision})",
        ),
        ("files", f"{folder}: {LAST_CKPT}, best-*.ckpt, {METRICS_FILE}, {HISTORY_FILE}, {SAMPLES_SUBDIR}/"),
    ]
    if module.meta["random_teacher"] or not module.meta["lpips"]:
        rows.append(("NOTE", "random teacher / no LPIPS weights: numbers show the pipeline works, not quality"))
    width = max(len(k) for k, _ in rows)
    rule = "-" * 72
    return "\n".join([rule, f"stage {stage}", rule, *(f"{k:<{width}}  {v}" for k, v in rows), rule])
