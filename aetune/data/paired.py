"""Paired restoration data (LQ -> GT): scan, pair by name, validate, split per degradation type, read back.

Layouts under the data root (found through single wrapper folders, as Kaggle unpacks datasets):
- ``<root>/<Type>/LQ/`` and ``<root>/<Type>/GT/``: one folder per degradation type (Blur, Noise, ...);
- ``<root>/LQ/`` and ``<root>/GT/`` (flat): one type, named :data:`FLAT_TYPE`.
``LQ`` and ``GT`` match case-insensitively. A file pairs with the file of the same name on the other
side, extension aside (``LQ/0001.jpg`` with ``GT/0001.png``); sub-folders are part of the name.

Every file ends up accepted (in a pair) or rejected with a reason: hidden, not an image extension,
undecodable or too small (the checks of ``aetune.data.scan``), no partner on the other side, two files of
one name on one side (ambiguous), a partner that was rejected, or LQ and GT sizes that differ (unless
``resize_mismatched``: the loaders then resize both to the training size, as they resize every image).

Records reuse step 3's ``data/*.json`` contract: an accepted pair is an image record whose ``relpath`` is
the GT file and whose ``user`` is the degradation type (so every per-user table and metric of steps 4-5
becomes per type), with ``lq`` naming the LQ file. Pairs of a validation folder given separately
(``--val_root``) carry the prefix :data:`VAL_PREFIX` (``val://Blur/GT/0001.png``) and are resolved
against that folder: the two roots may hold the same relative names.

The split reuses ``aetune.data.split`` with the type as the stratum and the GT pixels as the content:
pairs that share a clean image (or a near-duplicate one, ``aetune.data.neardup``) stay on one side, every
type of two or more clean images gets validation pairs, and the assignment depends on the GT content
score alone, so a fresh work directory gives the same split and added pairs do not move old ones.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from aetune.data.images import IMAGE_SUFFIXES
from aetune.data.neardup import find_near_duplicates
from aetune.data.prepare import check_output_dir
from aetune.data.prepared import DATASET_FILE, LABELS_FILE, SPLIT_FILE, PreparedData, Sample, data_dir
from aetune.data.scan import (
    ImageRecord,
    _check_image,
    _is_hidden,
    is_synthetic_manifest,
    natural_key,
    rejection_summary,
)
from aetune.data.split import check_val_ratio, split_groups, split_records
from aetune.errors import AetuneError
from aetune.io import atomic_path, atomic_write_json, read_json

log = logging.getLogger(__name__)

LQ_DIR, GT_DIR = "LQ", "GT"
FLAT_TYPE = "all"
"""Degradation type of a flat ``<root>/{LQ,GT}/`` layout."""
VAL_PREFIX = "val://"
"""Prefix of the relpaths of pairs under ``--val_root`` (resolved against it, not the data root)."""
KIND = "paired"
"""``dataset.json["kind"]`` of a paired dataset (image datasets carry no kind)."""


@dataclass
class PairRecord:
    """One accepted LQ/GT pair (paths POSIX, relative to the root they were found under, with its prefix)."""

    relpath: str  # the GT file: the pair's key in split.json
    lq: str  # the LQ file
    user: str  # the degradation type (the per-user machinery of steps 4-5 reports it)
    width: int  # GT size
    height: int
    lq_width: int
    lq_height: int
    sha1: str  # GT pixel digest (aetune.data.scan): the split unit
    lq_sha1: str


@dataclass
class PairScan:
    """What a paired scan found."""

    root: Path
    layout: str  # "types" or "flat"
    types: list[str] = field(default_factory=list)  # types with at least one accepted pair, natural order
    accepted: list[PairRecord] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}
    notes: list[dict[str, str]] = field(default_factory=list)  # accepted but worth a look: {"path", "reason"}
    fingerprints: dict[str, np.ndarray] = field(default_factory=dict)  # GT relpath -> images.fingerprint


def _child_dir(folder: Path, name: str) -> Path | None:
    """The sub-folder of ``folder`` called ``name`` (case-insensitive), or None."""
    hits = [c for c in folder.iterdir() if c.is_dir() and c.name.lower() == name.lower()]
    return hits[0] if hits else None


def _is_pair_folder(folder: Path) -> bool:
    return _child_dir(folder, LQ_DIR) is not None or _child_dir(folder, GT_DIR) is not None


def find_paired_root(root: str | Path) -> tuple[Path, str]:
    """The folder holding ``LQ/GT`` (flat) or ``<Type>/{LQ,GT}`` (types), through single wrapper folders.

    Returns:
        (folder, ``"flat"`` or ``"types"``).

    Raises:
        AetuneError: ``root`` is missing, not a folder, or holds neither layout.
    """
    p = Path(root).expanduser()
    if not p.is_dir():
        what = "does not exist" if not p.exists() else "is a file"
        raise AetuneError(f"paired data root {p} {what}: pass the folder holding <Type>/LQ, <Type>/GT (or LQ, GT)")
    p = p.resolve()
    for _ in range(5):
        if _is_pair_folder(p):
            return p, "flat"
        subdirs = [c for c in p.iterdir() if c.is_dir() and not _is_hidden(c.name)]
        if any(_is_pair_folder(c) for c in subdirs):
            return p, "types"
        visible = [c for c in p.iterdir() if not _is_hidden(c.name)]
        if len(subdirs) == 1 and len(visible) == 1:
            p = subdirs[0]
            continue
        break
    raise AetuneError(
        f"no LQ/ and GT/ folders under {Path(root)}: expected <root>/<Degradation>/LQ and <root>/<Degradation>/GT "
        "(or a flat <root>/LQ and <root>/GT) with images of the same names"
    )


def _side_files(side: Path | None, root: Path, rejected: list[dict[str, str]]) -> dict[str, list[Path]]:
    """Image files of one side (LQ or GT) by name without extension; hidden and non-image files rejected."""
    by_key: dict[str, list[Path]] = defaultdict(list)
    if side is None:
        return by_key
    for f in sorted(side.rglob("*"), key=lambda p: natural_key(p.relative_to(side).as_posix())):
        rel = f.relative_to(root).as_posix()
        hidden = next((part for part in f.relative_to(side).parts if _is_hidden(part)), None)
        if hidden is not None:
            if f.is_file():
                rejected.append({"path": rel, "reason": f"hidden file or folder ({hidden})"})
        elif f.is_file():
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                rejected.append({"path": rel, "reason": f"not an image extension ({f.suffix or 'none'})"})
            else:
                by_key[f.relative_to(side).with_suffix("").as_posix()].append(f)
    return by_key


def _pair_type(folder: Path, kind: str, root: Path, prefix: str, resize_mismatched: bool, scan: PairScan) -> None:
    """Pair, decode and check the files of one type folder into ``scan``."""
    lq_dir, gt_dir = _child_dir(folder, LQ_DIR), _child_dir(folder, GT_DIR)
    for entry in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
        if entry not in (lq_dir, gt_dir) and not (folder == root and is_synthetic_manifest(entry)):
            rel = entry.relative_to(root).as_posix()
            reason = "hidden file or folder" if _is_hidden(entry.name) else f"outside {LQ_DIR}/ and {GT_DIR}/"
            scan.rejected.append({"path": rel, "reason": reason})
    lq, gt = _side_files(lq_dir, root, scan.rejected), _side_files(gt_dir, root, scan.rejected)

    def reject(paths: Sequence[Path], reason: str) -> None:
        scan.rejected.extend({"path": p.relative_to(root).as_posix(), "reason": reason} for p in paths)

    for key in sorted(lq.keys() | gt.keys(), key=natural_key):
        lqs, gts = lq.get(key, []), gt.get(key, [])
        if not gts:
            reject(lqs, f"unpaired: no {GT_DIR}/{key}.* beside this {LQ_DIR} image")
            continue
        if not lqs:
            reject(gts, f"unpaired: no {LQ_DIR}/{key}.* beside this {GT_DIR} image")
            continue
        if len(lqs) > 1 or len(gts) > 1:
            names = ", ".join(p.relative_to(root).as_posix() for p in lqs + gts)
            reject(lqs + gts, f"ambiguous name '{key}': several files pair with it ({names}); keep one per side")
            continue
        lq_rec, _, lq_reason = _check_image(lqs[0])
        gt_rec, gt_print, gt_reason = _check_image(gts[0])
        if lq_rec is None or gt_rec is None or gt_print is None:
            reject(lqs, lq_reason or f"its {GT_DIR} partner was rejected ({gt_reason})")
            reject(gts, gt_reason or f"its {LQ_DIR} partner was rejected ({lq_reason})")
            continue
        lq_size, gt_size = (lq_rec.width, lq_rec.height), (gt_rec.width, gt_rec.height)
        if lq_size != gt_size and not resize_mismatched:
            why = (
                f"size mismatch: {LQ_DIR} {lq_size[0]}x{lq_size[1]}, {GT_DIR} {gt_size[0]}x{gt_size[1]} "
                "(pass --pair_resize to resize both to the training size)"
            )
            reject(lqs + gts, why)
            continue
        rel_gt, rel_lq = gts[0].relative_to(root).as_posix(), lqs[0].relative_to(root).as_posix()
        record = PairRecord(prefix + rel_gt, prefix + rel_lq, kind, *gt_size, *lq_size, gt_rec.sha1, lq_rec.sha1)
        if lq_rec.sha1 == gt_rec.sha1:
            scan.notes.append({"path": record.relpath, "reason": "LQ identical to GT: nothing to restore"})
        scan.accepted.append(record)
        scan.fingerprints[record.relpath] = gt_print


def scan_pairs(
    data_root: str | Path, resize_mismatched: bool = False, prefix: str = "", progress: bool = True
) -> PairScan:
    """Scan a paired dataset: every file accepted in a pair or rejected with a reason.

    Args:
        data_root: the folder (or a wrapper above it) holding ``<Type>/{LQ,GT}`` or ``{LQ,GT}``.
        resize_mismatched: accept pairs whose LQ and GT sizes differ.
        prefix: put before every relpath (:data:`VAL_PREFIX` for a validation root).
        progress: show a progress bar per type.

    Raises:
        AetuneError: no layout found, or no usable pair.
    """
    root, layout = find_paired_root(data_root)
    scan = PairScan(root=root, layout=layout)
    if layout == "flat":
        folders = [(root, FLAT_TYPE)]
    else:
        folders = []
        for entry in sorted(root.iterdir(), key=lambda p: natural_key(p.name)):
            if _is_hidden(entry.name):
                scan.rejected.append({"path": entry.name, "reason": "hidden file or folder (__MACOSX, dotfile)"})
            elif not entry.is_dir():
                if not is_synthetic_manifest(entry):
                    scan.rejected.append({"path": entry.name, "reason": "file outside any degradation folder"})
            elif not _is_pair_folder(entry):
                scan.rejected.append({"path": entry.name, "reason": f"folder without {LQ_DIR}/ or {GT_DIR}/ inside"})
            else:
                folders.append((entry, entry.name))
    for folder, kind in tqdm(folders, desc="checking pairs", unit="type", disable=not progress):
        _pair_type(folder, kind, root, prefix, resize_mismatched, scan)
    seen = {r.user for r in scan.accepted}
    scan.types = [k for _, k in folders if k in seen]
    if not scan.accepted:
        what = f"validation pair (--val_root {data_root})" if prefix else "LQ/GT pair"
        if not scan.rejected:
            raise AetuneError(
                f"no usable {what} under {root}: its {LQ_DIR}/ and {GT_DIR}/ folders hold no file; put the degraded "
                f"images in {LQ_DIR}/ and the clean ones, of the same names, in {GT_DIR}/"
            )
        first = scan.rejected[0]
        raise AetuneError(
            f"no usable {what} under {root} ({len(scan.rejected)} files rejected, first: {first['path']}: "
            f"{first['reason']}; {rejection_summary(scan.rejected)}): each {LQ_DIR} image needs a decodable "
            f"{GT_DIR} image of the same name and size"
        )
    return scan


def pair_duplicates(records: Sequence[PairRecord]) -> list[dict[str, Any]]:
    """Groups of pairs that share their GT pixels, with the reason (they are kept on one side of the split).

    Returns:
        ``[{"pairs": [relpath, ...], "reason": str}]`` in natural order of the first relpath.
    """
    groups: dict[str, list[PairRecord]] = defaultdict(list)
    for r in records:
        groups[r.sha1].append(r)
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        same_lq = len({m.lq_sha1 for m in members}) == 1
        reason = "identical LQ and GT pixels: exact copies" if same_lq else "identical GT pixels, different LQ"
        out.append({"pairs": sorted((m.relpath for m in members), key=natural_key), "reason": reason})
    return sorted(out, key=lambda g: natural_key(g["pairs"][0]))


def _units(records: Sequence[PairRecord]) -> list[ImageRecord]:
    """Pairs as the image records ``aetune.data.split`` groups: the type as the user, the GT as the content."""
    return [ImageRecord(r.relpath, r.user, r.width, r.height, "", "", r.sha1) for r in records]


def gt_links(scan: PairScan) -> list[tuple[str, str]]:
    """Near-duplicate GT pairs of one type (``aetune.data.neardup``: shifted windows of one recording)."""
    return [(d.a, d.b) for d in find_near_duplicates(_units(scan.accepted), scan.fingerprints)]


def split_pairs(
    records: Sequence[PairRecord], val_ratio: float, seed: int, links: Sequence[tuple[str, str]] = ()
) -> tuple[list[str], list[str]]:
    """Train and val relpaths, split per degradation type by ``aetune.data.split.split_records``.

    The type is the stratum and the GT pixels the content, so every rule of the image split holds: the
    assignment is a function of the seeded GT content score alone (stable without memory), pairs sharing
    a GT or a near-duplicate GT stay on one side, and every type of two or more GT gets a validation pair.
    """
    return split_records(_units(records), val_ratio, seed, links)


@dataclass
class PairedSummary:
    """What :func:`prepare_paired_dataset` did, for the printed table (``aetune.data.prepare.format_table``)."""

    data_root: Path
    val_root: Path | None
    labels: dict[str, int]  # type -> label
    rows: list[tuple[str, int, int, int, int]]  # (type, label, train, val, rejected)
    rejected: int
    duplicates: int  # pairs beyond the first of each group sharing a GT
    notes: int
    changed: bool


def _records(scan: PairScan, labels: dict[str, int]) -> list[dict[str, Any]]:
    return [{**asdict(r), "label": labels[r.user]} for r in scan.accepted]


def paired_documents(
    scan: PairScan, name: str, val_ratio: float, seed: int, val_scan: PairScan | None = None
) -> dict[str, Any]:
    """``labels.json``, ``dataset.json`` and ``split.json`` of a paired dataset, keyed by file name.

    With ``val_scan`` (a ``--val_root`` scanned with :data:`VAL_PREFIX`) all of ``scan`` trains and all of
    ``val_scan`` validates, as given; GT images found in both are reported in ``notes``, not moved.
    """
    types = sorted(set(scan.types) | set(val_scan.types if val_scan else []), key=natural_key)
    labels = {t: i for i, t in enumerate(types)}
    accepted = _records(scan, labels)
    rejected, notes = list(scan.rejected), list(scan.notes)
    links = gt_links(scan)
    if val_scan is None:
        train, val = split_pairs(scan.accepted, val_ratio, seed, links)
        split_note = f"each degradation type split by GT content score, val_ratio {val_ratio}"
    else:
        accepted += _records(val_scan, labels)
        rejected += [{**r, "path": VAL_PREFIX + r["path"]} for r in val_scan.rejected]
        notes += val_scan.notes
        train = sorted((r.relpath for r in scan.accepted), key=natural_key)
        val = sorted((r.relpath for r in val_scan.accepted), key=natural_key)
        split_note = "train: all pairs of data_root; val: all pairs of val_root, as given"
        train_gt = {r.sha1 for r in scan.accepted}
        notes += [
            {"path": r.relpath, "reason": "its GT is also a training GT (val_root used as given)"}
            for r in val_scan.accepted
            if r.sha1 in train_gt
        ]
        notes += [
            {"path": t, "reason": "degradation type only in val_root: validated, never trained"}
            for t in sorted(set(val_scan.types) - set(scan.types), key=natural_key)
        ]
    every = scan.accepted + (val_scan.accepted if val_scan else [])
    # split.json's checks (aetune.data.prepared) keep every group on one side; with --val_root they span
    # the two roots only when val_root repeats a training GT, which the notes report instead.
    groups = [g for g in split_groups(_units(scan.accepted), links) if len(g) > 1]
    dataset = {
        "kind": KIND,
        "name": name,
        "data_root": str(scan.root),
        "val_root": str(val_scan.root) if val_scan else None,
        "layout": scan.layout,
        "num_users": len(labels),
        "num_images": len(accepted),
        "accepted": accepted,
        "rejected": rejected,
        "duplicates": pair_duplicates(every),
        "near_duplicates": [list(link) for link in links],
        "groups": groups,
        "notes": notes,
        "conversion": "LQ and GT decoded and converted to RGB uint8 by aetune.data.images.to_rgb",
    }
    split = {
        "seed": seed,
        "val_ratio": val_ratio if val_scan is None else None,
        "data_root": str(scan.root),
        "val_root": dataset["val_root"],
        "note": split_note,
        "train": train,
        "val": val,
    }
    return {LABELS_FILE: labels, DATASET_FILE: dataset, SPLIT_FILE: split}


def write_data_documents(work_dir: str | Path, docs: dict[str, Any]) -> bool:
    """Write the changed ``data/<file>`` documents as a set (all renamed at the end); True if any changed.

    The rule of ``aetune.data.prepare.prepare_dataset``: a failure half-way (disk full) leaves the
    previous set, and an unchanged file is not rewritten.
    """
    out = data_dir(work_dir)
    changed = {}
    for fname, doc in docs.items():
        try:
            old = read_json(out / fname) if (out / fname).is_file() else None
        except (ValueError, AetuneError):  # unreadable JSON: replaced, like prepare_dataset does
            old = None
        if old != doc:
            changed[fname] = doc
    with contextlib.ExitStack() as stack:
        for fname, doc in changed.items():
            atomic_write_json(stack.enter_context(atomic_path(out / fname)), doc)
    return bool(changed)


def prepare_paired_dataset(
    data_root: str | Path,
    work_dir: str | Path,
    name: str = "restoration",
    val_ratio: float = 0.1,
    seed: int = 42,
    val_root: str | Path | None = None,
    resize_mismatched: bool = False,
    progress: bool = True,
) -> PairedSummary:
    """Step 3 for paired data: scan, split per type (or take ``val_root`` as the validation set), write ``data/``.

    Raises:
        AetuneError: bad ``val_ratio``, unwritable ``work_dir``, a root without pairs, or no training or
            no validation pair (nothing is written then).
    """
    if val_root is None:
        check_val_ratio(val_ratio)
    elif not Path(val_root).expanduser().is_dir():
        what = "does not exist" if not Path(val_root).expanduser().exists() else "is a file"
        raise AetuneError(
            f"--val_root {val_root} {what}: pass the folder of validation pairs (<Type>/LQ, <Type>/GT, or LQ, GT), "
            "or leave --val_root out to split --data_root"
        )
    check_output_dir(work_dir)
    scan = scan_pairs(data_root, resize_mismatched, progress=progress)
    val_scan = scan_pairs(val_root, resize_mismatched, VAL_PREFIX, progress) if val_root is not None else None
    docs = paired_documents(scan, name, val_ratio, seed, val_scan)
    labels, split, dataset = docs[LABELS_FILE], docs[SPLIT_FILE], docs[DATASET_FILE]
    if not split["train"] or not split["val"]:
        side = "training" if not split["train"] else "validation"
        raise AetuneError(
            f"no {side} pair ({len(split['train'])} train, {len(split['val'])} val): add pairs, change "
            "--val_ratio, or pass --val_root"
        )
    changed = write_data_documents(work_dir, docs)
    train, val = set(split["train"]), set(split["val"])
    rejected: dict[str, int] = defaultdict(int)
    for s in (scan, val_scan) if val_scan else (scan,):
        for r in s.rejected:  # a flat layout has one type; otherwise the first folder names it
            rejected[FLAT_TYPE if s.layout == "flat" else PurePosixPath(r["path"]).parts[0]] += 1
    rows = []
    for t, label in labels.items():
        mine = [a["relpath"] for a in dataset["accepted"] if a["user"] == t]
        rows.append((t, label, sum(p in train for p in mine), sum(p in val for p in mine), rejected[t]))
    for note in dataset["notes"]:
        log.warning("%s: %s", note["path"], note["reason"])
    return PairedSummary(
        data_root=scan.root,
        val_root=val_scan.root if val_scan else None,
        labels=labels,
        rows=rows,
        rejected=len(dataset["rejected"]),
        duplicates=sum(len(g["pairs"]) - 1 for g in dataset["duplicates"]),
        notes=len(dataset["notes"]),
        changed=changed,
    )


@dataclass(frozen=True)
class PairSample(Sample):
    """One pair of the prepared split: a ``Sample`` whose ``relpath`` is the GT (with its prefix), plus the LQ."""

    lq: str = ""  # LQ relpath, with the same prefix


@dataclass(frozen=True)
class PairedData(PreparedData):
    """The prepared paired dataset of a work directory: a ``PreparedData`` whose ``path`` is the GT.

    ``load_prepared`` of a paired dataset: every step that reads GT images by ``path`` works unchanged, and
    ``lq_path`` gives the inputs. Samples are :class:`PairSample`.
    """

    val_root: Path | None = None

    def path(self, sample: Sample) -> Path:
        """The GT of ``sample``."""
        return self.resolve(sample.relpath)

    def resolve(self, relpath: str) -> Path:
        """Absolute path of a stored relpath (``val://`` ones under ``val_root``)."""
        if relpath.startswith(VAL_PREFIX):
            if self.val_root is None:
                raise AetuneError(f"{relpath} belongs to a --val_root, but none is recorded: re-run step 3")
            return self.val_root / relpath.removeprefix(VAL_PREFIX)
        return self.data_root / relpath

    def lq_path(self, sample: PairSample) -> Path:
        """Absolute path of the degraded input."""
        return self.resolve(sample.lq)

    def gt_path(self, sample: PairSample) -> Path:
        """Absolute path of the clean target."""
        return self.resolve(sample.relpath)

    @property
    def types(self) -> list[str]:
        """Degradation types in label order."""
        return list(self.labels)


def load_paired(
    work_dir: str | Path, data_root: str | Path | None = None, val_root: str | Path | None = None
) -> PairedData:
    """Read a paired dataset that step 3 wrote into ``work_dir``.

    Args:
        work_dir: the work directory.
        data_root, val_root: where the folders are now, if they moved since step 3 (a new Kaggle mount).

    Raises:
        AetuneError: step 3 has not run, its dataset is not paired, or the first pair's files are missing.
    """
    d = data_dir(work_dir)
    for f in (LABELS_FILE, DATASET_FILE, SPLIT_FILE):
        if not (d / f).is_file():
            raise AetuneError(f"{d / f} not found: run step3_prepare_dataset.py with --output_dir {work_dir} first")
    dataset, split, labels = read_json(d / DATASET_FILE), read_json(d / SPLIT_FILE), read_json(d / LABELS_FILE)
    if dataset.get("kind") != KIND:
        raise AetuneError(f"{d / DATASET_FILE} is not a paired dataset: re-run step 3 on an LQ/GT folder")
    by_rel = {a["relpath"]: PairSample(a["relpath"], a["user"], int(a["label"]), a["lq"]) for a in dataset["accepted"]}
    recorded_val = dataset.get("val_root")
    data = PairedData(
        data_root=Path(data_root).expanduser().resolve() if data_root else Path(dataset["data_root"]),
        name=dataset["name"],
        labels=labels,
        train=[by_rel[r] for r in split["train"]],
        val=[by_rel[r] for r in split["val"]],
        val_root=Path(val_root).expanduser().resolve() if val_root else (Path(recorded_val) if recorded_val else None),
    )
    for sample in data.train[:1] + data.val[:1]:
        for path in (data.lq_path(sample), data.gt_path(sample)):
            if not path.is_file():
                flag = "--val_root" if sample.relpath.startswith(VAL_PREFIX) else "--data_root"
                raise AetuneError(f"{path} is missing: the data moved since step 3; pass {flag} or re-run step 3")
    return data


def per_type_subset(samples: Sequence[PairSample], per_type: int | None) -> list[PairSample]:
    """The first ``per_type`` samples of each degradation type, in the given order (None: all of them).

    The fork's ``num_samples_per_type``: a fixed, cheap validation subset that still covers every type.
    """
    if per_type is None:
        return list(samples)
    if per_type < 1:
        raise AetuneError(f"num_samples_per_type must be >= 1 (or unset for all), got {per_type}")
    taken: dict[str, int] = defaultdict(int)
    out = []
    for s in samples:
        if taken[s.user] < per_type:
            taken[s.user] += 1
            out.append(s)
    return out
