"""RAE: a frozen foundation encoder (DINOv2, SigLIP2, MAE) and a trained ViT decoder (bytetriper/RAE)."""

from aetune.config import register_modules
from aetune.families.rae import options, weights  # noqa: F401  (config sections, weight files)

register_modules("rae", f"{__name__}.model", f"{__name__}.loading", f"{__name__}.recipe")
