"""Scanning a folder-per-user dataset: find the root, decode every file, record what is rejected."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import UnidentifiedImageError
from tqdm.auto import tqdm

from aetune.data.images import DECOMPRESSION_BOMB, IMAGE_SUFFIXES, fingerprint, open_image, to_rgb
from aetune.errors import AetuneError

log = logging.getLogger(__name__)

MIN_IMAGE_SIDE = 16
"""Smaller images carry no usable spectrogram (and break f16 autoencoders after resizing)."""
SYNTHETIC_MANIFESTS = frozenset({"synthetic.json", "synthetic_video.json", "phantoms.json", "synthetic_paired.json"})
"""The manifests the built-in synthetic sets (``aetune.data.synthetic``) keep at their root: not data, so the
scanners neither accept nor reject them."""
OUTSIDE_USER_FOLDER = "file outside any user folder"


def is_synthetic_manifest(path: Path) -> bool:
    """True for a built-in synthetic set's own manifest (a known name holding ``{"parameters": ...}``)."""
    if path.name not in SYNTHETIC_MANIFESTS or not path.is_file():
        return False
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and "parameters" in doc


def rejection_summary(rejected: list[dict[str, str]], limit: int = 3) -> str:
    """The commonest rejection reasons, counted, each with an example: what a user reads when nothing was
    accepted and therefore no ``dataset.json`` was written."""
    groups: dict[str, list[str]] = {}
    for r in rejected:
        groups.setdefault(r["reason"], []).append(r["path"])
    top = sorted(groups.items(), key=lambda kv: -len(kv[1]))[:limit]
    parts = [f"{len(paths)} x {reason} (e.g. {paths[0]})" for reason, paths in top]
    if not parts:
        return "nothing found"
    more = len(groups) - len(top)
    return "; ".join(parts) + (f"; and {more} other reasons" if more > 0 else "")


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders numbers by value: ``ID_2`` < ``ID_10``; case-insensitive text."""
    return tuple((0, int(t)) if t.isdigit() else (1, t.lower()) for t in re.split(r"(\d+)", name) if t)


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX" or name == "Thumbs.db" or name == "desktop.ini"


@dataclass
class ImageRecord:
    """One accepted image."""

    relpath: str  # POSIX path relative to the data root; first part is the user folder
    user: str
    width: int
    height: int
    mode: str  # Pillow mode before conversion to RGB (L, RGBA, P, I;16, ...)
    format: str  # PNG, JPEG, ...
    sha1: str  # SHA-1 of the decoded RGB pixels and their shape: equal for exact duplicates


@dataclass
class ScanResult:
    """What a scan found under ``data_root``."""

    data_root: Path
    users: list[str]  # user folders with at least one accepted image, natural order
    accepted: list[ImageRecord] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}
    empty_users: list[str] = field(default_factory=list)
    fingerprints: dict[str, np.ndarray] = field(default_factory=dict)  # relpath -> images.fingerprint


def _has_user_folders(folder: Path) -> bool:
    """True when ``folder`` holds sub-folders that directly hold image files."""
    for sub in folder.iterdir():
        if (
            sub.is_dir()
            and not _is_hidden(sub.name)
            and any(f.suffix.lower() in IMAGE_SUFFIXES for f in sub.iterdir() if f.is_file())
        ):
            return True
    return False


def descend_wrappers(root: str | Path, holds_data: Callable[[Path], bool], expected: str) -> Path:
    """``root`` or, through single wrapper folders, the folder below it where ``holds_data`` is true.

    Kaggle datasets often unpack as ``slug/slug/ID_1``; one visible sub-folder and nothing else is such a
    wrapper. Every data source (images, videos, volumes) finds its root this way.

    Args:
        root: ``--data_root``.
        holds_data: whether a folder is the root (e.g. it holds user folders of images).
        expected: what ``--data_root`` should be, in words, for the error.

    Raises:
        AetuneError: ``root`` does not exist or is a file.
    """
    p = Path(root).expanduser()
    if not p.is_dir():
        raise AetuneError(f"--data_root {p} {'is a file' if p.exists() else 'does not exist'}: pass {expected}")
    p = p.resolve()
    for _ in range(4):
        if holds_data(p):
            return p
        visible = [c for c in p.iterdir() if not _is_hidden(c.name)]
        subdirs = [c for c in visible if c.is_dir()]
        if len(subdirs) != 1 or len(visible) != 1:
            break
        log.info("data root: descending into wrapper folder %s", subdirs[0].name)
        p = subdirs[0]
    return p


def find_data_root(root: str | Path) -> Path:
    """The folder whose sub-folders are the users (see :func:`descend_wrappers`).

    Raises:
        AetuneError: ``root`` does not exist or is not a folder.
    """
    return descend_wrappers(root, _has_user_folders, "the folder that holds one folder per user")


def discover_kaggle_input(base: str | Path = "/kaggle/input") -> Path:
    """Pick the dataset under Kaggle's input mount that looks like one folder per user.

    Datasets mount at ``/kaggle/input/datasets/<owner>/<slug>/`` (current) or ``/kaggle/input/<slug>/``
    (older notebooks); weights datasets are skipped because they hold no user folders of images.
    The candidate with the most images wins; the choice is logged.

    Raises:
        AetuneError: nothing under ``base`` holds user folders of images.
    """
    base = Path(base)
    if not base.is_dir():
        raise AetuneError(f"{base} does not exist: attach your dataset to the notebook or pass --data_root")
    candidates: list[tuple[int, Path]] = []
    for folder in sorted(p for p in base.rglob("*") if p.is_dir() and len(p.relative_to(base).parts) <= 5):
        if _is_hidden(folder.name) or not _has_user_folders(folder):
            continue
        n = sum(
            1
            for sub in folder.iterdir()
            if sub.is_dir()
            for f in sub.iterdir()
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        )
        candidates.append((n, folder))
    if not candidates:
        raise AetuneError(f"no folder of user folders with images under {base}: attach the dataset or pass --data_root")
    n, chosen = max(candidates, key=lambda c: (c[0], -len(c[1].parts)))
    others = ", ".join(str(p) for _, p in candidates if p != chosen)
    log.info("--kaggle: using %s (%d images)%s", chosen, n, f"; also seen: {others}" if others else "")
    return chosen


def _check_image(path: Path) -> tuple[ImageRecord | None, np.ndarray | None, str]:
    """Decode ``path`` fully; return (record, fingerprint, "") or (None, None, reason)."""
    size = path.stat().st_size
    if size == 0:
        return None, None, "empty file (0 bytes)"
    try:
        with open_image(path) as img:
            fmt = img.format or "?"
            mode = img.mode
            img.load()
            if min(img.size) < MIN_IMAGE_SIDE:
                return None, None, f"too small ({img.width}x{img.height}, minimum side {MIN_IMAGE_SIDE} px)"
            rgb = to_rgb(img)
    except DECOMPRESSION_BOMB as e:
        return None, None, f"refused as a possible decompression bomb ({e})"
    except UnidentifiedImageError:
        return None, None, "not a decodable image (unknown or corrupt header)"
    except (OSError, ValueError, SyntaxError) as e:
        # Pillow signals truncated/corrupt data with these; the message names the defect.
        return None, None, f"corrupt or truncated image ({e})"
    digest = hashlib.sha1(f"{rgb.shape}".encode() + rgb.tobytes()).hexdigest()
    return ImageRecord("", "", rgb.shape[1], rgb.shape[0], mode, fmt, digest), fingerprint(rgb), ""


def scan_dataset(data_root: str | Path, progress: bool = True) -> ScanResult:
    """Decode every file under the user folders of ``data_root`` and sort it into accepted/rejected.

    Hidden files, ``__MACOSX`` folders, files outside user folders, non-image extensions, empty,
    corrupt, truncated and too-small images, and decompression bombs are rejected with a reason; one
    bad file never stops the scan. Images in sub-folders of a user folder belong to that user.

    Raises:
        AetuneError: the root does not exist, or no user folder holds a usable image.
    """
    root = find_data_root(data_root)
    result = ScanResult(data_root=root, users=[])
    user_dirs = []
    for entry in sorted(root.iterdir(), key=lambda p: natural_key(p.name)):
        rel = entry.name
        if _is_hidden(entry.name):
            result.rejected.append({"path": rel, "reason": "hidden file or folder (__MACOSX, dotfile)"})
        elif entry.is_dir():
            user_dirs.append(entry)
        elif not is_synthetic_manifest(entry):
            result.rejected.append({"path": rel, "reason": OUTSIDE_USER_FOLDER})
    files: list[tuple[str, Path]] = []
    for user_dir in user_dirs:
        for f in sorted(user_dir.rglob("*"), key=lambda p: natural_key(p.relative_to(user_dir).as_posix())):
            rel = f.relative_to(root).as_posix()
            hidden_part = next((part for part in f.relative_to(user_dir).parts if _is_hidden(part)), None)
            if hidden_part is not None:
                if f.is_file():
                    result.rejected.append({"path": rel, "reason": f"hidden file or folder ({hidden_part})"})
            elif f.is_file():
                files.append((user_dir.name, f))
    counts: dict[str, int] = {d.name: 0 for d in user_dirs}
    for user, f in tqdm(files, desc="checking images", unit="img", disable=not progress):
        rel = f.relative_to(root).as_posix()
        if f.suffix.lower() not in IMAGE_SUFFIXES:
            result.rejected.append({"path": rel, "reason": f"not an image extension ({f.suffix or 'none'})"})
            continue
        record, prints, reason = _check_image(f)
        if record is None or prints is None:
            result.rejected.append({"path": rel, "reason": reason})
            continue
        record.relpath, record.user = rel, user
        result.accepted.append(record)
        result.fingerprints[rel] = prints
        counts[user] += 1
    result.users = [d.name for d in user_dirs if counts[d.name] > 0]
    result.empty_users = [d.name for d in user_dirs if counts[d.name] == 0]
    if not result.accepted:
        loose = [
            r["path"]
            for r in result.rejected
            if r["reason"] == OUTSIDE_USER_FOLDER and Path(r["path"]).suffix.lower() in IMAGE_SUFFIXES
        ]
        if loose and not user_dirs:
            raise AetuneError(
                f"the {len(loose)} images lie directly in {root} (e.g. {loose[0]}), with no user folder: step 3 "
                f"needs one sub-folder of images per user (class), e.g. {root / 'user_1'}; for a single class, "
                "move them all into one sub-folder"
            )
        raise AetuneError(
            f"no usable image under {root} ({len(user_dirs)} folders, {len(result.rejected)} rejected): "
            f"{rejection_summary(result.rejected)}; expected one folder per user holding png/jpg/bmp/tif/webp images"
        )
    return result
