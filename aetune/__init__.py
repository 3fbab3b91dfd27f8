"""aetune: fine-tune image autoencoders (VA-VAE, KL-VAE, ...) on small datasets and export them for a DiT.

``import aetune`` is cheap (no torch): the model API is imported on first use, so step 1 can report the
environment before torch is known to work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["create_autoencoder", "list_families", "load_weights"]

if TYPE_CHECKING:
    from aetune.models import create_autoencoder, list_families, load_weights


def __getattr__(name: str) -> Any:
    """PEP 562 lazy exports: ``aetune.create_autoencoder`` imports ``aetune.models`` when first used."""
    if name in __all__:
        import aetune.models

        return getattr(aetune.models, name)
    raise AttributeError(f"module 'aetune' has no attribute {name!r}")
