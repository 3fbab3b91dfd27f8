"""Optional dependencies of the families, and missing packages in words: one line naming the install command."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from types import ModuleType

from aetune.errors import AetuneError

PIP_NAMES = {
    "av": "av",
    "nibabel": "nibabel",
    "monai": "monai",
    "datasets": "datasets",
    "diffusers": "diffusers",
    "yaml": "pyyaml",
    "PIL": "pillow",
    "skimage": "scikit-image",
    "sklearn": "scikit-learn",
    "pytorch_lightning": "pytorch-lightning",
    "lightning": "pytorch-lightning",
    "pytorch_fid": "pytorch-fid",
    "open_clip": "open-clip-torch",
}
"""Import name -> PyPI name, where they differ or where the install hint should be exact."""
REPO = Path(__file__).resolve().parent.parent
"""The repository root: ``requirements.txt`` and ``requirements/<family>.txt`` (the families' extras)."""


def pip_name(module: str) -> str:
    """The PyPI name of the package that provides import ``module`` (its first dotted part)."""
    top = module.split(".")[0]
    return PIP_NAMES.get(top, top.replace("_", "-"))


def requirements_file(module: str) -> Path | None:
    """The requirements file that lists the package of ``module``: ``requirements.txt``, a family's
    ``requirements/<family>.txt``, or None when none does."""
    wanted = pip_name(module).lower().replace("_", "-")
    for path in [REPO / "requirements.txt", *sorted((REPO / "requirements").glob("*.txt"))]:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        for line in lines:
            name = re.split(r"[<>=!~;\[\s#]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")
            if name and name == wanted:
                return path
    return None


def install_command(module: str) -> str:
    """How to install what ``module`` needs: ``python -m pip install -r <the requirements file that lists it>``."""
    path = requirements_file(module)
    if path is None:
        return f"python -m pip install {pip_name(module)}"
    return f"python -m pip install -r {path.relative_to(REPO).as_posix()}"


def missing_module_message(e: ModuleNotFoundError) -> str:
    """One line for a ``ModuleNotFoundError`` in a step script: the package, and the command that installs it."""
    module = e.name or "?"
    path = requirements_file(module)
    extra = f" (the {path.stem} family's extras)" if path is not None and path.parent.name == "requirements" else ""
    return (
        f"Python package '{pip_name(module)}' is not installed (import {module}): activate the environment you "
        f"installed aetune into, or run `{install_command(module)}`{extra}"
    )


def require(module: str, purpose: str = "") -> ModuleType:
    """Import ``module`` (e.g. ``"monai.networks.nets"``), or raise one line saying what to install.

    Args:
        module: dotted import path; its first part names the package.
        purpose: what needs it, for the message (e.g. ``"--family kl3d"``).

    Raises:
        AetuneError: ``<package> is not installed (needed for <purpose>): <the install command>``.
    """
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] != top:
            raise
        pip = pip_name(top)
        why = f" (needed for {purpose})" if purpose else ""
        path = requirements_file(top)
        if path is not None and path.parent.name == "requirements":
            how = (
                f"run `python -m pip install -r requirements/{path.name}` or "
                f"`python step1_setup_environment.py --family {path.stem}`"
            )
        else:
            how = f"run `python step1_setup_environment.py --family <family>` or `pip install {pip}`"
        raise AetuneError(f"{pip} is not installed{why}: {how}") from e
