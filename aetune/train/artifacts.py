"""Step 4's model files: writing ``<family>_<dataset>_final.pt`` and slimming finished stage checkpoints.

The formats, and reading them, are :mod:`aetune.models.checkpoint` (families and step 5 read model files too).
"""

from __future__ import annotations

from pathlib import Path

from aetune.config import RECONSTRUCTION
from aetune.io import atomic_torch_save
from aetune.models.checkpoint import FINAL_FORMAT, META_KEYS, read_checkpoint, run_name, split_stage_checkpoint
from aetune.train.plan import checkpoints_dir


def final_model_path(work_dir: str | Path, family: str, dataset: str, task: str = RECONSTRUCTION) -> Path:
    """``<work>/checkpoints/<family>_<dataset>_final.pt`` (e.g. ``vavae_microdoppler_final.pt``); a task other than
    reconstruction is named too (``kl_restoration_pairs_final.pt``)."""
    return checkpoints_dir(work_dir) / f"{run_name(family, task)}_{dataset}_final.pt"


TRAINING_STATE_KEYS = ("optimizer_states", "lr_schedulers", "loops")
"""What only resuming a stage needs: dropped once the stage is done (most of a ``last.ckpt``'s size)."""


def strip_training_state(path: str | Path) -> int:
    """Rewrite a done stage's ``last.ckpt`` without optimizer states; return the bytes freed (0 if none).

    Later stages start from its weights and step 5 reads its metadata; neither needs Adam's moments, which
    are two thirds of the file (Kaggle keeps 20 GB of output).
    """
    p = Path(path)
    if not p.is_file():
        return 0
    ckpt = read_checkpoint(p)
    if not any(k in ckpt for k in TRAINING_STATE_KEYS):
        return 0
    before = p.stat().st_size
    slim = {k: v for k, v in ckpt.items() if k not in TRAINING_STATE_KEYS}
    atomic_torch_save(slim, p)
    return max(0, before - p.stat().st_size)


def write_final_model(stage_checkpoint: str | Path, out: str | Path) -> Path:
    """Write the final model file (format in the module docstring) from a stage checkpoint, atomically."""
    ae, d, meta = split_stage_checkpoint(read_checkpoint(stage_checkpoint), str(stage_checkpoint))
    final = {"format": FINAL_FORMAT, **{k: meta[k] for k in META_KEYS}, "state_dict": ae, "discriminator_state_dict": d}
    return atomic_torch_save(final, out)
