"""Each family's own config sections (typed dataclasses), registered with ``aetune.config.register_schema``.

Torch-free on purpose: steps 1 and 2 read presets (disk budget, which weights to fetch) before torch is known
to work. Adding a family adds one module here (its sections) and one in ``aetune/recipes/`` (its training).
"""

from aetune.options import autoencoders, kl3d, rae, restoration, tiny  # noqa: F401  (each registers its sections)
