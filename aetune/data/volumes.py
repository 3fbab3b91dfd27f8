"""Voxel volumes for the 3-D families: scan and validate a folder, read a volume, normalise, resample, crop.

Accepted files: NIfTI (``.nii``, ``.nii.gz``, read with nibabel) and NumPy (``.npy``; ``.npz`` holding one array,
or an array named ``volume``, plus an optional ``spacing`` of 3 floats). Layout: one folder per class or subject
group (any depth below it), or a flat folder of volumes (one group, ``FLAT_GROUP``).

Axis order: a volume's three spatial axes are kept in the file's order (NIfTI i, j, k; a NumPy array's axes) and
become (D, H, W) of the (B, C, D, H, W) tensors; nothing is transposed or reoriented. A 4-D volume is accepted
when its channel axis has one entry: NIfTI's 4th axis, a NumPy array's first axis (torch order) or else last.

The scan returns ``aetune.data.scan.ScanResult`` with ``VolumeRecord`` items: they carry ``relpath``, ``user``
(the group) and ``sha1`` like image records, so ``aetune.data.split`` splits volumes as it splits images
(deterministic, stable, duplicates on one side).
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from aetune.data.scan import (
    ScanResult,
    _is_hidden,
    descend_wrappers,
    is_synthetic_manifest,
    natural_key,
    rejection_summary,
)
from aetune.errors import AetuneError
from aetune.optional import require

log = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".npy", ".npz")
FLAT_GROUP = "all"
"""Group (label name) of the volumes of a flat folder."""
MIN_VOLUME_SIDE = 8
"""Smaller sides cannot pass an f4 autoencoder with room for a latent (8 voxels -> 2)."""
MAX_VOLUME_VOXELS = 1 << 28
"""Largest volume read (268,435,456 voxels, 1 GiB as float32: 1024 x 512 x 512): a file's header is checked
against it before anything is allocated, so a damaged or hostile header cannot exhaust the memory."""


class VolumeUnusable(AetuneError):
    """A volume file that cannot be used; the message is the reason recorded in ``dataset.json``."""


@dataclass
class Volume:
    """One volume as read from disk.

    Attributes:
        data: (D, H, W) float32 voxels as stored (NIfTI scaling applied), not normalised.
        spacing: voxel size per axis (NIfTI zooms, usually mm; the npz ``spacing``; 1.0 for npy).
        format: "nifti", "npy" or "npz".
        dtype: the stored dtype (int16, float32, ...).
    """

    data: np.ndarray
    spacing: tuple[float, float, float]
    format: str
    dtype: str


@dataclass
class VolumeRecord:
    """One accepted volume (a row of ``data/dataset.json``)."""

    relpath: str  # POSIX path relative to the data root; first part is the group folder (none for a flat folder)
    user: str  # the class / subject-group folder, FLAT_GROUP for a flat folder: the label name and split unit
    shape: list[int]  # (D, H, W) voxels in the file's axis order
    spacing: list[float]  # voxel size per axis
    intensity_min: float  # stored intensity range (after NIfTI scaling)
    intensity_max: float
    format: str  # nifti, npy, npz
    dtype: str  # stored dtype
    sha1: str  # SHA-1 of the float32 voxels and their shape: equal for the same volume in any format


def volume_suffix(name: str) -> str | None:
    """The volume suffix ``name`` ends with (case-insensitive), or None."""
    low = name.lower()
    return next((s for s in VOLUME_SUFFIXES if low.endswith(s)), None)


def _single_channel(arr: np.ndarray, nifti: bool) -> np.ndarray:
    """(D, H, W) view of a 3-D array or a 4-D one whose channel axis has one entry; ``VolumeUnusable`` otherwise."""
    shape = tuple(arr.shape)
    if arr.ndim == 3:
        return arr
    if arr.ndim < 3:
        raise VolumeUnusable(f"{arr.ndim}-D array {shape}: a volume needs 3 spatial axes")
    if nifti:  # NIfTI keeps time / vector components on axes 4 and 5
        channels = int(np.prod(shape[3:]))
        if channels == 1:
            return arr.reshape(shape[:3])
    elif arr.ndim == 4:
        if shape[0] == 1:
            return arr[0]
        if shape[-1] == 1:
            return arr[..., 0]
        channels = min(shape[0], shape[-1])
    else:
        raise VolumeUnusable(f"{arr.ndim}-D array {shape}: expected 3-D, or 4-D with one channel")
    raise VolumeUnusable(
        f"4-D volume {shape} with {channels} channels: only single-channel volumes are supported "
        "(save each channel or time point as its own file)"
    )


def _check_declared(shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse, from a header alone, a volume too large to read or of a non-numeric dtype (nothing allocated yet)."""
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        what = "pickled Python objects" if dtype.hasobject else str(dtype)
        raise VolumeUnusable(
            f"voxels of dtype {what}: expected integer or floating point numbers (save a real-valued array, "
            "e.g. np.save(path, volume.astype(np.float32)))"
        )
    voxels = int(np.prod([int(n) for n in shape], dtype=object)) if shape else 1
    if voxels > MAX_VOLUME_VOXELS:
        raise VolumeUnusable(
            f"the header declares {'x'.join(map(str, shape))} = {voxels:,} voxels, over the limit of "
            f"{MAX_VOLUME_VOXELS:,} (1 GiB as float32): crop or downsample it, or the header is damaged"
        )


def _npy_header(f: Any) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from the header of an open ``.npy`` stream, reading no data."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, _, dtype = read(f)
    return tuple(shape), np.dtype(dtype)


def _check_npy_headers(path: Path, suffix: str) -> None:
    """:func:`_check_declared` on every array header of a ``.npy`` / ``.npz`` file."""
    if suffix == ".npy":
        with open(path, "rb") as f:
            _check_declared(*_npy_header(f))
        return
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            if name.endswith(".npy") and name != "spacing.npy":
                with z.open(name) as f:
                    _check_declared(*_npy_header(f))


def _read_npz(path: Path) -> tuple[np.ndarray, tuple[float, ...] | None]:
    with np.load(path, allow_pickle=False) as npz:
        names = [n for n in npz.files if n != "spacing"]
        if len(names) != 1 and "volume" not in names:
            raise VolumeUnusable(
                f"npz with {len(names)} arrays ({', '.join(names) or 'none'}): store one array, or name it 'volume'"
            )
        arr = npz["volume" if "volume" in names else names[0]]
        spacing = tuple(float(s) for s in np.ravel(npz["spacing"])) if "spacing" in npz.files else None
    return arr, spacing


def load_volume(path: str | Path) -> Volume:
    """Read one volume file.

    Raises:
        VolumeUnusable: unreadable or truncated file, unknown suffix, not numeric, more than one channel,
            a bad spacing (the message is the reason).
    """
    path = Path(path)
    suffix = volume_suffix(path.name)
    if suffix is None:
        raise VolumeUnusable(f"not a volume extension ({path.suffix or 'none'}; use {', '.join(VOLUME_SUFFIXES)})")
    if path.stat().st_size == 0:
        raise VolumeUnusable("empty file (0 bytes)")
    spacing: tuple[float, ...] | None = None
    # What a truncated or corrupt file raises: gzip EOFError or zlib.error, a bad zip BadZipFile, a bad .npy
    # header ValueError, nibabel's ImageFileError (not a ValueError in nibabel 5); MemoryError for a header
    # under the limit that still does not fit in this machine.
    errors: tuple[type[Exception], ...] = (OSError, EOFError, ValueError, zlib.error, zipfile.BadZipFile, MemoryError)
    try:
        if suffix in (".nii", ".nii.gz"):
            nib = require("nibabel", "NIfTI volumes")
            errors += (nib.filebasedimages.ImageFileError,)
            img = nib.load(str(path))  # reads the header only
            _check_declared(tuple(img.header.get_data_shape()), np.dtype(img.get_data_dtype()))
            fmt, dtype = "nifti", str(img.get_data_dtype())
            arr = np.asanyarray(img.dataobj)  # applies the header's scl_slope / scl_inter
            spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
            arr = _single_channel(arr, nifti=True)
        else:
            _check_npy_headers(path, suffix)
            arr, spacing = _read_npz(path) if suffix == ".npz" else (np.load(path, allow_pickle=False), None)
            fmt, dtype = suffix[1:], str(arr.dtype)
            arr = _single_channel(arr, nifti=False)
    except VolumeUnusable:
        raise
    except errors as e:
        reason = str(e).splitlines()[0][:200] if str(e) else ""
        raise VolumeUnusable(f"unreadable or truncated {suffix} file ({type(e).__name__}: {reason})") from e
    _check_declared(arr.shape, arr.dtype)  # what the header did not say (the dtype NIfTI scaling gives)
    spacing = spacing or (1.0, 1.0, 1.0)
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise VolumeUnusable(f"voxel spacing {list(spacing)} is not 3 positive numbers (fix the header)")
    return Volume(np.ascontiguousarray(arr, dtype=np.float32), (spacing[0], spacing[1], spacing[2]), fmt, dtype)


def check_volume(path: Path) -> tuple[VolumeRecord | None, str]:
    """Read and validate ``path``: (record without relpath/group, "") or (None, reason). Never raises for bad data."""
    try:
        vol = load_volume(path)
    except VolumeUnusable as e:
        return None, str(e)
    data = vol.data
    if min(data.shape) < MIN_VOLUME_SIDE:
        return None, f"too small ({'x'.join(map(str, data.shape))}, minimum side {MIN_VOLUME_SIDE} voxels)"
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        return None, f"{bad} non-finite voxels (NaN or inf, after conversion to float32)"
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        return None, f"constant volume (every voxel is {lo:g})"
    digest = hashlib.sha1(f"{data.shape}".encode() + data.tobytes()).hexdigest()
    record = VolumeRecord("", "", list(data.shape), list(vol.spacing), lo, hi, vol.format, vol.dtype, digest)
    return record, ""


def _volume_files(folder: Path) -> bool:
    return any(f.is_file() and volume_suffix(f.name) for f in folder.iterdir())


def find_volume_root(root: str | Path) -> Path:
    """The folder holding the group folders or a flat set of volumes (see ``scan.descend_wrappers``)."""

    def holds(p: Path) -> bool:
        subdirs = [d for d in p.iterdir() if d.is_dir() and not _is_hidden(d.name)]
        return bool(_volume_files(p)) or any(_volume_files(d) for d in subdirs)

    return descend_wrappers(root, holds, "the folder of volumes or of one folder per group")


def scan_volumes(data_root: str | Path, progress: bool = True) -> ScanResult:
    """Read every file of the group folders (or of a flat folder) and sort it into accepted / rejected.

    Group folders are the visible sub-folders holding volume files at any depth; when there are none, the
    volumes directly in the root form one group (``FLAT_GROUP``). Hidden files and folders, files outside
    the groups, other extensions, unreadable, multi-channel, too small, non-finite and constant volumes are
    rejected with a reason; one bad file never stops the scan.

    Raises:
        AetuneError: the root does not exist, or no usable volume was found.
    """
    root = find_volume_root(data_root)
    result = ScanResult(data_root=root, users=[])
    entries = sorted(root.iterdir(), key=lambda p: natural_key(p.name))
    groups = [e for e in entries if e.is_dir() and not _is_hidden(e.name) and any(e.rglob("*"))]
    files: list[tuple[str, Path]] = []
    if not any(volume_suffix(f.name) for g in groups for f in g.rglob("*") if f.is_file()):
        groups = []
    for entry in entries:
        if _is_hidden(entry.name):
            result.rejected.append({"path": entry.name, "reason": "hidden file or folder (__MACOSX, dotfile)"})
        elif entry.is_file() and is_synthetic_manifest(entry):
            continue
        elif entry.is_file():
            if groups:
                result.rejected.append({"path": entry.name, "reason": "file outside any group folder"})
            else:
                files.append((FLAT_GROUP, entry))
        elif not groups:
            result.rejected.append({"path": entry.name, "reason": "folder without volume files"})
    for group in groups:
        for f in sorted(group.rglob("*"), key=lambda p: natural_key(p.relative_to(group).as_posix())):
            hidden = next((part for part in f.relative_to(group).parts if _is_hidden(part)), None)
            if f.is_file() and hidden is not None:
                result.rejected.append({"path": f.relative_to(root).as_posix(), "reason": f"hidden ({hidden})"})
            elif f.is_file():
                files.append((group.name, f))
    names = [g.name for g in groups] or [FLAT_GROUP]
    counts = dict.fromkeys(names, 0)
    for group_name, f in tqdm(files, desc="checking volumes", unit="vol", disable=not progress):
        rel = f.relative_to(root).as_posix()
        record, reason = check_volume(f)
        if record is None:
            result.rejected.append({"path": rel, "reason": reason})
            continue
        record.relpath, record.user = rel, group_name
        result.accepted.append(record)
        counts[group_name] += 1
    result.users = [n for n in names if counts[n]]
    result.empty_users = [n for n in names if not counts[n]]
    if not result.accepted:
        raise AetuneError(
            f"no usable volume under {root} ({len(result.rejected)} files rejected): "
            f"{rejection_summary(result.rejected)}; expected {', '.join(VOLUME_SUFFIXES)} volumes in one folder per "
            "group, or directly in the folder"
        )
    return result


def normalize_intensity(
    data: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5), clip: bool = True
) -> np.ndarray:
    """Map the volume's own intensity percentiles linearly to [-1, 1], clipping what lies outside them.

    Args:
        data: (D, H, W) voxels, not constant.
        percentiles: (low, high) in [0, 100], low < high; (0, 100) is plain min-max scaling.
        clip: False keeps voxels beyond the percentiles beyond [-1, 1], as MONAI's 3-D tutorials
            (``ScaleIntensityRangePercentilesd(lower=0, upper=99.5, b_min=0, b_max=1)``, ``clip=False``).

    Returns:
        (D, H, W) float32, in [-1, 1] when ``clip``. When the two percentiles coincide (a volume that is mostly
        one value, e.g. a small object on a flat background) the full min-max range is used, so the object
        survives.

    Raises:
        ValueError: bad percentiles, or a constant volume.
    """
    low, high = percentiles
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"intensity percentiles must satisfy 0 <= low < high <= 100, got {list(percentiles)}")
    lo, hi = (float(v) for v in np.percentile(data, [low, high]))
    if hi <= lo:
        lo, hi = float(data.min()), float(data.max())
    if hi <= lo:
        raise ValueError(f"constant volume (every voxel is {lo:g}): nothing to normalise")
    if not clip:
        return ((data.astype(np.float32) - lo) / (hi - lo) * 2.0 - 1.0).astype(np.float32)
    out = (np.clip(data, lo, hi).astype(np.float32) - lo) / (hi - lo) * 2.0 - 1.0
    return np.clip(out, -1.0, 1.0)  # rounding may step a hair outside


def resize_volume(data: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Trilinear resize of (D, H, W) ``data`` to ``shape`` (torch ``interpolate``, ``align_corners=False``)."""
    import torch
    import torch.nn.functional as F

    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"a volume shape is 3 positive sizes, got {list(shape)}")
    if tuple(data.shape) == tuple(shape):
        return data.astype(np.float32, copy=False)
    t = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None, None]  # (1, 1, D, H, W)
    return F.interpolate(t, size=tuple(shape), mode="trilinear", align_corners=False)[0, 0].numpy()


def resample_to_spacing(
    data: np.ndarray, spacing: tuple[float, float, float], target: tuple[float, float, float]
) -> np.ndarray:
    """Resample (D, H, W) ``data`` of voxel size ``spacing`` to voxel size ``target`` (same units), trilinear.

    The new size per axis is ``round(size * spacing / target)`` (at least 1): the field of view is kept.
    """
    if len(target) != 3 or min(target) <= 0:
        raise ValueError(f"target voxel size must be 3 positive numbers, got {list(target)}")
    shape = tuple(max(1, round(n * s / t)) for n, s, t in zip(data.shape, spacing, target, strict=True))
    return resize_volume(data, shape)  # type: ignore[arg-type]


def crop_or_pad(data: np.ndarray, shape: tuple[int, int, int], pad_value: float = -1.0) -> np.ndarray:
    """Centre-crop or pad (D, H, W) ``data`` to ``shape``; padding uses ``pad_value`` (-1: background after
    normalisation). An odd difference puts the extra voxel at the end."""
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"a volume shape is 3 positive sizes, got {list(shape)}")
    out = np.full(shape, pad_value, dtype=np.float32)
    src, dst = [], []
    for n, s in zip(data.shape, shape, strict=True):
        start = abs(n - s) // 2
        src.append(slice(start, start + s) if n > s else slice(0, n))
        dst.append(slice(0, s) if n > s else slice(start, start + n))
    out[tuple(dst)] = data[tuple(src)]
    return out


@dataclass(frozen=True)
class VolumeTransform:
    """How a volume becomes a model input; recorded in ``config.yaml`` by the recipe that uses it.

    Order: resample to ``spacing`` (if set), normalise with ``percentiles`` (clipped unless ``clip`` is off),
    then crop / pad to ``shape`` (if set), padding with -1 (background).
    """

    percentiles: tuple[float, float] = (0.5, 99.5)  # robust to a few hot voxels; MONAI's tutorials: (0, 99.5)
    spacing: tuple[float, float, float] | None = None  # target voxel size; None keeps each file's grid
    shape: tuple[int, int, int] | None = None  # final (D, H, W); None keeps the resampled size
    clip: bool = True  # False: MONAI's tutorials, voxels above the high percentile stay above 1

    def __call__(self, vol: Volume) -> np.ndarray:
        """``vol`` -> (D, H, W) float32 in [-1, 1] (beyond it where ``clip`` is off)."""
        data = resample_to_spacing(vol.data, vol.spacing, self.spacing) if self.spacing else vol.data
        data = normalize_intensity(data, self.percentiles, self.clip)
        return crop_or_pad(data, self.shape) if self.shape else data


def parse_triple(text: str, flag: str, cast: type) -> tuple:
    """``"1,1,2"`` -> three positive ``cast`` numbers; one error line naming ``flag`` otherwise."""
    try:
        values = tuple(cast(v) for v in text.split(","))
    except ValueError:
        raise AetuneError(f"{flag} takes three comma-separated numbers, got '{text}'") from None
    if len(values) != 3 or min(values) <= 0:
        raise AetuneError(f"{flag} takes three positive numbers, got '{text}'")
    return values


def add_volume_args(p: Any) -> None:
    """Step 3's volume flags (``--kind volume``, ``--synthetic phantoms``) on an ``argparse`` parser."""
    g = p.add_argument_group("volumes (--family kl3d; docs/kl3d.md)")
    g.add_argument("--volume_spacing", help="resample to this voxel size, e.g. 1,1,2 (file units, usually mm)")
    g.add_argument("--volume_shape", help="then centre-crop / pad to D,H,W (needed when shapes differ)")
    g.add_argument("--volume_percentiles", default="0.5,99.5", help="intensity percentiles mapped to [-1, 1]")
    g.add_argument(
        "--volume_clip",
        choices=["on", "off"],
        default="on",
        help="clip to the percentiles; off = MONAI's tutorials (0,99.5 unclipped: bright voxels above 1)",
    )
    g.add_argument("--phantom_shape", default="32,32,32", help="--synthetic phantoms: voxels per axis")
    g.add_argument("--phantom_classes", type=int, default=2, help="--synthetic phantoms: classes (k lesions)")
    g.add_argument("--phantoms_per_class", type=int, default=16, help="--synthetic phantoms: volumes per class")


def transform_from_args(args: Any) -> VolumeTransform:
    """The ``VolumeTransform`` step 3's volume flags ask for (one error line per bad flag)."""
    try:
        low, high = (float(v) for v in args.volume_percentiles.split(","))
    except ValueError:
        low = high = -1.0
    if not 0.0 <= low < high <= 100.0:
        raise AetuneError(
            f"--volume_percentiles takes LOW,HIGH with 0 <= LOW < HIGH <= 100, got '{args.volume_percentiles}'"
        )
    spacing = parse_triple(args.volume_spacing, "--volume_spacing", float) if args.volume_spacing else None
    shape = parse_triple(args.volume_shape, "--volume_shape", int) if args.volume_shape else None
    return VolumeTransform((low, high), spacing, shape, clip=args.volume_clip == "on")
