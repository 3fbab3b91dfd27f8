"""Autoencoder families by short name (timm-style ``create_model``): ``create_autoencoder("vavae", ch=64)``.

A family registers its model class with its config dataclass, a one-line description and a tiny
configuration for CPU tests and demos. Tests are parametrised over ``list_families()``, so a new family
(RAE, tiny TAESD-like, 3-D KL) is tested by being registered.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aetune.config import import_registered
from aetune.models.base import Autoencoder, FamilyConfig, ModelConfigError


@dataclass(frozen=True)
class Family:
    """One registered family.

    Attributes:
        name: short name (``create_autoencoder(name)``).
        model_cls: the ``Autoencoder`` subclass.
        config_cls: its typed options (the schema).
        description: one line for listings and errors.
        tiny: option overrides giving a small model for CPU tests and demos (32-64 px inputs).
    """

    name: str
    model_cls: type[Autoencoder]
    config_cls: type[FamilyConfig]
    description: str
    tiny: dict[str, Any] = field(default_factory=dict)


_FAMILIES: dict[str, Family] = {}

M = TypeVar("M", bound=type[Autoencoder])


def register_family(
    name: str, config_cls: type[FamilyConfig], description: str, tiny: dict[str, Any] | None = None
) -> Callable[[M], M]:
    """Class decorator registering an ``Autoencoder`` subclass under ``name``.

    Raises:
        ValueError: if ``name`` is taken by another class (re-registering the same class is a no-op,
            so reloading a module in a notebook works).
    """

    def decorate(cls: M) -> M:
        known = _FAMILIES.get(name)
        if known is not None and known.model_cls.__qualname__ != cls.__qualname__:
            raise ValueError(f"autoencoder family '{name}' is already registered by {known.model_cls.__qualname__}")
        cls.family = name
        cls.config_cls = config_cls
        _FAMILIES[name] = Family(name, cls, config_cls, description, dict(tiny or {}))
        return cls

    return decorate


def list_families() -> list[str]:
    """Registered family names, sorted (every built-in family's model module is imported first)."""
    import_registered()
    return sorted(_FAMILIES)


def get_family(name: str) -> Family:
    """The registered family ``name``; ``ModelConfigError`` naming the closest name otherwise."""
    import_registered(name)
    if name not in _FAMILIES:
        import_registered()
        raise ModelConfigError(f"unknown autoencoder family '{name}'" + _suggest(name, list(_FAMILIES)))
    return _FAMILIES[name]


def create_autoencoder(name: str, **overrides: Any) -> Autoencoder:
    """Build a registered autoencoder with randomly initialised weights.

    Args:
        name: family name (``list_families()``).
        **overrides: options of the family's config dataclass; the rest keep their defaults (for
            ``vavae`` and ``kl``: the released f16d32 model).

    Returns:
        The model, in train mode, on CPU. Load weights with ``load_weights``.

    Raises:
        ModelConfigError: unknown family or option (naming the closest valid one), or a bad value.
    """
    family = get_family(name)
    valid = [f.name for f in dataclasses.fields(family.config_cls)]
    for key in overrides:
        if key not in valid:
            raise ModelConfigError(f"unknown option '{key}' for autoencoder family '{name}'" + _suggest(key, valid))
    return family.model_cls(family.config_cls(**overrides))


Export = Callable[[Path, Autoencoder, dict[str, Any], int, Any], list[Path]]
"""(results folder, model, its checkpoint metadata, image size, device) -> files written."""
_EXPORTS: dict[str, list[Export]] = {}


def register_export(family: str, export: Export) -> None:
    """Register a file ``family`` writes beside the DiT encoder export in step 5 (``--export``)."""
    known = _EXPORTS.setdefault(family, [])
    if export not in known:
        known.append(export)


def family_exports(family: str) -> list[Export]:
    """The extra step 5 exports registered for ``family`` (each decides from the metadata whether it applies)."""
    import_registered(family)
    return list(_EXPORTS.get(family, []))


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid: {', '.join(sorted(valid))}"
