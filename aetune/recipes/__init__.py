"""Training recipes by family name: ``get_recipe("vavae")`` -> the ``Recipe`` subclass step 4 trains with.

A family (``aetune/families/<family>/``) registers its model (``register_family``), its config sections
(``register_schema``) and its recipe (here, ``register_recipe``, called by its ``recipe.py``). The contract
tests (``tests/test_family_contract.py``) run for every family registered here.
"""

from __future__ import annotations

from aetune.config import import_registered
from aetune.errors import AetuneError
from aetune.recipes.base import Networks, PhaseResult, Recipe, StepContext, frozen

_RECIPES: dict[str, type[Recipe]] = {}


def register_recipe(family: str, cls: type[Recipe]) -> type[Recipe]:
    """Register ``cls`` as the recipe of ``family`` (re-registering the same class is a no-op)."""
    known = _RECIPES.get(family)
    if known is not None and known.__qualname__ != cls.__qualname__:
        raise ValueError(f"family '{family}' already has the recipe {known.__qualname__}")
    _RECIPES[family] = cls
    return cls


_TASK_RECIPES: dict[str, type[Recipe]] = {}


def register_task_recipe(task: str, cls: type[Recipe]) -> type[Recipe]:
    """Register ``cls`` as the recipe of ``task`` for every family (``model.task``)."""
    _TASK_RECIPES[task] = cls
    return cls


def get_recipe(family: str, task: str = "reconstruction") -> type[Recipe]:
    """The recipe class of ``family`` (or of ``task``); one error line listing the trainable families otherwise."""
    import_registered(task if task != "reconstruction" else family)
    if task != "reconstruction":
        if task not in _TASK_RECIPES:
            raise AetuneError(f"task '{task}' has no training recipe; tasks: {', '.join(sorted(_TASK_RECIPES))}")
        return _TASK_RECIPES[task]
    if family not in _RECIPES:
        raise AetuneError(f"family '{family}' has no training recipe; trainable: {', '.join(list_recipes())}")
    return _RECIPES[family]


def list_recipes() -> list[str]:
    """Families that can be trained, sorted."""
    import_registered()
    return sorted(_RECIPES)


__all__ = [
    "Networks",
    "PhaseResult",
    "Recipe",
    "StepContext",
    "frozen",
    "get_recipe",
    "list_recipes",
    "register_recipe",
]
