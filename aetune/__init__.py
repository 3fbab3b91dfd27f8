"""aetune: fine-tune image autoencoders (VA-VAE, KL-VAE, ...) on small datasets and export them for a DiT.

``import aetune`` is cheap (no torch): it registers the built-in families' and tasks' config sections
(``aetune/families``, ``aetune/tasks``), and the model API is imported on first use, so step 1 can report the
environment before torch is known to work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["create_autoencoder", "list_families", "load_encoder", "load_weights"]

from aetune import families, tasks  # noqa: F401  (registers the built-in families and tasks; torch-free)

if TYPE_CHECKING:
    from aetune.evaluate.export import load_encoder
    from aetune.models import create_autoencoder, list_families, load_weights

_LAZY = {
    "create_autoencoder": "aetune.models",
    "list_families": "aetune.models",
    "load_weights": "aetune.models",
    "load_encoder": "aetune.evaluate.export",
}


def __getattr__(name: str) -> Any:
    """PEP 562 lazy exports: ``aetune.create_autoencoder`` imports ``aetune.models`` when first used."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'aetune' has no attribute {name!r}")
