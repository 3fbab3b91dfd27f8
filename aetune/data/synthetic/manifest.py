"""The one rule every built-in synthetic set follows before it writes: a folder is ours, or empty, or refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aetune.errors import InvalidArgument
from aetune.io import read_json


def check_output_folder(out: Path, manifest_name: str, params: dict[str, Any], what: str) -> Path:
    """Refuse to write a synthetic set into a folder that holds another one, or anything else.

    Args:
        out: the set's folder.
        manifest_name: its manifest file (``synthetic.json``, ...), ``{"parameters": ..., "complete": bool}``.
        params: the parameters of this run: equal to the manifest's, generation resumes or is a no-op.
        what: the set in words, for the message (``"a synthetic video set"``).

    Returns:
        The manifest's path.

    Raises:
        InvalidArgument: other parameters (naming those that differ), or a non-empty folder without a manifest.
    """
    manifest = out / manifest_name
    if manifest.exists():
        recorded = read_json(manifest).get("parameters", {})
        if recorded != params:
            differ = sorted(k for k in params if recorded.get(k) != params[k])
            raise InvalidArgument(
                f"{out} holds {what} made with other parameters ({', '.join(differ)} differ); "
                "pass another folder or delete that one"
            )
    elif out.exists() and any(out.iterdir()):
        raise InvalidArgument(f"{out} is not empty and holds no {manifest_name}; pass an empty or new folder")
    return manifest
