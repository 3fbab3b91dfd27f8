"""Atomic file writes: every file of the work directory is written to a temp file, then renamed.

A crash, a full disk or a Kaggle session killed mid-write leaves the previous version intact and
no half-written file behind (``os.replace`` is atomic on POSIX within one file system).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from aetune.errors import InvalidArgument


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Args:
        path: final destination. Parent folders are created.

    Yields:
        A path in the same folder (same file system, so the rename is atomic). On an exception the
        temporary file is removed and the exception propagates; ``path`` is untouched.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        # mkstemp creates 0600, and some writers (safetensors) recreate the file with it: give the final file the
        # mode a plain open() would (umask applied), after the writer is done.
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


TEMP_PATTERN = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$|^\..+\.(importing|building)$")
"""Names of what a killed write leaves: ``atomic_path``'s ``.<name>.<random>.tmp`` files and the
``.<name>.importing`` / ``.<name>.building`` folders of whole-folder writes."""


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files and folders killed writes left under ``folder``; return them.

    Call it once at the start of a step, on rank 0 only, before anything writes there: a temporary file
    of a live write would otherwise vanish under it.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    removed = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*filenames, *dirnames]:
            if TEMP_PATTERN.match(name):
                path = Path(dirpath) / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                    dirnames.remove(name)
                else:
                    path.unlink()
                removed.append(path)
    return removed


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically and return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int = 2) -> Path:
    """Serialise ``obj`` as JSON (UTF-8, trailing newline) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def atomic_write_yaml(path: str | os.PathLike[str], obj: Any) -> Path:
    """Serialise ``obj`` as block-style YAML to ``path`` atomically."""
    return atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False, default_flow_style=False))


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to ``path`` atomically (imports torch lazily so step 1 runs without it)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, with a one-line error naming the file when it is empty, truncated or not JSON.

    Raises:
        InvalidArgument: the file is not valid UTF-8 JSON (a ``ValueError`` and an ``AetuneError``).
    """
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        what = "empty" if p.stat().st_size == 0 else f"not valid JSON ({str(e).splitlines()[0]})"
        raise InvalidArgument(f"{p} is {what}; delete it and re-run the step that writes it") from e
