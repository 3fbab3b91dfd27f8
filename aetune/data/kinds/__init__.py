"""Data kinds by name (``image``, ``pair``, ``video``, ``volume``): how step 4 turns step 3's split into datasets.

The registry is :mod:`aetune.data.kinds.registry`; importing this package registers the kinds below.
"""

from aetune.data.kinds import image, pair, video, volume  # noqa: F401  (each registers itself)
from aetune.data.kinds.registry import DataKind, get_data_kind, register_data_kind

__all__ = ["DataKind", "get_data_kind", "register_data_kind"]
