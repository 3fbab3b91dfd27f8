"""Optional dependencies of the families: a missing package is a one-line error naming it."""

from __future__ import annotations

import importlib
from types import ModuleType

from aetune.errors import AetuneError

PIP_NAMES = {"av": "av", "nibabel": "nibabel", "monai": "monai", "datasets": "datasets", "diffusers": "diffusers"}
"""Import name -> PyPI name, where they differ or where the install hint should be exact."""


def require(module: str, purpose: str = "") -> ModuleType:
    """Import ``module`` (e.g. ``"monai.networks.nets"``), or raise one line saying what to install.

    Args:
        module: dotted import path; its first part names the package.
        purpose: what needs it, for the message (e.g. ``"--family kl3d"``).

    Raises:
        AetuneError: ``<package> is not installed (needed for <purpose>): pip install <package>``.
    """
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] != top:
            raise
        pip = PIP_NAMES.get(top, top)
        why = f" (needed for {purpose})" if purpose else ""
        raise AetuneError(
            f"{pip} is not installed{why}: run `python step1_setup_environment.py --family <family>` "
            f"or `pip install {pip}`"
        ) from e
