"""LDM KL-VAE (``kl``) and VA-VAE (``vavae``): LightningDiT's f16d32 tokenizer and its loaders."""

from aetune.config import register_modules
from aetune.families.vavae import options, weights  # noqa: F401  (config sections, weight files)

_MODULES = (f"{__name__}.kl", f"{__name__}.model", f"{__name__}.loading", f"{__name__}.recipe")

for _name in ("kl", "vavae"):
    register_modules(_name, *_MODULES)
