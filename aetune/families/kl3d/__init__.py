"""3-D KL autoencoder for volumes (MONAI's ``AutoencoderKL``), its losses and recipe."""

from aetune.config import register_modules
from aetune.families.kl3d import options, weights  # noqa: F401  (config sections, weight files)

register_modules("kl3d", f"{__name__}.model", f"{__name__}.loading", f"{__name__}.recipe")
