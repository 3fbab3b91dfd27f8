"""Step 3's work: scan a dataset, find near-duplicates, split it per user, write ``data/*.json``, print the table."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aetune.data.neardup import MIN_CORRELATION, MIN_OVERLAP, find_near_duplicates
from aetune.data.prepared import (
    DATASET_FILE,
    DEFAULT_NAME,
    LABELS_FILE,
    SPLIT_FILE,
    check_dataset_name,
    data_dir,
)
from aetune.data.scan import ScanResult, scan_dataset
from aetune.data.split import check_val_ratio, duplicate_groups, split_groups, split_records
from aetune.errors import AetuneError
from aetune.io import atomic_path, atomic_write_json, read_json

log = logging.getLogger(__name__)


@dataclass
class PrepareSummary:
    """What step 3 did, for the printed table and the caller."""

    data_root: Path
    labels: dict[str, int]
    rows: list[tuple[str, int, int, int, int]]  # (user, label, train, val, rejected)
    rejected: int
    duplicates: int  # exact copies beyond the first of each group
    near_duplicates: int  # near-duplicate pairs
    empty_users: list[str]
    changed: bool  # False when data/*.json already held exactly this


def check_output_dir(work_dir: str | Path) -> None:
    """Fail before any work when ``<work_dir>/data`` cannot be written.

    Raises:
        AetuneError: a part of the path is a file, or the deepest existing folder is not writable
            (read-only file system, another user's folder).
    """
    work_dir = Path(work_dir)
    p = data_dir(work_dir)
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise AetuneError(f"--output_dir {work_dir}: {p} is a file, not a folder; pass a folder path")
    if not os.access(p, os.W_OK | os.X_OK):
        raise AetuneError(
            f"--output_dir {work_dir}: no permission to write in {p} (read-only or not yours); "
            "pass a writable folder (on Kaggle /kaggle/working)"
        )


def _documents(scan: ScanResult, name: str, val_ratio: float, seed: int) -> dict[str, Any]:
    labels = {user: i for i, user in enumerate(scan.users)}
    pairs = find_near_duplicates(scan.accepted, scan.fingerprints)
    links = [(p.a, p.b) for p in pairs]
    train, val = split_records(scan.accepted, val_ratio, seed, links)
    accepted = [{**asdict(r), "label": labels[r.user]} for r in scan.accepted]
    dataset = {
        "name": name,
        "data_root": str(scan.data_root),
        "num_users": len(labels),
        "num_images": len(accepted),
        "accepted": accepted,
        "rejected": scan.rejected,
        "duplicates": duplicate_groups(scan.accepted),
        "near_duplicates": [asdict(p) for p in pairs],
        "near_duplicate_check": {
            "method": "NCC of high-pass detail over time shifts (aetune.data.neardup)",
            "scope": "images of one user and one size",
            "min_correlation": MIN_CORRELATION,
            "min_overlap": MIN_OVERLAP,
        },
        "groups": [g for g in split_groups(scan.accepted, links) if len(g) > 1],
        "empty_users": scan.empty_users,
        "conversion": "decoded and converted to RGB uint8 by aetune.data.images.to_rgb",
    }
    root = str(scan.data_root)
    split = {"seed": seed, "val_ratio": val_ratio, "data_root": root, "train": train, "val": val}
    return {LABELS_FILE: labels, DATASET_FILE: dataset, SPLIT_FILE: split}


def _existing(path: Path) -> Any:
    """What ``path`` holds now: parsed JSON, or None when absent or unreadable as JSON (step 3 rewrites it)."""
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except ValueError:  # invalid JSON, or bytes that are not UTF-8
        log.warning("replacing %s: it is empty or not valid JSON", path)
        return None


def _report_moves(old: Any, new: dict[str, Any]) -> None:
    """Say how many images changed side against the split.json being replaced (only reported, never used)."""
    if not isinstance(old, dict) or not all(isinstance(old.get(k), list) for k in ("train", "val")):
        return
    if (old.get("seed"), old.get("val_ratio")) != (new["seed"], new["val_ratio"]):
        log.info("split.json had seed %s, val_ratio %s: new split", old.get("seed"), old.get("val_ratio"))
        return
    to_val = len(set(old["train"]) & set(new["val"]))
    to_train = len(set(old["val"]) & set(new["train"]))
    if to_val or to_train:
        log.warning(
            "%d images moved from train to val and %d from val to train against the previous split.json "
            "(the rule or the duplicates changed: see docs/data.md)",
            to_val,
            to_train,
        )


def prepare_dataset(
    data_root: str | Path,
    work_dir: str | Path,
    name: str = DEFAULT_NAME,
    val_ratio: float = 0.1,
    seed: int = 42,
    progress: bool = True,
) -> PrepareSummary:
    """Scan ``data_root``, split it, and write ``labels.json``, ``dataset.json``, ``split.json``.

    The three files are written as a set: every changed file goes to a temporary file first and
    they are renamed into place only when all are written, so a failure (disk full) leaves the
    previous set. Unchanged files are not rewritten, so a re-run on the same input leaves them
    untouched (``changed`` is False). Existing files that are not valid JSON are replaced.

    Raises:
        AetuneError: bad ``val_ratio`` or ``name``, unwritable ``work_dir``, missing root, no usable image, or no
            training image (nothing is written then).
    """
    check_val_ratio(val_ratio)
    check_dataset_name(name)
    work_dir = Path(work_dir)
    check_output_dir(work_dir)
    scan = scan_dataset(data_root, progress=progress)
    docs = _documents(scan, name, val_ratio, seed)
    if not docs[SPLIT_FILE]["train"]:
        raise AetuneError(
            f"no training image: all {len(docs[SPLIT_FILE]['val'])} images fell in validation; "
            "add images or lower --val_ratio"
        )
    out = data_dir(work_dir)
    old = {fname: _existing(out / fname) for fname in docs}
    _report_moves(old[SPLIT_FILE], docs[SPLIT_FILE])
    changed = {fname: doc for fname, doc in docs.items() if old[fname] != doc}
    with contextlib.ExitStack() as stack:
        for fname, doc in changed.items():
            # atomic_path renames its temporary file onto the destination only if the whole block succeeds.
            atomic_write_json(stack.enter_context(atomic_path(out / fname)), doc)
    labels, split = docs[LABELS_FILE], docs[SPLIT_FILE]
    train, val = set(split["train"]), set(split["val"])
    rows = []
    for user, label in labels.items():
        mine = [r.relpath for r in scan.accepted if r.user == user]
        rejected = sum(1 for r in scan.rejected if r["path"].split("/")[0] == user)
        rows.append((user, label, sum(p in train for p in mine), sum(p in val for p in mine), rejected))
    return PrepareSummary(
        data_root=scan.data_root,
        labels=labels,
        rows=rows,
        rejected=len(scan.rejected),
        duplicates=sum(len(g) - 1 for g in docs[DATASET_FILE]["duplicates"]),
        near_duplicates=len(docs[DATASET_FILE]["near_duplicates"]),
        empty_users=scan.empty_users,
        changed=bool(changed),
    )


def format_table(summary: PrepareSummary) -> str:
    """The per-user table (user, label, train, val, rejected) with totals."""
    width = max([len("user"), *(len(r[0]) for r in summary.rows)])
    lines = [f"{'user':<{width}}  label  train    val  rejected", "-" * (width + 32)]
    for user, label, tr, va, rej in summary.rows:
        lines.append(f"{user:<{width}}  {label:>5}  {tr:>5}  {va:>5}  {rej:>8}")
    tr = sum(r[2] for r in summary.rows)
    va = sum(r[3] for r in summary.rows)
    lines.append("-" * (width + 32))
    lines.append(f"{'total':<{width}}  {len(summary.rows):>5}  {tr:>5}  {va:>5}  {summary.rejected:>8}")
    return "\n".join(lines)


def log_summary(summary: PrepareSummary, work_dir: Path) -> None:
    """Step 3's report of a prepared folder dataset: the per-user table, then what was excluded and why."""
    log.info("data root: %s", summary.data_root)
    log.info(format_table(summary))
    if summary.empty_users:
        log.warning("excluded user folders with no usable image: %s", ", ".join(summary.empty_users))
    if summary.duplicates or summary.near_duplicates:
        log.warning(
            "%d exact duplicate images and %d near-duplicate pairs (each group kept on one side of the split): "
            "see data/dataset.json",
            summary.duplicates,
            summary.near_duplicates,
        )
    no_train = [row[0] for row in summary.rows if row[2] == 0]
    if no_train:
        log.warning("users with no training image (all drawn for validation): %s", ", ".join(no_train))
    if summary.rejected:
        log.warning("%d files rejected, with reasons, in data/dataset.json", summary.rejected)
    if summary.changed:
        log.info("wrote %s/data/{labels,dataset,split}.json", work_dir)
    else:
        log.info("%s/data is up to date: nothing changed", work_dir)
