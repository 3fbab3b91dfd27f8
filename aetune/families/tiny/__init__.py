"""Tiny autoencoders distilled from a teacher: ``taesd`` (images) and ``taehv`` (video), madebyollin's layouts."""

from aetune.config import register_modules
from aetune.families.tiny import options, weights  # noqa: F401  (config sections, weight files)

_MODULES = (f"{__name__}.taesd", f"{__name__}.taehv", f"{__name__}.loading", f"{__name__}.recipe", f"{__name__}.export")

for _name in ("taesd", "taehv"):
    register_modules(_name, *_MODULES)
