"""Typed configuration: defaults in dataclasses, partial YAML presets, strict dotted overrides.

Precedence (lowest first): dataclass defaults -> preset chain (``base:`` first) -> ``--set`` and
first-class flags. Every key is checked against the schema; an unknown key is an error that names the
closest valid one. ``Config`` round-trips through YAML to an equal object.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aetune.errors import AetuneError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
"""Folder of the shipped presets (``configs/<name>.yaml``)."""


@dataclass
class DataConfig:
    """What the autoencoder sees."""

    image_size: int = 256  # VA-VAE f16 was trained at 256 px: 16x16 latents, 224 px teacher input
    cache: str = "ram"  # "ram" | "file": decoded uint8 images, so epochs never re-decode PNGs
    num_workers: int = 2  # Kaggle gives 2-4 CPU cores; more workers only add RAM copies of the cache
    hflip: bool = False  # flips swap time direction / Doppler sign: they change what a spectrogram means


@dataclass
class ModelConfig:
    """Which autoencoder, and how much of it trains."""

    family: str = "vavae"  # registered family name (aetune.list_families())
    args: dict[str, Any] = field(default_factory=dict)  # constructor overrides, checked by its signature
    freeze_encoder_levels: int = 0  # seed: freeze 3-4 of 5 encoder levels for ~5k images
    gradient_checkpointing: bool = False  # trades ~30 % speed for activation memory (T4 16 GB)
    channels_last: bool = False  # faster convolutions under AMP on tensor-core GPUs


@dataclass
class TeacherConfig:
    """The frozen vision foundation model the VA-VAE latents are aligned to."""

    name: str = "vit_large_patch14_dinov2.lvd142m"  # the released VA-VAE's teacher (timm name)
    pretrained: bool = True  # False = random teacher: only by explicit choice (demo preset), and outputs say so
    normalize: str = "none"  # "none" reproduces the released model (raw [-1, 1] input); "imagenet" mean/std
    weights_path: str | None = None  # local teacher weights (offline Kaggle); None = timm/HF cache


@dataclass
class DiscriminatorConfig:
    """PatchGAN discriminator (taming NLayerDiscriminator), loadable from ``loss.discriminator.*``."""

    ndf: int = 64  # released VA-VAE value
    n_layers: int = 3  # released VA-VAE value: 30x30 patches at 256 px


@dataclass
class LossConfig:
    """Weights of the VA-VAE objective (LightningDiT vavae/ defaults unless noted)."""

    kl_weight: float = 1e-6  # released value: KL only keeps latents bounded
    perceptual_weight: float = 1.0  # LPIPS-VGG weight inside the nll, released value
    lpips_pretrained: bool = True  # False = no trustworthy LPIPS: only by explicit choice, and outputs say so
    disc_weight: float = 0.5  # released value, scaled by the adaptive weight
    disc_start: int = 0  # batches into the stage before the GAN term and D updates start; -1 = no GAN
    vf_weight: float = 0.1  # alignment weight; seed stage 1 uses 0.5
    vf_adaptive: bool = True  # released: scale VF by the grad-norm ratio at encoder.conv_out
    distmat_margin: float = 0.0  # seed stage 3: 0.25
    cos_margin: float = 0.0  # seed stage 3: 0.5
    distmat_weight: float = 1.0  # released value
    cos_weight: float = 1.0  # released value


@dataclass
class StageConfig:
    """One stage of the plan: how long, and which loss weights change."""

    epochs: int = 1  # passes over the training split
    max_steps: int = -1  # batches, -1 = no limit beyond epochs (for smoke runs)
    loss: dict[str, Any] = field(default_factory=dict)  # LossConfig keys overridden in this stage


@dataclass
class TrainConfig:
    """Optimisation, validation and checkpointing."""

    batch_size: int = 8  # seed: 8 with accumulation 2 on one 16 GB GPU at 256 px
    gradient_accumulation: int = 1  # batches per optimizer step
    learning_rate: float | None = None  # None: 1e-5 from pretrained weights, 1e-4 from scratch (seed)
    betas: list[float] = field(default_factory=lambda: [0.5, 0.9])  # released VA-VAE Adam betas
    weight_decay: float = 0.0  # released value
    gradient_clip_val: float = 1.0  # seed value; 0 disables
    precision: str | None = None  # None: from step 1's advice / the GPU; "32", "16-mixed", "bf16-mixed"
    seed: int = 42  # seeds model init, sampling and the data order
    val_every_n_steps: int = 200  # batches between validations (and always at stage end)
    checkpoint_every_n_batches: int = 100  # count-based: time-based saving is ignored under manual optimisation
    patience: int = 5  # validations without PSNR gain before early stopping
    max_nonfinite: int = 5  # non-finite losses in a row before saving and stopping
    max_hours: float | None = None  # per-session deadline; --kaggle sets 11.5 (Kaggle kills at 12)
    stages: dict[str, StageConfig] = field(default_factory=lambda: {"1": StageConfig()})


@dataclass
class Config:
    """Everything a run needs; written next to every checkpoint as ``config.yaml``."""

    preset: str | None = None  # the preset this config came from (recorded, not re-applied)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def stage_loss(self, stage: str) -> LossConfig:
        """The loss weights in force during ``stage``: ``loss`` with the stage's overrides applied."""
        if stage not in self.train.stages:
            raise AetuneError(f"stage {stage} is not in the plan (stages: {', '.join(self.train.stages)})")
        return _build(LossConfig, {**to_dict(self.loss), **self.train.stages[stage].loss}, f"train.stages.{stage}.loss")

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python nested dict (YAML/JSON/``weights_only`` safe)."""
        return to_dict(self)


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a plain nested dict (lists and dicts copied)."""
    return dataclasses.asdict(obj)


def _suggest(key: str, valid: list[str], where: str = "") -> str:
    """The closest valid key (dotted, under ``where``), or the list of valid keys."""
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if close:
        return f"; did you mean '{_join(where, close[0])}'?"
    return f"; valid keys: {', '.join(sorted(valid))}"


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int accepted for float; YAML scalars for str)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except AetuneError as e:
                errors.append(str(e))
        raise AetuneError(errors[0])
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise AetuneError(f"{where} must be a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise AetuneError(f"{where} must be a mapping, got {value!r}")
        _, item = typing.get_args(tp)
        if dataclasses.is_dataclass(item):
            return {str(k): _build(item, v or {}, f"{where}.{k}") for k, v in value.items()}
        return {str(k): v for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise AetuneError(f"{where} must be a mapping, got {value!r}")
        return _build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise AetuneError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # PyYAML reads "1e-5" (no dot) as a string: YAML 1.1 wants "1.0e-5".
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise AetuneError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise AetuneError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise AetuneError(f"{where} must be a string, got {value!r}")
        return str(value)
    if tp is Any:
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {where}")


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass ``cls`` from ``data``, strictly (unknown keys are errors)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise AetuneError(f"unknown config key '{_join(where, key)}'" + _suggest(key, names, where))
    kwargs = {k: _coerce(v, hints[k], _join(where, k)) for k, v in data.items()}
    obj = cls(**kwargs)
    if cls is Config:
        for stage in obj.train.stages:
            obj.stage_loss(stage)
    return obj


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _merge(base: dict[str, Any], over: dict[str, Any], replace: frozenset[str], where: str = "") -> dict[str, Any]:
    """Deep-merge ``over`` onto ``base``; keys in ``replace`` (dotted) are replaced, not merged."""
    out = dict(base)
    for k, v in over.items():
        path = _join(where, k)
        if isinstance(v, dict) and isinstance(out.get(k), dict) and path not in replace:
            out[k] = _merge(out[k], v, replace, path)
        else:
            out[k] = v
    return out


# A preset that sets a stage plan states the whole plan: merging stage "1" of the defaults into a
# preset's three stages would invent a stage nobody wrote.
_REPLACED_BY_PRESETS = frozenset({"train.stages"})


def preset_path(name_or_path: str) -> Path:
    """Resolve ``--config``: an existing YAML file, or the name of a shipped preset."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        if not p.is_file():
            raise AetuneError(f"config file {p} does not exist")
        return p
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        names = available_presets()
        raise AetuneError(f"unknown preset '{name_or_path}'" + _suggest(name_or_path, names))
    return candidate


def available_presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _read_preset(name_or_path: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A preset as a dict with its ``base:`` chain applied (base first)."""
    path = preset_path(name_or_path)
    if str(path) in seen:
        raise AetuneError(f"preset {path} inherits from itself through 'base:'")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise AetuneError(f"{path} must hold a YAML mapping")
    base = data.pop("base", None)
    if base is None:
        return data
    return _merge(_read_preset(str(base), (*seen, str(path))), data, _REPLACED_BY_PRESETS)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=c"`` -> (["a", "b"], c) with ``c`` parsed as a YAML scalar (so 1e-5, true, null, [1,2])."""
    if "=" not in item:
        raise AetuneError(f"--set expects section.key=value, got '{item}'")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise AetuneError(f"--set key '{key}' is malformed")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise AetuneError(f"--set {item}: value is not valid YAML ({e.problem})") from e
    return parts, value


def _nest(parts: list[str], value: Any) -> dict[str, Any]:
    out: Any = value
    for p in reversed(parts):
        out = {p: out}
    return out


def load_config(preset: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Resolve defaults, preset and ``--set`` overrides into a checked ``Config``.

    Args:
        preset: a shipped preset name (``vavae``, ``demo``, ...) or a YAML path; None = defaults.
        overrides: ``section.key=value`` strings, applied in order.

    Raises:
        AetuneError: unknown key (with the closest valid one), wrong type, unknown preset.
    """
    data: dict[str, Any] = _read_preset(preset) if preset else {}
    if preset:
        data["preset"] = preset
    for item in overrides:
        parts, value = parse_override(item)
        if (
            parts[:2] == ["train", "stages"]
            and len(parts) > 3
            and parts[2] not in data.get("train", {}).get("stages", to_dict(TrainConfig())["stages"])
        ):
            raise AetuneError(f"--set {item}: stage {parts[2]} is not in the plan")
        data = _merge(data, _nest(parts, value), frozenset())
    return _build(Config, data, "")


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a ``Config`` from ``Config.to_dict()`` output (e.g. read back from a checkpoint)."""
    return _build(Config, data, "")


def dump_config(cfg: Config) -> str:
    """The config as YAML text."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=False)


def load_config_file(path: str | Path) -> Config:
    """Read a ``config.yaml`` written by :func:`dump_config` (no preset chain, strict)."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return config_from_dict(data)
