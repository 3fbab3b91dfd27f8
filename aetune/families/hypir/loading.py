"""Loading HYPIR LoRA weights strictly: a released or exported ``state_dict.pth``, or an aetune hypir model file.

HYPIR saves ``{name: tensor}`` of the UNet's trainable parameters with the names ``unet.named_parameters()`` gives
(``down_blocks.0.resnets.0.conv1.lora_A.default.weight``, ...) and loads them with ``strict=False``, asserting the
LoRA keys match (``enhancer/sd2.py``). Here the same check is a one-line error naming the file: every LoRA weight of
the model must be given, nothing else, in the model's shapes (its ``lora_rank`` and ``lora_modules``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from aetune.models.base import Autoencoder
from aetune.models.loading import CheckpointError, LoadReport, compare_strictly, read_state_dict, register_loader

UNET_PREFIX = "unet."


def load_hypir_weights(model: Autoencoder, source: str | Path | Mapping[str, Tensor]) -> LoadReport:
    """Load LoRA weights (HYPIR's names, or the model's own ``unet.``-prefixed ones) into a ``hypir`` model.

    Returns:
        The ``LoadReport`` (every LoRA tensor loaded).

    Raises:
        CheckpointError: an unreadable file, tensors of other shapes (another rank), or missing / unexpected keys
            (other ``lora_modules``, or not a LoRA file at all).
    """
    state, name = read_state_dict(source)
    mapped = {k if k.startswith(UNET_PREFIX) else UNET_PREFIX + k: v for k, v in state.items()}
    report = compare_strictly(
        model,
        mapped,
        name,
        "build the model with the file's lora_rank",
        "build the model with the file's lora_modules (a HYPIR state_dict.pth holds the UNet's LoRA weights only)",
    )
    model.load_state_dict(mapped, strict=True)
    report.loaded = len(mapped)
    return report


def _checked(model: Autoencoder, *sources: str | Path | Mapping[str, Tensor]) -> LoadReport:
    """``load_weights`` entry: exactly one source (the LoRA file)."""
    if len(sources) != 1:
        raise CheckpointError(f"a hypir model loads one LoRA file (state_dict.pth), got {len(sources)} sources")
    return load_hypir_weights(model, sources[0])


register_loader("hypir", _checked)
