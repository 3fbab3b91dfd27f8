"""The autoencoder API every family implements: the base class, outputs, the registry and weight loading.

The families themselves live in ``aetune/families``; each registers its model here when first looked up.
"""

from aetune.models.base import Autoencoder, FamilyConfig, ModelConfigError
from aetune.models.loading import CheckpointError, LoadReport, load_weights, read_state_dict, register_loader
from aetune.models.outputs import DecoderOutput, DiagonalGaussian, EncoderOutput
from aetune.models.registry import Family, create_autoencoder, get_family, list_families, register_family

__all__ = [
    "Autoencoder",
    "CheckpointError",
    "DecoderOutput",
    "DiagonalGaussian",
    "EncoderOutput",
    "Family",
    "FamilyConfig",
    "LoadReport",
    "ModelConfigError",
    "create_autoencoder",
    "get_family",
    "list_families",
    "load_weights",
    "read_state_dict",
    "register_family",
    "register_loader",
]
