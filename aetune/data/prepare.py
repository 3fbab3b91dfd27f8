"""Step 3's work: scan a dataset, split it per user, write ``data/*.json``, print the table."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aetune.data.prepared import DATASET_FILE, LABELS_FILE, SPLIT_FILE, data_dir
from aetune.data.scan import ScanResult, scan_dataset
from aetune.data.split import duplicate_groups, split_records
from aetune.io import atomic_write_json, read_json

log = logging.getLogger(__name__)


@dataclass
class PrepareSummary:
    """What step 3 did, for the printed table and the caller."""

    data_root: Path
    labels: dict[str, int]
    rows: list[tuple[str, int, int, int, int]]  # (user, label, train, val, rejected)
    rejected: int
    duplicates: int
    empty_users: list[str]
    changed: bool  # False when data/*.json already held exactly this


def _previous_sides(work_dir: Path, seed: int, val_ratio: float) -> dict[str, str] | None:
    path = data_dir(work_dir) / SPLIT_FILE
    if not path.is_file():
        return None
    old = read_json(path)
    if old.get("seed") != seed or old.get("val_ratio") != val_ratio:
        log.info("old split.json: seed %s, val_ratio %s; new split", old.get("seed"), old.get("val_ratio"))
        return None
    return {**{p: "train" for p in old["train"]}, **{p: "val" for p in old["val"]}}


def _documents(
    scan: ScanResult, name: str, val_ratio: float, seed: int, previous: dict[str, str] | None
) -> dict[str, Any]:
    labels = {user: i for i, user in enumerate(scan.users)}
    train, val = split_records(scan.accepted, val_ratio, seed, previous)
    accepted = [{**asdict(r), "label": labels[r.user]} for r in scan.accepted]
    dataset = {
        "name": name,
        "data_root": str(scan.data_root),
        "num_users": len(labels),
        "num_images": len(accepted),
        "accepted": accepted,
        "rejected": scan.rejected,
        "duplicates": duplicate_groups(scan.accepted),
        "empty_users": scan.empty_users,
        "conversion": "decoded and converted to RGB uint8 by aetune.data.images.to_rgb",
    }
    root = str(scan.data_root)
    split = {"seed": seed, "val_ratio": val_ratio, "data_root": root, "train": train, "val": val}
    return {LABELS_FILE: labels, DATASET_FILE: dataset, SPLIT_FILE: split}


def prepare_dataset(
    data_root: str | Path,
    work_dir: str | Path,
    name: str = "microdoppler",
    val_ratio: float = 0.1,
    seed: int = 42,
    progress: bool = True,
) -> PrepareSummary:
    """Scan ``data_root``, split it, and write ``labels.json``, ``dataset.json``, ``split.json``.

    Files are written atomically and only when their content changes, so a re-run on the same
    input leaves them untouched (``changed`` is False).

    Raises:
        AetuneError: missing root or no usable image (nothing is written then).
    """
    work_dir = Path(work_dir)
    scan = scan_dataset(data_root, progress=progress)
    docs = _documents(scan, name, val_ratio, seed, _previous_sides(work_dir, seed, val_ratio))
    out = data_dir(work_dir)
    changed = False
    for fname, doc in docs.items():
        path = out / fname
        if not path.is_file() or read_json(path) != doc:
            atomic_write_json(path, doc)
            changed = True
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
        empty_users=scan.empty_users,
        changed=changed,
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
