"""Step 4's flags -> the resolved config and the stages to run (the script only wires them)."""

from __future__ import annotations

import argparse

from aetune.config import RECONSTRUCTION, Config, ModelConfig, family_schema, load_config
from aetune.errors import AetuneError
from aetune.train.plan import parse_stages

KAGGLE_MAX_HOURS = 11.5  # Kaggle kills a session at 12 h: stop, save and exit 30 min before


def per_stage(text: str | None, stages: list[str], flag: str) -> dict[str, int]:
    """``--epochs 5`` or ``--epochs 30,15,10`` -> {stage: value} for the requested stages."""
    if text is None:
        return {}
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise AetuneError(f"{flag} {text}: give integers, one for all stages or one per stage") from None
    if len(values) == 1:
        values = values * len(stages)
    if len(values) != len(stages):
        raise AetuneError(f"{flag} {text}: {len(values)} values for {len(stages)} stages ({','.join(stages)})")
    return dict(zip(stages, values, strict=True))


def build_config(args: argparse.Namespace) -> tuple[Config, list[str]]:
    """The preset with ``--set`` and the first-class flags applied (flags last), and the stages to run."""
    task = getattr(args, "task", None)
    preset, family_set = (args.config, []) if args.config else default_preset(args.family, task)
    overrides = [*family_set, *args.overrides]
    cfg = load_config(preset, overrides)
    if args.family and cfg.model.family != args.family:
        raise AetuneError(f"--family {args.family} but --config {preset} is a {cfg.model.family} preset")
    if task and cfg.model.task != task:
        raise AetuneError(f"--task {task} but --config {preset} is a {cfg.model.task} preset")
    stages = parse_stages(args.stages, cfg)
    flags = {
        "train.batch_size": args.batch_size,
        "train.global_batch_size": args.global_batch_size,
        "train.gradient_accumulation": args.gradient_accumulation,
        "train.learning_rate": args.learning_rate,
        "train.gradient_clip_val": args.gradient_clip_val,
        "model.freeze_encoder_levels": args.freeze_encoder_levels,
        "train.precision": args.precision,
        "data.num_workers": args.num_workers,
        "train.seed": args.seed,
        "train.max_hours": args.max_hours,
    }
    if args.kaggle and args.max_hours is None and cfg.train.max_hours is None:
        flags["train.max_hours"] = KAGGLE_MAX_HOURS
    for stage, n in per_stage(args.epochs, stages, "--epochs").items():
        flags[f"train.stages.{stage}.epochs"] = n
    for stage, n in per_stage(args.max_steps, stages, "--max_steps").items():
        flags[f"train.stages.{stage}.max_steps"] = n
    sets = [f"{k}={v}" for k, v in flags.items() if v is not None]
    return load_config(preset, [*overrides, *sets]), stages


def default_preset(family: str | None, task: str | None) -> tuple[str, list[str]]:
    """The preset ``--family`` / ``--task`` load without ``--config``, and the overrides it needs.

    The family's own default preset when it already trains ``task`` (``--family hypir``: a restoration preset),
    else the task's, with ``model.family`` set to the family asked for (``--family taesd --task restoration``).
    """
    own = family_schema(family or ModelConfig().family).default_preset
    if task in (None, RECONSTRUCTION) or load_config(own).model.task == task:
        return own, []
    return family_schema(family or ModelConfig().family, task).default_preset, [
        f"model.family={family}"
    ] if family else []
