"""What stage 1 starts from when step 4 is given no ``--pretrained_path``: the release step 2 recorded, if it fits."""

from __future__ import annotations

from pathlib import Path

from aetune.config import Config
from aetune.models import get_family
from aetune.setup.hub import recorded_release


def at_released_options(cfg: Config) -> bool:
    """Whether ``model.args`` build the family's default model, the one its released files fit (a preset may write
    those options out, as ``rae`` does; ``taesd``'s f16c32 preset does not fit the released f8c4 halves)."""
    options = get_family(cfg.model.family).config_cls
    return options(**cfg.model.args) == options()


def default_start(cfg: Config, work_dir: Path) -> Path | None:
    """Every file of the family's release step 2 recorded in ``work_dir`` (comma-joined, as ``--pretrained_path``
    takes them), when the model is built at the released options; None otherwise (random weights, said by step 4)."""
    return recorded_release(cfg, work_dir, at_released_options(cfg))
