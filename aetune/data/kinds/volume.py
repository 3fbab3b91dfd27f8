"""The ``volume`` data kind: step 3 for voxel volumes (scan, split, ``data/*.json``) and step 4's datasets.

Step 3 fixes how a file becomes a model input (``VolumeTransform``: voxel size, intensity percentiles, shape)
and records it in ``data/dataset.json`` under ``volume``, with the resulting full-resolution shape. Step 4
serves each volume as ``(float16 (1, D, H, W) in [-1, 1], label)`` at a stage's resolution: the stage's image
size is the size of the longest axis, the others scale with it (256 x 256 x 64 at image size 128 is
128 x 128 x 32), so a progressive plan halves every axis by halving ``image_size``.

Caches: ``ram`` keeps the transformed volumes in memory (float16); ``file`` writes them once to
``<work_dir>/cache/volumes/<key>.npy`` (the key hashes the voxels, the transform and the shape) and maps them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from aetune.data.cache import open_cached_array
from aetune.data.kinds.registry import register_data_kind
from aetune.data.paired import write_data_documents
from aetune.data.prepare import PrepareSummary, check_output_dir
from aetune.data.prepared import DATASET_FILE, LABELS_FILE, SPLIT_FILE, PreparedData, check_dataset_name, data_dir
from aetune.data.scan import ScanResult
from aetune.data.split import check_val_ratio, duplicate_groups, split_records
from aetune.data.volumes import (
    VolumeRecord,
    VolumeTransform,
    VolumeUnusable,
    load_volume,
    resize_volume,
    scan_volumes,
)
from aetune.errors import AetuneError
from aetune.io import atomic_path, read_json

log = logging.getLogger(__name__)

KIND = "volume"
CACHE_SUBDIR = "cache/volumes"


def axial_slices(v: Tensor) -> Tensor:
    """Volumes (B, 1, D, H, W) -> grey slices (B * D, 3, H, W), channels repeated (what 2-D metrics take)."""
    b, c, d, h, w = v.shape
    if c != 1:
        raise ValueError(f"validation slices single-channel volumes, got {c} channels")
    return v.transpose(1, 2).reshape(b * d, 1, h, w).expand(-1, 3, -1, -1)  # (B, D, 1, H, W) -> (B*D, 3, H, W)


def volumes_from_slices(slices: Tensor, volumes: int) -> Tensor:
    """The inverse of ``axial_slices``: grey slices (B * D, 3, H, W) of ``volumes`` = B volumes -> (B, 1, D, H, W).

    Raises:
        ValueError: the slice count is not a multiple of ``volumes``.
    """
    n, _, h, w = slices.shape
    if volumes < 1 or n % volumes:
        raise ValueError(f"{n} slices do not split into {volumes} volumes of equal depth")
    return slices[:, :1].reshape(volumes, n // volumes, 1, h, w).transpose(1, 2)  # (B, D, 1, H, W) -> (B, 1, D, H, W)


def transformed_shape(record: VolumeRecord | dict[str, Any], transform: VolumeTransform) -> tuple[int, int, int]:
    """The (D, H, W) a volume has after ``transform`` (resampling keeps the field of view)."""
    get = record.get if isinstance(record, dict) else lambda k: getattr(record, k)
    if transform.shape:
        return transform.shape
    shape, spacing = get("shape"), get("spacing")
    if transform.spacing is None:
        return (shape[0], shape[1], shape[2])
    d, h, w = (max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, transform.spacing, strict=True))
    return (d, h, w)


def stage_shape(shape: tuple[int, int, int] | list[int], size: int) -> tuple[int, int, int]:
    """``shape`` scaled so that its longest axis is ``size`` voxels (each axis at least 1)."""
    scale = size / max(shape)
    d, h, w = (max(1, round(s * scale)) for s in shape)
    return (d, h, w)


def volume_documents(
    scan: ScanResult, name: str, val_ratio: float, seed: int, transform: VolumeTransform
) -> dict[str, Any]:
    """``labels.json``, ``dataset.json`` and ``split.json`` for the volumes of ``scan``.

    Raises:
        AetuneError: the volumes have different shapes after ``transform`` and no target shape is set.
    """
    records: list[VolumeRecord] = scan.accepted  # type: ignore[assignment]
    shapes = Counter(transformed_shape(r, transform) for r in records)
    if len(shapes) > 1:
        listed = ", ".join(f"{'x'.join(map(str, s))} ({n})" for s, n in shapes.most_common(4))
        raise AetuneError(
            f"the volumes have {len(shapes)} shapes after resampling ({listed}): pass --volume_shape D,H,W "
            "(centre crop / pad) so that every batch has one shape"
        )
    labels = {g: i for i, g in enumerate(scan.users)}
    train, val = split_records(records, val_ratio, seed)
    accepted = [{**asdict(r), "label": labels[r.user]} for r in records]
    dataset = {
        "kind": KIND,
        "name": name,
        "data_root": str(scan.data_root),
        "num_users": len(labels),
        "num_images": len(accepted),
        "accepted": accepted,
        "rejected": scan.rejected,
        "duplicates": duplicate_groups(records),
        "groups": duplicate_groups(records),  # copies of one volume: one side of the split
        "empty_users": scan.empty_users,
        "volume": {
            "transform": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(transform).items()},
            "shape": list(next(iter(shapes))),
        },
        "conversion": "voxels as float32; aetune.data.volumes.VolumeTransform (data/dataset.json 'volume')",
    }
    split = {"seed": seed, "val_ratio": val_ratio, "data_root": str(scan.data_root), "train": train, "val": val}
    return {LABELS_FILE: labels, DATASET_FILE: dataset, SPLIT_FILE: split}


def prepare_volume_dataset(
    data_root: str | Path,
    work_dir: str | Path,
    name: str = "volumes",
    val_ratio: float = 0.1,
    seed: int = 42,
    transform: VolumeTransform | None = None,
    progress: bool = True,
) -> PrepareSummary:
    """Step 3 for volumes: scan and validate, split per group, write ``data/*.json`` (only when they change).

    Raises:
        AetuneError: bad ``val_ratio`` or ``name``, unwritable ``work_dir``, no usable volume, volumes of
            several shapes without a target shape, or no training volume (nothing is written then).
    """
    check_val_ratio(val_ratio)
    check_dataset_name(name)
    check_output_dir(work_dir)
    transform = transform or VolumeTransform()
    scan = scan_volumes(data_root, progress=progress)
    records: list[VolumeRecord] = scan.accepted  # type: ignore[assignment]
    docs = volume_documents(scan, name, val_ratio, seed, transform)
    split = docs[SPLIT_FILE]
    if not split["train"]:
        raise AetuneError(f"no training volume: all {len(split['val'])} fell in validation; add volumes")
    changed = write_data_documents(work_dir, docs)
    train, val = set(split["train"]), set(split["val"])
    rows = []
    for group, label in docs[LABELS_FILE].items():
        mine = [r.relpath for r in records if r.user == group]
        rejected = sum(1 for r in scan.rejected if r["path"].split("/")[0] == group)
        rows.append((group, label, sum(p in train for p in mine), sum(p in val for p in mine), rejected))
    return PrepareSummary(
        data_root=scan.data_root,
        labels=docs[LABELS_FILE],
        rows=rows,
        rejected=len(scan.rejected),
        duplicates=sum(len(g) - 1 for g in docs[DATASET_FILE]["duplicates"]),
        near_duplicates=0,
        empty_users=scan.empty_users,
        changed=changed,
    )


def _volume_info(work_dir: Path) -> tuple[VolumeTransform, tuple[int, int, int], dict[str, str]]:
    """(transform, full-resolution shape, relpath -> voxel sha1) recorded by step 3."""
    dataset = read_json(data_dir(work_dir) / DATASET_FILE)
    info = dataset.get("volume")
    if dataset.get("kind") != KIND or not isinstance(info, dict):
        raise AetuneError(
            f"{data_dir(work_dir) / DATASET_FILE} holds no volume dataset: run step3_prepare_dataset.py --kind volume"
        )
    t = info["transform"]
    transform = VolumeTransform(
        percentiles=tuple(t["percentiles"]),  # type: ignore[arg-type]
        spacing=tuple(t["spacing"]) if t["spacing"] else None,  # type: ignore[arg-type]
        shape=tuple(t["shape"]) if t["shape"] else None,  # type: ignore[arg-type]
        clip=t.get("clip", True),  # data prepared before the option existed was clipped
    )
    shape = (info["shape"][0], info["shape"][1], info["shape"][2])
    return transform, shape, {a["relpath"]: a["sha1"] for a in dataset["accepted"]}


def _load(path: Path, transform: VolumeTransform, shape: tuple[int, int, int]) -> np.ndarray:
    """One file -> (D, H, W) float16 in [-1, 1] (beyond it where ``transform.clip`` is off) at ``shape``.

    Raises:
        AetuneError: the file is gone or no longer usable (it changed since step 3), naming it.
    """
    if not path.is_file():
        raise AetuneError(f"{path} is missing: the data moved since step 3; pass --data_root or re-run step 3")
    try:
        data = transform(load_volume(path))
    except VolumeUnusable as e:
        raise AetuneError(f"{path}: {e}; it changed since step 3: re-run step 3 to re-scan the volumes") from e
    except ValueError as e:  # normalize_intensity: a volume that became constant
        raise AetuneError(f"{path}: {e}; re-run step 3 to re-scan the volumes") from e
    data = resize_volume(data, shape)
    return (data.clip(-1.0, 1.0) if transform.clip else data).astype(np.float16)


def _cache_file(work_dir: Path, sha1: str, transform: VolumeTransform, shape: tuple[int, int, int]) -> Path:
    key = hashlib.sha1(json.dumps([sha1, asdict(transform), list(shape)]).encode()).hexdigest()[:24]
    return Path(work_dir) / CACHE_SUBDIR / f"{key}.npy"


def prepare_volume_cache(prepared: PreparedData, split: str, size: int, work_dir: Path, progress: bool) -> None:
    """Write the split's transformed volumes at the stage shape to the file cache (local rank 0, once)."""
    transform, full, sha1 = _volume_info(work_dir)
    shape = stage_shape(full, size)
    for s in tqdm(prepared.split(split), desc=f"caching {split} volumes", unit="vol", disable=not progress):
        target = _cache_file(work_dir, sha1[s.relpath], transform, shape)
        if not target.is_file():
            with atomic_path(target) as tmp, open(tmp, "wb") as f:
                np.save(f, _load(prepared.path(s), transform, shape))


class VolumeDataset(Dataset):
    """Items ``(float16 (1, D, H, W) in [-1, 1], label)``: volumes in memory, or memory-mapped cache files."""

    def __init__(self, volumes: list[np.ndarray | Path], labels: list[int]) -> None:
        self.volumes, self.labels = volumes, labels

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        v = self.volumes[i]
        data = open_cached_array(v, "volume") if isinstance(v, Path) else v
        return torch.from_numpy(np.array(data))[None], self.labels[i]  # (D, H, W) -> (1, D, H, W)


def volume_dataset(
    prepared: PreparedData, split: str, size: int, cache: str, work_dir: Path, progress: bool
) -> VolumeDataset:
    """The split at the stage's resolution (longest axis ``size``), from memory or the file cache."""
    transform, full, sha1 = _volume_info(work_dir)
    shape = stage_shape(full, size)
    samples = prepared.split(split)
    if shape != full:
        log.info("%s volumes at %s (full resolution %s)", split, "x".join(map(str, shape)), "x".join(map(str, full)))
    if cache == "file":
        files: list[np.ndarray | Path] = [_cache_file(work_dir, sha1[s.relpath], transform, shape) for s in samples]
        missing = [f for f in files if isinstance(f, Path) and not f.is_file()]
        if missing:
            raise AetuneError(
                f"{len(missing)} cached volumes are missing (first {missing[0]}): the cache was not built"
            )
        return VolumeDataset(files, [s.label for s in samples])
    bar = tqdm(samples, desc=f"loading {split} volumes", unit="vol", disable=not progress)
    return VolumeDataset([_load(prepared.path(s), transform, shape) for s in bar], [s.label for s in samples])


register_data_kind(KIND, prepare_volume_cache, volume_dataset)


SYNTHETIC_DIRNAME = "synthetic_phantoms"


def prepare_volume_source(args: Any, work_dir: Path) -> PrepareSummary:
    """Step 3 with ``--kind volume`` or ``--synthetic phantoms``: (generate,) scan, split, write, print the table.

    Raises:
        AetuneError: no folder given, bad volume flags, or what ``prepare_volume_dataset`` raises.
    """
    from aetune.data.prepare import format_table
    from aetune.data.synthetic.phantoms import generate_phantoms
    from aetune.data.volumes import parse_triple, transform_from_args

    transform = transform_from_args(args)
    progress = not args.no_progress
    if args.synthetic == "phantoms":
        if args.data_root:
            raise AetuneError("pass either --synthetic phantoms or --data_root, not both")
        shape = parse_triple(args.phantom_shape, "--phantom_shape", int)
        root = generate_phantoms(
            work_dir / SYNTHETIC_DIRNAME, args.phantom_classes, args.phantoms_per_class, shape, seed=args.seed,
            progress=progress,
        )  # fmt: skip
    elif args.data_root:
        root = Path(args.data_root)
    else:
        raise AetuneError("--kind volume needs --data_root DIR (one folder per group, or a flat folder of volumes)")
    summary = prepare_volume_dataset(root, work_dir, args.name, args.val_ratio, args.seed, transform, progress)
    log.info("data root: %s", summary.data_root)
    log.info(format_table(summary))
    if summary.empty_users:
        log.warning("excluded group folders with no usable volume: %s", ", ".join(summary.empty_users))
    if summary.rejected:
        log.warning("%d files rejected, with reasons, in data/dataset.json", summary.rejected)
    log.info("wrote %s/data/{labels,dataset,split}.json" if summary.changed else "%s/data is up to date", work_dir)
    return summary
