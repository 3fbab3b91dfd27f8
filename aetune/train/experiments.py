"""The experiment record: one entry per step-4 session in ``checkpoints/experiments.yaml``.

The file is a YAML list the user may annotate (each entry's ``notes``, comments between entries): a new
session appends its entry to the file's text, so what the user wrote stays byte for byte, and a file that
no longer parses is refused rather than overwritten.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import yaml

from aetune.errors import AetuneError
from aetune.io import atomic_write_text

EXPERIMENTS_FILE = "experiments.yaml"
"""Beside ``run_state.json`` in ``checkpoints/``."""


def _dump(entries: list[dict[str, Any]]) -> str:
    return yaml.safe_dump(entries, sort_keys=False, default_flow_style=False, allow_unicode=True)


def read_experiments(path: Path) -> list[dict[str, Any]]:
    """The entries of an experiments file; [] when it does not exist or holds no entries yet.

    Raises:
        AetuneError: the file is not a YAML list of mappings (hand-broken), naming it.
    """
    path = Path(path)
    if not path.is_file():
        return []
    fix = "fix it by hand or move it away (step 4 appends to it and never overwrites it)"
    try:
        entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise AetuneError(f"{path} is not valid YAML ({str(e).splitlines()[0]}): {fix}") from e
    if entries is None:  # empty, or comments only
        return []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise AetuneError(f"{path} is not a YAML list of experiment entries: {fix}")
    return entries


def append_experiment(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` to the experiments file atomically, keeping its earlier text (notes, comments) as is.

    Call it on rank 0 only.

    Args:
        path: ``checkpoints/experiments.yaml``.
        record: plain YAML-safe values (``experiment_record``).

    Raises:
        AetuneError: the existing file is hand-broken (it is left untouched).
    """
    path = Path(path)
    entries = read_experiments(path)
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    text = old + ("\n" if old and not old.endswith("\n") else "") + _dump([record])
    expected = _dump([*entries, record])
    if not _continues(text, expected):  # a flow-style list ("[]") cannot be continued as text
        text = expected
    atomic_write_text(path, text)


def _continues(text: str, expected: str) -> bool:
    """Whether the appended ``text`` reads as the entries dumped in ``expected``."""
    try:
        return _dump(yaml.safe_load(text)) == expected
    except yaml.YAMLError:
        return False


def data_fingerprint(relpaths_and_hashes: list[tuple[str, str]]) -> str:
    """16 hex characters of sha256 over the sorted (relpath, content hash) pairs of the training data.

    Order-independent; changes when an image is added, removed, renamed or edited.
    """
    h = hashlib.sha256()
    for relpath, digest in sorted(relpaths_and_hashes):
        h.update(f"{relpath}\t{digest}\n".encode())
    return h.hexdigest()[:16]


def experiment_record(
    *,
    config: dict[str, Any],
    fingerprint: str,
    start_weights: str | None,
    stages: list[str],
    best: dict[str, dict[str, float]],
    wall_seconds: float,
    images: int,
    note: str | None,
    started: float,
) -> dict[str, Any]:
    """One session's entry for ``append_experiment``.

    Args:
        config: the resolved config as a plain dict (``Config.to_dict()``).
        fingerprint: ``data_fingerprint`` of the training split.
        start_weights: what the first stage of this session started from (a path, a released model's name,
            or the previous stage's final weights); None = random initialisation.
        stages: the stages this session trained (resumed ones included), e.g. ``["1", "2"]``.
        best: stage -> its best validation metrics, e.g. ``{"1": {"psnr": 27.1, "rfid": 3.2}}``.
        wall_seconds: the session's training time.
        images: training images seen in this session (batches x global batch size).
        note: ``--note``; the entry's ``notes`` field (empty for the user to fill in later otherwise).
        started: ``time.time()`` when the session began.
    """
    return {
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
        "family": config.get("model", {}).get("family"),
        "preset": config.get("preset"),
        "notes": note or "",
        "stages": [str(s) for s in stages],
        "best": {str(s): {k: float(v) for k, v in m.items()} for s, m in best.items()},
        "start_weights": start_weights,
        "data_fingerprint": fingerprint,
        "wall_time_s": round(float(wall_seconds), 1),
        "images": int(images),
        "images_per_s": round(images / wall_seconds, 2) if wall_seconds > 0 else None,
        "config": config,
    }
