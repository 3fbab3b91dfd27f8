"""Each family's own config sections (typed dataclasses), registered with ``aetune.config.register_schema``.

Torch-free on purpose: steps 1 and 2 read presets (disk budget, which weights to fetch) before torch is known
to work. Adding a family adds one module here (its sections) and one in ``aetune/recipes/`` (its training).
"""

from aetune.options import autoencoders  # noqa: F401  (vavae, kl)
from aetune.options import kl3d  # noqa: F401  (kl3d)
from aetune.options import rae  # noqa: F401  (rae)
from aetune.options import tiny  # noqa: F401  (taesd, taehv)
