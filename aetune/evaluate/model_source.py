"""Which autoencoder step 5 measures: a trained checkpoint, or the released model before any training.

``--checkpoint pretrained`` is the first branch of the seed's decision tree ("test the pretrained VA-VAE"):
the released weights step 2 recorded in ``models/manifest.json``, measured on the user's images with the
same report, so its PSNR decides whether (and how deeply) to fine-tune.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from aetune.config import Config, family_schema, schema_families
from aetune.data.prepared import PreparedData
from aetune.errors import AetuneError
from aetune.evaluate.evaluator import check_labels
from aetune.models import Autoencoder, create_autoencoder
from aetune.models.checkpoint import load_autoencoder_checkpoint
from aetune.models.loading import load_weights
from aetune.setup.hub import resolve_weight
from aetune.train.plan import RunState

log = logging.getLogger(__name__)

PRETRAINED = "pretrained"
"""The ``--checkpoint`` value naming the released model."""


def find_checkpoint(arg: str | None, work_dir: Path) -> Path:
    """``--checkpoint`` as given or relative to the work directory; else the newest final model.

    Raises:
        AetuneError: the file is not found, or no final model exists.
    """
    if arg:
        for candidate in (Path(arg).expanduser(), work_dir / arg):
            if candidate.is_file():
                return candidate.resolve()
        raise AetuneError(f"--checkpoint {arg} not found (looked in the current folder and in {work_dir})")
    finals = sorted((work_dir / "checkpoints").glob("*_final.pt"), key=lambda f: f.stat().st_mtime)
    if not finals:
        raise AetuneError(
            f"no *_final.pt in {work_dir / 'checkpoints'}: run step 4 first, or pass --checkpoint "
            f"(--checkpoint {PRETRAINED} measures the released model)"
        )
    return finals[-1]


def load_released(work_dir: Path, cfg: Config, prepared: PreparedData) -> tuple[Autoencoder, dict[str, Any], Path]:
    """The released model of ``cfg.model.family`` (with ``cfg.model.args``) from the weights step 2 recorded.

    Returns:
        (model in eval mode, metadata shaped like ``load_autoencoder_checkpoint``'s with ``stage`` and
        ``kind`` = ``"pretrained"``, the weights file).

    Raises:
        AetuneError: the family has no released model, step 2 has not recorded it, or the file does not
            fit the architecture.
    """
    family = cfg.model.family
    released = family_schema(family).released
    if not released:
        with_release = [f for f in schema_families() if family_schema(f).released]
        raise AetuneError(
            f"family '{family}' has no released model registered (only {', '.join(with_release)}): "
            "pass a trained --checkpoint"
        )
    path = resolve_weight(work_dir, released[0])
    model = create_autoencoder(family, **cfg.model.args)
    log.info("%s", load_weights(model, path).summary())
    meta = {
        "family": family,
        "model_config": model.config,
        "config": cfg.to_dict(),
        "labels": dict(prepared.labels),
        "dataset": prepared.name,
        "stage": PRETRAINED,
        "random_teacher": False,  # trained by its authors with the real teacher and LPIPS
        "lpips": True,
        "kind": PRETRAINED,
    }
    return model.eval(), meta, path


def load_model(
    checkpoint: str | None, config: Config | None, work_dir: Path, prepared: PreparedData
) -> tuple[Autoencoder, dict[str, Any], Path]:
    """The model step 5 reports on: ``--checkpoint pretrained`` (built from ``config``), else a trained file.

    Args:
        checkpoint: ``--checkpoint`` (None: the newest final model).
        config: from ``--config`` / ``--set``; only for ``pretrained`` (a trained file carries its own).
        work_dir: the work directory.
        prepared: step 3's dataset (its users must be the checkpoint's).

    Raises:
        AetuneError: one line (see ``find_checkpoint``, ``load_released``, ``load_autoencoder_checkpoint``).
    """
    if checkpoint == PRETRAINED:
        return load_released(work_dir, config or Config(), prepared)
    if config is not None:
        raise AetuneError(
            f"--config and --set apply only to --checkpoint {PRETRAINED}: a trained checkpoint carries its config"
        )
    ckpt = find_checkpoint(checkpoint, work_dir)
    run_state = RunState.load(work_dir)  # a checkpoint of another family than this run's is refused
    model, meta = load_autoencoder_checkpoint(ckpt, family=run_state.family if run_state else None)
    check_labels(meta, prepared.labels, ckpt)
    return model, meta, ckpt
