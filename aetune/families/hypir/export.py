"""Step 5 for ``hypir``: the trained LoRA as HYPIR's enhancer reads it, beside the usual exports.

``results/hypir/state_dict.pth``: ``{name: float32 tensor}`` of the UNet's LoRA parameters named as
``unet.named_parameters()`` names them (HYPIR's ``save_model_hook``), from the EMA weights when the run averaged
(step 5's model). ``results/hypir/hypir_config.json``: what HYPIR's ``test.py`` / ``SD2Enhancer`` takes with it
(``base_model_path``, ``model_t``, ``coeff_t``, ``lora_rank``, ``lora_modules``)::

    SD2Enhancer(base_model_path=..., weight_path="results/hypir/state_dict.pth", lora_modules=..., lora_rank=...,
                model_t=..., coeff_t=..., device="cuda")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from aetune.families.hypir.model import HypirGenerator
from aetune.io import atomic_torch_save, atomic_write_json
from aetune.models import Autoencoder
from aetune.models.registry import register_export

EXPORT_DIR = "hypir"
WEIGHTS_FILE = "state_dict.pth"
CONFIG_FILE = "hypir_config.json"


def export_hypir_lora(
    out: Path, model: Autoencoder, meta: dict[str, Any], image_size: int, device: torch.device
) -> list[Path]:
    """Write ``hypir/state_dict.pth`` and ``hypir/hypir_config.json`` under ``out``; return both paths."""
    assert isinstance(model, HypirGenerator), f"the hypir export got a {type(model).__name__}"
    cfg = model.config
    state = {k: v.detach().float().cpu().clone() for k, v in model.lora_state_dict().items()}
    config = {
        "base_model_type": "sd2",
        "base_model_path": cfg["base_model"],
        "model_t": cfg["model_t"],
        "coeff_t": cfg["coeff_t"],
        "lora_rank": cfg["lora_rank"],
        "lora_modules": cfg["lora_modules"],
        "tiny_random": cfg["tiny_random"],  # true: the demo's random base, not SD2.1 (HYPIR cannot use these weights)
        "image_size": image_size,
        "stage": meta.get("stage"),
        "dataset": meta.get("dataset"),
    }
    return [
        atomic_torch_save(state, out / EXPORT_DIR / WEIGHTS_FILE),
        atomic_write_json(out / EXPORT_DIR / CONFIG_FILE, config),
    ]


register_export("hypir", export_hypir_lora)
