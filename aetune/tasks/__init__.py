"""Training tasks over any 2-D family (``model.task``): one package each, registered as the families are."""

from aetune.tasks import restoration  # noqa: F401  (registers itself)
