"""Autoencoder families, their discriminator and frozen teachers, and strict weight loading.

Importing this package registers the built-in families.
"""

# Importing a family's module registers it; MONAI (kl3d) and transformers (rae) load only when a model is built.
from aetune.models import kl, kl3d, rae, taehv, taesd, vavae  # noqa: F401
from aetune.models.base import Autoencoder, FamilyConfig, ModelConfigError
from aetune.models.discriminator import NLayerDiscriminator
from aetune.models.foundation import NORMALIZATIONS, FrozenTeacher
from aetune.models.kl import KLAutoencoder, KLConfig
from aetune.models.loading import (
    CheckpointError,
    LoadReport,
    lightningdit_state_dict,
    load_weights,
    read_state_dict,
)
from aetune.models.outputs import DecoderOutput, DiagonalGaussian, EncoderOutput
from aetune.models.registry import Family, create_autoencoder, get_family, list_families, register_family
from aetune.models.vavae import VAVAE, VAVAEConfig

__all__ = [
    "NORMALIZATIONS",
    "VAVAE",
    "Autoencoder",
    "CheckpointError",
    "DecoderOutput",
    "DiagonalGaussian",
    "EncoderOutput",
    "Family",
    "FamilyConfig",
    "FrozenTeacher",
    "KLAutoencoder",
    "KLConfig",
    "LoadReport",
    "ModelConfigError",
    "NLayerDiscriminator",
    "VAVAEConfig",
    "create_autoencoder",
    "get_family",
    "lightningdit_state_dict",
    "list_families",
    "load_weights",
    "read_state_dict",
    "register_family",
]
