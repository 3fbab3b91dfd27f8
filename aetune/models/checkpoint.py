"""Step 4's model files (stage checkpoints and ``<family>_<dataset>_final.pt``): reading them, rebuilding the model.

``*_final.pt`` (format ``aetune.autoencoder/1``) holds tensors and plain Python only, so it loads with
``torch.load(path, weights_only=True)``::

    {"format": "aetune.autoencoder/1", "family": str, "model_config": dict (create_autoencoder kwargs),
     "state_dict": autoencoder weights (incl. linear_proj for vavae), "discriminator_state_dict": ...,
     "config": Config.to_dict(), "labels": {user: label}, "dataset": str, "stage": str,
     "random_teacher": bool, "lpips": bool}

A stage checkpoint (``last.ckpt``, ``best-*.ckpt``) is a Lightning checkpoint whose ``state_dict`` has
``autoencoder.*`` and ``discriminator.*`` keys and whose ``aetune`` entry holds the same metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from aetune.config import RECONSTRUCTION
from aetune.errors import AetuneError
from aetune.models.base import Autoencoder
from aetune.models.registry import create_autoencoder
from aetune.safe_load import load_torch_file

FINAL_FORMAT = "aetune.autoencoder/1"


def run_name(family: str, task: str = RECONSTRUCTION, sep: str = "_") -> str:
    """What a run is called: the family, and the task unless it is the default.

    ``vavae`` for a VA-VAE reconstruction run; ``kl_restoration`` (``sep="_"``, file names) or
    ``kl restoration`` (``sep=" "``, messages and figure titles) for the restoration task on a KL-VAE.
    """
    return family if task == RECONSTRUCTION else f"{family}{sep}{task}"


META_KEYS = ("family", "model_config", "config", "labels", "dataset", "stage", "random_teacher", "lpips")
"""Metadata every model file carries (``load_autoencoder_checkpoint`` returns it)."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint without running pickled code (``aetune.safe_load``), errors as one line naming it.

    Raises:
        AetuneError: missing, empty, truncated, text or corrupt file, or one that needs pickle.
    """
    p = Path(path)
    obj = load_torch_file(p, fix="not a readable checkpoint, use another one")
    if not isinstance(obj, dict):
        raise AetuneError(f"{p} holds a {type(obj).__name__}, not an aetune checkpoint")
    return obj


def split_stage_checkpoint(ckpt: dict[str, Any], source: str) -> tuple[dict[str, Tensor], dict[str, Tensor], dict]:
    """A Lightning stage checkpoint -> (autoencoder state dict, discriminator state dict, metadata)."""
    if "aetune" not in ckpt or "state_dict" not in ckpt:
        raise AetuneError(
            f"{source} is not an aetune checkpoint (no 'aetune' metadata); released weights go to --pretrained_path"
        )
    state = ckpt["state_dict"]
    # With EMA on, the averaged weights are the model (validated, chosen as best, exported) once they hold an
    # update; before that (a stage shorter than train.ema.start_batch) the live weights are.
    averaged = "ema.n_averaged" in state and int(state["ema.n_averaged"]) > 0
    prefix = "ema.module." if averaged else "autoencoder."
    ae = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    d = {k.removeprefix("discriminator."): v for k, v in state.items() if k.startswith("discriminator.")}
    return ae, d, ckpt["aetune"]


def _checked_load(model: Autoencoder, state: dict[str, Tensor], source: str) -> None:
    """Strict load with a one-line error naming the first mismatching key."""
    ours = model.state_dict()
    missing = [k for k in ours if k not in state]
    extra = [k for k in state if k not in ours]
    wrong = [k for k in ours if k in state and state[k].shape != ours[k].shape]
    if missing or extra or wrong:
        first = (missing or extra or wrong)[0]
        raise AetuneError(
            f"{source} does not fit a {model.family} model with its own config: {len(missing)} missing, {len(extra)} "
            f"unexpected, {len(wrong)} mis-shaped tensors (first: {first}); the file is corrupt or was edited"
        )
    model.load_state_dict(state, strict=True)


def load_autoencoder_checkpoint(path: str | Path, family: str | None = None) -> tuple[Autoencoder, dict[str, Any]]:
    """Rebuild the autoencoder from a stage checkpoint (``last.ckpt``, ``best-*.ckpt``) or a ``*_final.pt``.

    Args:
        path: the file.
        family: the family expected (None: any).

    Returns:
        (autoencoder in eval mode on CPU, metadata: ``family``, ``model_config``, ``config`` (a
        ``Config.to_dict()``), ``labels``, ``dataset``, ``stage``, ``random_teacher``, ``lpips``, and
        ``kind`` = ``final`` or ``stage``, plus ``batches_seen`` for stage checkpoints).

    Raises:
        AetuneError: one line: unreadable file, not an aetune file, another family, weights that do not fit.
    """
    obj = read_checkpoint(path)
    if "format" in obj:
        if obj["format"] != FINAL_FORMAT:
            raise AetuneError(f"{path} has format {obj['format']!r}; this aetune reads {FINAL_FORMAT!r}")
        state, meta = obj["state_dict"], {k: obj[k] for k in META_KEYS} | {"kind": "final"}
    else:
        state, _, full = split_stage_checkpoint(obj, str(path))
        meta = {k: full[k] for k in META_KEYS} | {"kind": "stage", "batches_seen": full["batches_seen"]}
    if family is not None and meta["family"] != family:
        raise AetuneError(f"{path} holds a '{meta['family']}' autoencoder, not '{family}': pick the {family} file")
    model = create_autoencoder(meta["family"], **meta["model_config"])
    _checked_load(model, state, str(path))
    return model.eval(), meta
