"""Mixed precision on the CPU for step 4's tests: fp16 with a real loss scaler, bf16 through CPU autocast.

Step 4 refuses mixed precision on a CPU (``check_precision``): a user gets nothing from it there. The tests
lift that refusal and nothing else, so the run takes the GPU path's code: Lightning's precision plugins,
``WindowMixedPrecision`` with a real ``torch.amp.GradScaler("cpu")`` (start scale 65536, as on a GPU) and
``torch.autocast("cpu", dtype=torch.float16 / bfloat16)`` around every forward.
"""

from __future__ import annotations

import pytest
import torch

import aetune.train.precision as precision
import aetune.train.runner as runner
from aetune.train.amp import WindowMixedPrecision


def emulate_mixed_precision(
    monkeypatch: pytest.MonkeyPatch, growth_interval: int = 2000, init_scale: float = 2.0**16
) -> list[WindowMixedPrecision]:
    """Allow ``16-mixed`` / ``bf16-mixed`` on CPU; fp16 scalers start at ``init_scale`` (torch's default 65536)
    and grow every ``growth_interval`` clean windows (torch's default 2000).

    Returns:
        The fp16 plugins the runner builds, in order (one per stage), to read their scalers after a run.
    """
    monkeypatch.setattr(
        precision, "check_precision", lambda name, accelerator, gpus: precision.LIGHTNING_PRECISION[name]
    )
    built: list[WindowMixedPrecision] = []

    def plugin(name: str, device: str) -> WindowMixedPrecision:
        scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=growth_interval)
        built.append(WindowMixedPrecision(name, device, scaler))
        return built[-1]

    monkeypatch.setattr(runner, "WindowMixedPrecision", plugin)
    return built
