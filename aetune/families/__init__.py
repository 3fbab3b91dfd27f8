"""The built-in autoencoder families: one package each, holding its model, options, recipe, losses and loaders.

Importing a family's package registers its config sections (torch-free) and names its torch modules, which
register the model (``aetune.models``), the weight loaders and the recipe (``aetune.recipes``) when the
family is first used. Adding a family is one package here and one name in the import below
(docs/families.md); the contract tests find it through the registries.
"""

from aetune.families import hypir, kl3d, rae, tiny, vavae  # noqa: F401  (each registers itself)
