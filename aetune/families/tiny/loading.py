"""Loading madebyollin's released tiny autoencoders and diffusers' ``AutoencoderTiny`` strictly.

Every layout is mapped onto this project's keys (``encoder.<k>.*``, ``decoder.<k>.*``, the indices of
``taesd.TAESD`` / ``taehv.TAEHV``), in ``to_aetune_keys`` only:

- released TAESD halves (``taesd_encoder.pth`` / ``taesd_decoder.pth``, ``taef1_*``, ``taesd3_*``, and the
  ``.safetensors`` copies): bare ``nn.Sequential`` keys. The encoder's start at ``0.`` (its first conv),
  the decoder's at ``1.`` (index 0 is the parameter-free Clamp); they get ``encoder.`` / ``decoder.``.
- diffusers ``AutoencoderTiny`` (``diffusion_pytorch_model.safetensors``): ``encoder.layers.<k>`` is
  ``encoder.<k>``; its decoder applies the clamp outside ``layers``, so ``decoder.layers.<k>`` is
  ``decoder.<k+1>``.
- released TAEHV (``taehv.pth``, ``taew2_1.pth``, ...) and this project's own files: already ``encoder.<k>``
  / ``decoder.<k>``.
A file is never half-used in silence: missing and unexpected keys are an error unless ``allow_partial``,
and shapes that differ (another latent width or factor) are always an error naming both.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from aetune.models.base import Autoencoder
from aetune.models.loading import (
    CheckpointError,
    LoadReport,
    _few,
    compare_strictly,
    guess_family,
    read_state_dict,
    register_loader,
)

log = logging.getLogger(__name__)

DIFFUSERS_KEY = re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.(.+)$")
OURS_KEY = re.compile(r"^(encoder|decoder)\.\d+\.")


def layout_of(state: Mapping[str, Tensor]) -> str:
    """The layout of ``state``: ``diffusers``, ``aetune`` (also the released TAEHV), ``taesd_encoder``,
    ``taesd_decoder`` or ``unknown``."""
    keys = list(state)
    if any(DIFFUSERS_KEY.match(k) for k in keys):
        return "diffusers"
    if keys and all(OURS_KEY.match(k) for k in keys):
        return "aetune"
    if "0.weight" in state:
        return "taesd_encoder"
    if "1.weight" in state and not any(k.startswith("0.") for k in keys):
        return "taesd_decoder"
    return "unknown"


def to_aetune_keys(state: Mapping[str, Tensor], name: str = "<state dict>") -> dict[str, Tensor]:
    """A state dict in any layout of the module docstring, with this project's keys.

    Raises:
        CheckpointError: a layout that is none of them (naming the first keys).
    """
    layout = layout_of(state)
    if layout == "aetune":
        return dict(state)
    if layout == "taesd_encoder":
        return {f"encoder.{k}": v for k, v in state.items()}
    if layout == "taesd_decoder":
        return {f"decoder.{k}": v for k, v in state.items()}
    if layout == "diffusers":
        out = {}
        for k, v in state.items():
            m = DIFFUSERS_KEY.match(k)
            if m is None:
                out[k] = v  # reported as unexpected by the loader
                continue
            part, index, rest = m.group(1), int(m.group(2)), m.group(3)
            out[f"{part}.{index + (part == 'decoder')}.{rest}"] = v  # diffusers' Clamp is outside decoder.layers
        return out
    guess = guess_family(state)
    raise CheckpointError(
        f"{name} is not a tiny-autoencoder state dict (keys start {_few(list(state), 3)})"
        + (f"; it looks like {guess}" if guess else "")
        + ": expected taesd_encoder/decoder.pth, a diffusers AutoencoderTiny, a taehv .pth, or an aetune "
        "taesd/taehv file"
    )


def load_tiny_weights(
    model: Autoencoder, *sources: str | Path | Mapping[str, Tensor], allow_partial: bool = False
) -> LoadReport:
    """Load released or diffusers weights into a ``taesd`` / ``taehv`` model strictly.

    Args:
        model: the model to fill, built with the options the weights were trained with (latent channels,
            downsampling factor, widths).
        *sources: files (``.pth``, ``.safetensors``) or state dicts; for TAESD typically the encoder and
            the decoder file, or one diffusers file. Sources may not give the same key twice.
        allow_partial: accept missing and unexpected keys (e.g. only a released decoder, the encoder to be
            distilled from scratch); they are logged as a warning and listed in the report.

    Returns:
        The ``LoadReport`` (source: the files, joined by ``+``).

    Raises:
        CheckpointError: unreadable or unknown layout, a key given twice, shapes that differ, or missing /
            unexpected keys without ``allow_partial``.
    """
    if not sources:
        raise CheckpointError("load_tiny_weights needs at least one weights file or state dict")
    merged: dict[str, Tensor] = {}
    names = []
    for src in sources:
        state, name = read_state_dict(src)
        names.append(name)
        mapped = to_aetune_keys(state, name)
        twice = sorted(set(mapped) & set(merged))
        if twice:
            raise CheckpointError(f"{name} gives keys another source already gave ({_few(twice)}): pass each half once")
        merged.update(mapped)
    report = compare_strictly(
        model,
        merged,
        " + ".join(names),
        "build the model with the weights' latent_channels, downsample_factor and widths",
        "pass both halves (encoder and decoder), or allow_partial to keep the rest at initialisation"
        + (
            " (the file has taef2's GroupNorm branches: build the model with midblock_gn=True)"
            if any(".pool." in k for k in merged) and not any(".pool." in k for k in model.state_dict())
            else ""
        ),
        allow_partial,
    )
    expected = model.state_dict()
    model.load_state_dict({k: v for k, v in merged.items() if k in expected}, strict=not allow_partial)
    report.loaded = len(merged) - len(report.unexpected)
    if report.missing or report.unexpected:
        log.warning("partial initialisation (allow_partial):\n%s", report.summary())
    return report


register_loader("taesd", load_tiny_weights)
register_loader("taehv", load_tiny_weights)
