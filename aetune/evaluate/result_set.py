"""A folder written as a set: built beside the old one, then swapped in, so readers never see half of it.

Step 5 writes many files into ``results/``; a failure half-way (a full disk, a killed session) must leave
the previous ``results/`` complete. ``staged_folder`` builds the new set in ``.results.staging-*`` next to
it, starting from hard links of the previous files (parts not re-made this run stay, at no disk cost), and
on success renames the old folder to ``.results.previous-*``, the new one to ``results`` and deletes the
old. Between those two renames there is no ``results/``: the next start finds the previous folder and puts
it back. Leftover staging folders of a killed run are deleted at the next start, and temporary files of
a killed single-file write (``aetune.io``'s ``.<name>.*.tmp``) are not carried into the new set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aetune.errors import AetuneError

log = logging.getLogger(__name__)

STAGING = "staging"
PREVIOUS = "previous"


def _siblings(final: Path, kind: str) -> list[Path]:
    """``.<name>.<kind>-*`` folders beside ``final``, oldest first."""
    return sorted(final.parent.glob(f".{final.name}.{kind}-*"), key=lambda p: p.stat().st_mtime)


def recover(final: Path) -> None:
    """Undo what a killed run left beside ``final``: delete staging folders, restore or delete previous ones.

    Raises:
        AetuneError: ``final`` exists and is not a folder.
    """
    if final.exists() and not final.is_dir():
        raise AetuneError(f"{final} is a file, not a folder: move or delete it, or pass another --output_dir")
    for stale in _siblings(final, STAGING):
        log.info("removing %s, left by an interrupted run", stale)
        shutil.rmtree(stale)
    previous = _siblings(final, PREVIOUS)
    if previous and not final.exists():
        log.warning("restoring %s from %s (a run was stopped while swapping results)", final, previous[-1])
        os.replace(previous.pop(), final)
    for old in previous:
        shutil.rmtree(old)


@dataclass
class StagedFolder:
    """The folder being built (``path``) and the previous files carried into it (``kept``, relative paths)."""

    path: Path
    kept: list[str] = field(default_factory=list)

    def fresh(self, name: str) -> Path:
        """An empty subfolder ``name``: a part re-made this run must not keep the previous run's files
        (a latent dataset with fewer shards than before would otherwise be read with the old extra ones)."""
        sub = self.path / name
        if sub.exists():
            shutil.rmtree(sub)
            self.kept = [k for k in self.kept if not k.startswith(f"{name}/")]
        sub.mkdir(parents=True)
        return sub


def _carry(src: Path, dest: Path) -> list[str]:
    """Hard-link (copy where links are refused) every file of ``src`` into ``dest``; the relative paths."""
    kept = []
    for f in sorted(src.rglob("*")):
        if not f.is_file():
            continue
        if f.name.startswith(".") and f.name.endswith(".tmp"):  # aetune.io's temp file of a killed write
            log.info("dropping %s, left by an interrupted write", f)
            continue
        rel = f.relative_to(src)
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, target)  # the files are never modified in place (only replaced), so sharing is safe
        except OSError as e:
            log.debug("cannot hard-link %s (%s): copying", f, e)
            shutil.copy2(f, target)
        kept.append(rel.as_posix())
    return kept


@contextlib.contextmanager
def staged_folder(final: str | os.PathLike[str]) -> Iterator[StagedFolder]:
    """Build the new content of ``final`` in a staging folder beside it; swap it in if the block succeeds.

    Args:
        final: the folder (e.g. ``<work_dir>/results``); its parent is created.

    Yields:
        The staged folder, holding the previous files (hard links). Write (or replace) files in it.
        On any exception it is deleted and ``final`` is untouched.

    Raises:
        AetuneError: ``final`` is a file, or its parent cannot be written (read-only, permission),
            naming the folder.
    """
    final = Path(final)
    recover(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(_mkdtemp(final, STAGING))
    except OSError as e:
        raise AetuneError(f"cannot write {final} ({e.strerror or e}): pass an --output_dir you can write to") from e
    try:
        kept = _carry(final, staging) if final.is_dir() else []
        staged = StagedFolder(staging, kept)
        yield staged
        _swap(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # nothing of it is needed; the error that got us here is raised
        raise


def _mkdtemp(final: Path, kind: str) -> str:
    """A new ``.<name>.<kind>-XXXX`` folder beside ``final`` with the mode a plain mkdir gives (umask)."""
    path = tempfile.mkdtemp(prefix=f".{final.name}.{kind}-", dir=final.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)
    return path


def _swap(staging: Path, final: Path) -> None:
    """``final`` <- ``staging``; the old ``final`` is removed only once the new one is in place."""
    previous = None
    if final.exists():
        previous = Path(_mkdtemp(final, PREVIOUS))
        os.replace(final, previous)  # onto the empty folder just made: a rename, never a copy
    try:
        os.replace(staging, final)
    except OSError:
        if previous is not None:
            os.replace(previous, final)
        raise
    if previous is not None:
        shutil.rmtree(previous)
