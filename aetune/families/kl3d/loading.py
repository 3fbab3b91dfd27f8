"""Loading MONAI ``AutoencoderKL`` weights into ``kl3d`` strictly (MONAI's key names are the model's)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from aetune.families.kl3d.model import KL3DAutoencoder
from aetune.models.loading import (
    CheckpointError,
    LoadReport,
    _few,
    compare_strictly,
    guess_family,
    read_state_dict,
    register_loader,
)


def load_kl3d_weights(model: KL3DAutoencoder, path_or_state_dict: str | Path | Mapping[str, Tensor]) -> LoadReport:
    """Load MONAI ``AutoencoderKL`` weights (``torch.save(autoencoder.state_dict())``, MONAI's key names) strictly.

    Args:
        model: the ``kl3d`` model, built with the options the weights were trained with.
        path_or_state_dict: a weights file (``.pt``, ``.pth``, ``.safetensors``; never unpickled code; a Lightning
            checkpoint is unwrapped to its ``state_dict``) or a state dict.

    Returns:
        The ``LoadReport``.

    Raises:
        CheckpointError: one line naming the file: unreadable, the weights of another family (named when the keys
            tell), missing or unexpected keys, or tensors of other shapes (other ``channels``/``latent_channels``).
    """
    state, source = read_state_dict(path_or_state_dict)
    if not any(k.startswith("quant_conv_mu.") for k in state):
        guess = guess_family(state)
        raise CheckpointError(
            f"{source} is not a MONAI 3-D AutoencoderKL state dict (no quant_conv_mu.* keys; keys start "
            f"{_few(list(state), 3)})" + (f"; it looks like {guess}" if guess else "") + ": --pretrained_path for "
            "kl3d takes MONAI AutoencoderKL weights, torch.save(autoencoder.state_dict(), path)"
        )
    report = compare_strictly(
        model,
        state,
        source,
        "build the model with the weights' channels and latent_channels",
        "build the model with the weights' options (attention_levels, num_res_blocks, with_*_nonlocal_attn)",
    )
    model.load_state_dict(dict(state), strict=True)
    report.loaded = len(state)
    return report


register_loader("kl3d", load_kl3d_weights)
