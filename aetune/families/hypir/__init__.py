"""HYPIR: one-step restoration with a LoRA-tuned SD2.1 UNet between the frozen SD2 VAE's encoder and decoder.

Matches XPixelGroup/HYPIR (``HYPIR/trainer/sd2.py``, ``enhancer/sd2.py``); trained through ``--task restoration``
(presets ``hypir``, ``hypir_demo``). See docs/hypir.md.
"""

from aetune.config import register_modules
from aetune.families.hypir import options, weights  # noqa: F401  (config sections, weight files)

register_modules("hypir", f"{__name__}.model", f"{__name__}.loading", f"{__name__}.recipe", f"{__name__}.export")
