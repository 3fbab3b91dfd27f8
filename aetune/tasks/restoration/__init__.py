"""Paired LQ -> GT restoration (the HYPIR fork's task) over any 2-D family: options, recipe, losses, metrics."""

from aetune.config import register_modules
from aetune.tasks.restoration import options  # noqa: F401  (registers the task's sections)

register_modules(options.TASK, f"{__name__}.recipe")
