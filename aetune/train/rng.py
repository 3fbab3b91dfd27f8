"""Random-number-generator states as tensors and plain Python, so checkpoints load with ``weights_only=True``."""

from __future__ import annotations

import random
import zlib
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """The Python, NumPy, torch CPU and CUDA generator states of this process."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "gauss": gauss,
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned (CUDA states only for the devices present)."""
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def batch_seed(*parts: object) -> int:
    """A stable 31-bit seed from ``parts`` (Python's ``hash`` of strings changes per process)."""
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFF_FFFF
