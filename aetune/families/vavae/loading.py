"""LightningDiT's checkpoint layout for ``kl`` and ``vavae``: strict loading and writing it back.

The released VA-VAE is a full Lightning checkpoint (``{"state_dict": ...}``, ~2.15 GB) whose keys are
``encoder.*``, ``decoder.*``, ``quant_conv.*``, ``post_quant_conv.*``, ``linear_proj.weight``,
``loss.discriminator.*``, ``loss.logvar``, ``loss.perceptual_loss.*`` (LPIPS) and ``foundation_model.*``
(DINOv2). LightningDiT itself loads it with ``strict=False`` inside a bare ``try/except``, so a wrong file
silently trains from scratch; here every key is accounted for: loaded, skipped for a stated reason, or an
error.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from aetune.models.base import Autoencoder
from aetune.models.loading import (
    DISCRIMINATOR_PREFIX,
    LOGVAR_KEY,
    SKIPPED_PREFIXES,
    CheckpointError,
    LoadReport,
    _few,
    describe_checkpoint,
    describe_model,
    read_state_dict,
    register_lightningdit_writer,
    register_loader,
)
from aetune.nn.patchgan import NLayerDiscriminator

log = logging.getLogger(__name__)


def load_lightningdit_weights(
    model: Autoencoder,
    path_or_state_dict: str | Path | Mapping[str, Tensor],
    discriminator: NLayerDiscriminator | None = None,
    allow_partial: bool = False,
    source: str | None = None,
) -> LoadReport:
    """Load LightningDiT-layout weights (the released checkpoint, or a plain state dict) strictly.

    Args:
        model: the autoencoder to fill (``encoder.*``, ``decoder.*``, ``quant_conv.*``,
            ``post_quant_conv.*``, and ``linear_proj.weight`` for ``vavae``).
        path_or_state_dict: a weights file (see ``read_state_dict``) or a state dict.
        discriminator: receives ``loss.discriminator.*``; if None those keys are skipped.
        allow_partial: accept missing and unexpected keys (explicit partial initialisation, e.g. a
            ``vavae`` from a ``kl`` checkpoint); the report is then logged as a warning. Shape
            mismatches are errors regardless.
        source: the file a plain mapping came from, for messages (a ``StateDict`` knows its own).

    Returns:
        The ``LoadReport``.

    Raises:
        CheckpointError: one line naming the file and the model, when shapes differ (wrong size or
            family), when keys are missing or unexpected without ``allow_partial``, when ``loss.logvar``
            is non-zero, or when the file cannot be read safely.
    """
    state, source = read_state_dict(path_or_state_dict, source)
    report = LoadReport(source=source)
    targets = {"": model.state_dict()}
    if discriminator is not None:
        targets[DISCRIMINATOR_PREFIX] = discriminator.state_dict()
    found: dict[str, dict[str, Tensor]] = {prefix: {} for prefix in targets}
    for key, tensor in state.items():
        if key.startswith(tuple(SKIPPED_PREFIXES)) or (key.startswith(DISCRIMINATOR_PREFIX) and discriminator is None):
            report.skipped.append(key)
        elif key == LOGVAR_KEY:
            if tensor.float().abs().max().item() != 0.0:
                raise CheckpointError(
                    f"{source} has {LOGVAR_KEY}={tensor.float().flatten()[0].item():g}; the objective assumes the "
                    "released value 0 (a fixed unit-variance nll)"
                )
            report.skipped.append(key)
        else:
            prefix = DISCRIMINATOR_PREFIX if key.startswith(DISCRIMINATOR_PREFIX) else ""
            name = key[len(prefix) :]
            if name in targets[prefix]:
                found[prefix][name] = tensor
            else:
                report.unexpected.append(key)
    for prefix, expected in targets.items():
        report.missing += [prefix + k for k in expected if k not in found[prefix]]
        bad = [
            (prefix + k, t.shape, expected[k].shape) for k, t in found[prefix].items() if t.shape != expected[k].shape
        ]
        if bad:
            key, theirs, ours = bad[0]
            raise CheckpointError(
                f"{source} ({describe_checkpoint(state)}) does not fit the model ({describe_model(model)}): {key} is "
                f"{list(theirs)} there and {list(ours)} here ({len(bad)} tensors differ); build the model with the "
                "checkpoint's options"
            )
    if (report.missing or report.unexpected) and not allow_partial:
        raise CheckpointError(
            f"{source} ({describe_checkpoint(state)}) does not match the model ({describe_model(model)}): "
            f"missing {_few(report.missing)}; unexpected {_few(report.unexpected)}; use the matching family and "
            "options, or pass allow_partial to initialise the rest randomly"
        )
    modules: dict[str, nn.Module] = {"": model, DISCRIMINATOR_PREFIX: discriminator}
    for prefix, tensors in found.items():
        modules[prefix].load_state_dict(tensors, strict=not allow_partial)
        report.loaded += len(tensors)
    if report.missing or report.unexpected:
        log.warning("partial initialisation (allow_partial):\n%s", report.summary())
    return report


def lightningdit_state_dict(model: Autoencoder, discriminator: NLayerDiscriminator | None = None) -> dict[str, Tensor]:
    """The model (and discriminator) in the released checkpoint's layout, loadable by LightningDiT.

    Adds ``loss.logvar`` = 0 and ``loss.discriminator.*``; leaves out the teacher and LPIPS (which
    LightningDiT rebuilds from their own weights). For the full-size ``vavae`` with a default
    discriminator these are exactly the 366 keys of the released model.
    """
    state = {k: v.detach() for k, v in model.state_dict().items()}
    state[LOGVAR_KEY] = torch.zeros(())
    if discriminator is not None:
        state.update({DISCRIMINATOR_PREFIX + k: v.detach() for k, v in discriminator.state_dict().items()})
    return state


for _family in ("kl", "vavae"):
    register_loader(_family, load_lightningdit_weights)
    register_lightningdit_writer(_family, lightningdit_state_dict)
