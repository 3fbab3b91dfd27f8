"""3-D KL autoencoder for volumes (MONAI's ``AutoencoderKL``), its losses and recipe."""

from aetune.config import register_modules
from aetune.families.kl3d import options  # noqa: F401  (registers the config sections)

register_modules("kl3d", f"{__name__}.model", f"{__name__}.loading", f"{__name__}.recipe")
