"""Typed configuration: defaults in dataclasses, partial YAML presets, strict dotted overrides.

Precedence (lowest first): dataclass defaults -> preset chain (``base:`` first) -> ``--set`` and
first-class flags. Every key is checked against the schema; an unknown key is an error that names the
closest valid one. ``Config`` round-trips through YAML to an equal object.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import math
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aetune.errors import AetuneError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
"""Folder of the shipped presets (``configs/<name>.yaml``)."""


def bounds(lo: float | None = None, hi: float | None = None, *, allow: tuple[Any, ...] = ()) -> dict[str, Any]:
    """Field metadata: the valid range ``[lo, hi]`` of a number, plus exact values also allowed (e.g. -1 = off).

    Checked when the config is built, so a zero batch size or a negative epoch count is one error line naming
    the key and the range, not a crash deep inside the first training step.
    """
    return {"bounds": (lo, hi, allow)}


def choices(*values: str) -> dict[str, Any]:
    """Field metadata: the strings a key accepts."""
    return {"choices": values}


@dataclass
class DataConfig:
    """What the autoencoder sees."""

    image_size: int = field(default=256, metadata=bounds(8, 8192))  # VA-VAE f16 was trained at 256 px
    cache: str = field(default="ram", metadata=choices("ram", "file"))  # decoded uint8 images: epochs never re-decode
    num_workers: int = field(default=2, metadata=bounds(0, 64))  # Kaggle gives 2-4 cores; more only add RAM copies
    hflip: bool = False  # flips swap time direction / Doppler sign: they change what a spectrogram means


@dataclass
class ModelConfig:
    """Which autoencoder, and how much of it trains."""

    family: str = "vavae"  # registered family name (aetune.list_families())
    task: str = "reconstruction"  # or a registered task (register_task): "restoration" trains LQ -> GT pairs
    args: dict[str, Any] = field(default_factory=dict)  # constructor overrides, checked by its signature
    freeze_encoder_levels: int = field(default=0, metadata=bounds(0, 64))  # seed: 3-4 of 5 levels for ~5k images
    gradient_checkpointing: bool = False  # trades ~30 % speed for activation memory (T4 16 GB)
    channels_last: bool = False  # faster convolutions under AMP on tensor-core GPUs


@dataclass
class OptimizerConfig:
    """One phase's optimiser and learning-rate schedule (the generator ``g`` or the discriminator ``d``)."""

    name: str = field(default="adam", metadata=choices("adam", "adamw"))  # VA-VAE: Adam; RAE, TAEHV: AdamW
    betas: list[float] = field(default_factory=lambda: [0.5, 0.9])  # released VA-VAE Adam betas
    weight_decay: float = field(default=0.0, metadata=bounds(0.0, 1.0))  # released VA-VAE value
    amsgrad: bool = False  # AMSGrad's running max of the second moment (the original TAESD training)
    schedule: str = field(default="constant", metadata=choices("constant", "cosine"))  # RAE: warm-up + cosine
    warmup_batches: int = field(default=0, metadata=bounds(0))  # linear warm-up from 0, in batches of the stage
    min_lr_ratio: float = field(default=0.0, metadata=bounds(0.0, 1.0))  # cosine floor / peak (RAE: 2e-5 / 2e-4)
    # the schedule's clock: the stage's batches, or "updates" = only the batches this phase ran (RAE's D scheduler)
    count: str = field(default="batches", metadata=choices("batches", "updates"))


@dataclass
class OptimizersConfig:
    """The optimiser of each phase."""

    g: OptimizerConfig = field(default_factory=OptimizerConfig)  # autoencoder (its trainable part)
    d: OptimizerConfig = field(default_factory=OptimizerConfig)  # discriminator, when the recipe has one


@dataclass
class EMAConfig:
    """Exponential moving average of the trained generator weights (RAE: 0.9978 every step)."""

    decay: float = field(default=0.0, metadata=bounds(0.0, 0.999999))  # 0 = off
    start_batch: int = field(default=0, metadata=bounds(0))  # batch of the stage from which the average runs


@dataclass
class StageConfig:
    """One stage of the plan: how long, at which size, and what changes in it."""

    epochs: int = field(default=1, metadata=bounds(1, 100_000))  # passes over the training split
    max_steps: int = field(default=-1, metadata=bounds(1, allow=(-1,)))  # batch cap, -1 = none (smoke runs)
    image_size: int | None = field(default=None, metadata=bounds(8, 8192))  # None: data.image_size (progressive)
    loss: dict[str, Any] = field(default_factory=dict)  # the family's loss keys overridden in this stage
    optimizer: dict[str, Any] = field(default_factory=dict)  # {g: {...}, d: {...}} overrides of train.optimizer
    ema: dict[str, Any] = field(default_factory=dict)  # overrides of train.ema
    learning_rate: float | None = field(default=None, metadata=bounds(0.0, 1.0))  # None: train.learning_rate
    patience: int | None = field(default=None, metadata=bounds(0))  # None: train.patience without GAN, 0 (off) with
    monitor: str | None = None  # None: train.monitor
    # start with the previous stage's optimizer states (Adam moments, step counts): a stage that only switches
    # loss terms on goes on with one optimisation, as MONAI's single training loop (kl3d's warm-up -> GAN)
    carry_optimizer: bool = False


@dataclass
class TrainConfig:
    """Optimisation, validation and checkpointing."""

    batch_size: int = field(default=8, metadata=bounds(1, 4096))  # seed: 8 + accumulation 2 on a 16 GB GPU, 256 px
    global_batch_size: int | None = field(default=None, metadata=bounds(1, 1 << 20))  # sets batch and accumulation
    gradient_accumulation: int = field(default=1, metadata=bounds(1, 1024))  # batches per optimizer step
    learning_rate: float | None = field(default=None, metadata=bounds(0.0, 1.0))  # None: 1e-5 pretrained, 1e-4 scratch
    d_learning_rate: float | None = field(default=None, metadata=bounds(0.0, 1.0))  # None: the generator's
    optimizer: OptimizersConfig = field(default_factory=OptimizersConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    gradient_clip_val: float = field(default=0.0, metadata=bounds(0.0))  # 0 = off, as released (norms are logged)
    precision: str | None = None  # None: from step 1's advice / the GPU; "32", "16-mixed", "bf16-mixed"
    seed: int = field(default=42, metadata=bounds(0, 2**63 - 1))  # model init, sampling and the data order
    val_every_n_steps: int = field(default=200, metadata=bounds(1))  # batches between validations (+ stage end)
    checkpoint_every_n_batches: int = field(default=100, metadata=bounds(0))  # count-based (manual optimisation)
    monitor: str = "val/psnr"  # the best checkpoints and early stopping follow it (mode max)
    patience: int = field(default=5, metadata=bounds(0))  # validations without gain before stopping; 0 = never
    max_nonfinite: int = field(default=5, metadata=bounds(1))  # non-finite losses in a row before saving and stopping
    max_hours: float | None = field(default=None, metadata=bounds(0.0))  # session deadline; --kaggle: 11.5
    grad_norm_every: int = field(default=50, metadata=bounds(0))  # batches between grad_norm/<term> logs; 0 = off
    rfid_every: int = field(default=0, metadata=bounds(0))  # batches between rFID runs (0: stage end only)
    rfid_images: int = field(default=0, metadata=bounds(0))  # images rFID uses during training; 0 = no rFID
    health_batch: int = field(default=1000, metadata=bounds(0))  # first validation at/after it is the health gate
    health_min_psnr: float | None = None  # the preset's bar (dB); None = no gate
    stages: dict[str, StageConfig] = field(default_factory=lambda: {"1": StageConfig()})


@dataclass(frozen=True)
class FamilySchema:
    """What a family adds to the config: its own typed sections (``loss`` at least), default preset, data kind."""

    family: str
    sections: dict[str, type]  # section name -> dataclass, e.g. {"loss": VAVAELossConfig, "teacher": ...}
    default_preset: str  # the preset ``--family NAME`` loads
    data_kind: str  # "image" | "pair" | "video" | "volume"
    tiny: dict[str, Any] = field(default_factory=dict)  # partial config: a CPU-sized run (contract tests, demos)
    released: tuple[str, ...] = ()  # weight registry names of the released model a real fine-tune starts from
    full_size: tuple[int, int] | None = None  # (autoencoder, discriminator) parameters at the defaults (no torch)
    needs: Callable[[Config], list[str]] | None = None  # weight registry names a run of the config needs (step 2)


_SCHEMAS: dict[str, FamilySchema] = {}
COMMON_SECTIONS = ("preset", "data", "model", "train")


def register_schema(
    family: str,
    default_preset: str,
    data_kind: str = "image",
    tiny: dict[str, Any] | None = None,
    released: tuple[str, ...] = (),
    full_size: tuple[int, int] | None = None,
    needs: Callable[[Config], list[str]] | None = None,
    **sections: type,
) -> FamilySchema:
    """Register a family's config sections (called by ``aetune/families/<family>/options.py``, torch-free).

    Args:
        family: the family's short name (as its model's ``register_family``).
        default_preset: the preset ``--family NAME`` loads.
        data_kind: what its recipe consumes (``aetune.data.kinds``).
        tiny: a partial config (preset form) that makes a CPU run take seconds: the contract tests
            (``tests/test_family_contract.py``) train every family with it.
        released: weight registry names (``aetune/families/<family>/weights.py``) of the released model a
            fine-tune with a pretrained teacher starts from, its weights first (step 2 ``--config``, step 5
            ``--released``).
        full_size: (autoencoder, discriminator) parameter counts at the default options, so step 1 sizes the
            run's files without torch (``tests/test_disk_budget.py`` checks them against the built model).
        needs: ``needs(cfg)`` -> the weight registry names a run with ``cfg`` builds its model from (hypir: the
            frozen SD2.1-base parts unless the preset asks for random ones); step 2 ``--config`` fetches them.
        **sections: section name -> dataclass; ``loss`` is required.
    """
    if "loss" not in sections:
        raise TypeError(f"family {family} must declare a 'loss' section")
    clash = set(sections) & set(COMMON_SECTIONS)
    if clash:
        raise TypeError(f"family {family} redefines common sections {sorted(clash)}")
    schema = FamilySchema(
        family, dict(sections), default_preset, data_kind, dict(tiny or {}), released, full_size, needs
    )
    _SCHEMAS[family] = schema
    return schema


_TASKS: dict[str, Callable[[FamilySchema], FamilySchema]] = {}
RECONSTRUCTION = "reconstruction"


def register_task(task: str, compose: Callable[[FamilySchema], FamilySchema]) -> None:
    """Register a task (``model.task``): ``compose`` turns a family's schema into the task's (its sections)."""
    _TASKS[task] = compose


def family_schema(family: str, task: str = RECONSTRUCTION) -> FamilySchema:
    """The registered schema of ``family`` (for ``task``); one error line naming the closest name otherwise."""
    if family not in _SCHEMAS:
        raise AetuneError(f"unknown model.family '{family}'" + _suggest(family, sorted(_SCHEMAS)))
    if task == RECONSTRUCTION:
        return _SCHEMAS[family]
    if task not in _TASKS:
        raise AetuneError(f"unknown model.task '{task}'" + _suggest(task, [RECONSTRUCTION, *sorted(_TASKS)]))
    return _TASKS[task](_SCHEMAS[family])


def schema_families() -> list[str]:
    """Families whose config sections are registered."""
    return sorted(_SCHEMAS)


_MODULES: dict[str, tuple[str, ...]] = {}


def register_modules(name: str, *modules: str) -> None:
    """Name the modules (they need torch) that register family or task ``name``'s model, loaders and recipe.

    Called by the family's package ``__init__`` (``aetune/families/<family>/``), which stays torch-free; the
    registries (``aetune.models``, ``aetune.recipes``) import the modules when ``name`` is first looked up.
    """
    _MODULES[name] = tuple(modules)


def import_registered(name: str | None = None) -> None:
    """Import the modules registered for ``name`` (every family's and task's when None); unknown names: no-op."""
    for key in [name] if name is not None else list(_MODULES):
        for module in _MODULES.get(key, ()):
            importlib.import_module(module)


@dataclass
class Config:
    """Everything a run needs; written next to every checkpoint as ``config.yaml``.

    ``data``, ``model`` and ``train`` are common to all families; the family's own sections (``loss`` and,
    e.g. for vavae, ``teacher`` and ``discriminator``) are in ``sections`` and read as attributes:
    ``cfg.loss``, ``cfg.teacher``.
    """

    preset: str | None = None  # the preset this config came from (recorded, not re-applied)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sections: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("sections")
        if sections is not None and name in sections:
            return sections[name]
        raise AttributeError(f"the {self.__dict__.get('model', ModelConfig()).family} config has no section '{name}'")

    @property
    def schema(self) -> FamilySchema:
        """The family's registered schema."""
        return family_schema(self.model.family, self.model.task)

    def stage_loss(self, stage: str) -> Any:
        """The loss options in force during ``stage``: ``loss`` with the stage's overrides applied."""
        spec = self.stage(stage)
        merged = {**to_dict(self.loss), **spec.loss}
        return _build(self.schema.sections["loss"], merged, f"train.stages.{stage}.loss")

    def stage(self, stage: str) -> StageConfig:
        """The plan's entry for ``stage``."""
        if stage not in self.train.stages:
            raise AetuneError(f"stage {stage} is not in the plan (stages: {', '.join(self.train.stages)})")
        return self.train.stages[stage]

    def stage_optimizer(self, stage: str, phase: str) -> OptimizerConfig:
        """``train.optimizer.<phase>`` with the stage's ``optimizer.<phase>`` overrides applied."""
        spec = self.stage(stage)
        unknown = [k for k in spec.optimizer if k not in ("g", "d")]
        if unknown:
            raise AetuneError(f"unknown config key 'train.stages.{stage}.optimizer.{unknown[0]}'; phases are g and d")
        base = to_dict(getattr(self.train.optimizer, phase))
        return _build(OptimizerConfig, {**base, **(spec.optimizer.get(phase) or {})}, f"train.stages.{stage}.optimizer")

    def stage_ema(self, stage: str) -> EMAConfig:
        """``train.ema`` with the stage's overrides applied."""
        return _build(EMAConfig, {**to_dict(self.train.ema), **self.stage(stage).ema}, f"train.stages.{stage}.ema")

    def stage_image_size(self, stage: str) -> int:
        """The input size of ``stage`` (progressive plans change it between stages)."""
        size = self.stage(stage).image_size
        return size if size is not None else self.data.image_size

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python nested dict (YAML/JSON/``weights_only`` safe), family sections at the top level."""
        out: dict[str, Any] = {"preset": self.preset, "data": to_dict(self.data), "model": to_dict(self.model)}
        out |= {name: to_dict(section) for name, section in self.sections.items()}
        out["train"] = to_dict(self.train)
        return out


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


def _check_value(value: Any, meta: Any, where: str) -> None:
    """Range and choice checks from field metadata (see :func:`bounds`, :func:`choices`)."""
    if value is None:
        return
    if any(isinstance(v, float) and not math.isfinite(v) for v in (value if isinstance(value, list) else [value])):
        # NaN passes every comparison, so a range check alone would let it through to the first training step.
        lo, hi, _ = meta.get("bounds", (None, None, ()))
        span = f" in {lo} .. {hi}" if lo is not None and hi is not None else f" >= {lo}" if lo is not None else ""
        raise AetuneError(f"{where} = {value!r} is not a finite number: give a finite number{span}")
    if "choices" in meta and value not in meta["choices"]:
        raise AetuneError(f"{where} must be one of {', '.join(meta['choices'])}, got {value!r}")
    if "bounds" in meta:
        lo, hi, allow = meta["bounds"]
        if value in allow:
            return
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            span = f"{lo if lo is not None else '-inf'} .. {hi if hi is not None else 'inf'}"
            extra = f" (or {', '.join(map(str, allow))})" if allow else ""
            raise AetuneError(f"{where} = {value!r} is out of range: valid {span}{extra}")


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass ``cls`` from ``data``, strictly (unknown keys are errors, ranges checked)."""
    if cls is Config:
        return _build_config(data)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise AetuneError(f"unknown config key '{_join(where, key)}'" + _suggest(key, list(fields), where))
    kwargs = {k: _coerce(v, hints[k], _join(where, k)) for k, v in data.items()}
    for k, v in kwargs.items():
        _check_value(v, fields[k].metadata, _join(where, k))
    return cls(**kwargs)


def _build_config(data: dict[str, Any]) -> Config:
    """A ``Config``: common sections, then the sections of the family that ``model.family`` names."""
    model = _build(ModelConfig, data.get("model") or {}, "model")
    schema = family_schema(model.family, model.task)
    valid = [*COMMON_SECTIONS, *schema.sections]
    for key in data:
        if key not in valid:
            raise AetuneError(f"unknown config key '{key}' for family {model.family}" + _suggest(key, valid))
    cfg = Config(
        preset=_coerce(data.get("preset"), str | None, "preset"),
        data=_build(DataConfig, data.get("data") or {}, "data"),
        model=model,
        train=_build(TrainConfig, data.get("train") or {}, "train"),
        sections={name: _build(cls, data.get(name) or {}, name) for name, cls in schema.sections.items()},
    )
    for stage in cfg.train.stages:
        cfg.stage_loss(stage)
        cfg.stage_ema(stage)
        for phase in ("g", "d"):
            cfg.stage_optimizer(stage, phase)
    return cfg


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


def read_yaml_mapping(path: Path, fix: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping (empty = {}); one error line naming the file and ``fix`` otherwise."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        reason = str(getattr(e, "problem", None) or e).splitlines()[0]
        raise AetuneError(f"{path} is not valid YAML ({reason}): {fix}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AetuneError(f"{path} must hold a YAML mapping, not a {type(data).__name__}: {fix}")
    return data


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
    data = read_yaml_mapping(path, "fix the file or pick a shipped preset (configs/)")
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
    """Read a ``config.yaml`` written by :func:`dump_config` (no preset chain, strict).

    Raises:
        AetuneError: unreadable, hand-broken or invalid file, naming it.
    """
    fix = "it is rewritten by step 4; restore it from the checkpoint's own copy or re-run step 4"
    data = read_yaml_mapping(Path(path), fix)
    try:
        return config_from_dict(data)
    except AetuneError as e:
        raise AetuneError(f"{path}: {e}") from e
