"""Synthetic anatomical phantoms for the 3-D families: one folder of volumes per class, deterministic by seed.

A phantom is a head-like set of nested ellipsoids: a bright skull shell around brain tissue with a smooth
texture, two dark ventricles, and ``class_index`` bright lesions (class 0 has none), each phantom jittered
in size, position and tilt, with Rician (MR magnitude) noise. Intensities are about [0, 1.2] (background
noise near 0, lesions near 0.85): like a scanner's, not normalised.

Layout: ``out_dir/class_<k>/phantom_<iiii>.nii.gz`` (or ``.npy``) and ``out_dir/phantoms.json`` recording the
parameters. The same arguments give byte-identical files; volume i of class k depends on neither the number
of classes nor the number of volumes.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter
from tqdm.auto import tqdm

from aetune.data.synthetic.manifest import check_output_folder
from aetune.errors import InvalidArgument
from aetune.io import atomic_write_bytes, atomic_write_json, read_json
from aetune.optional import require

MANIFEST = "phantoms.json"
PHANTOM_VERSION = 1
"""Bumped whenever rendering changes its voxels, so an old set is not silently reused."""
FORMATS = ("nii.gz", "npy")

SKULL, BRAIN, VENTRICLE, LESION = 0.9, 0.5, 0.15, 0.85
"""Tissue intensities (T1-like contrast: bright skull and lesions, mid-grey brain, dark fluid)."""
NOISE_SIGMA = 0.03  # Rician noise level: an SNR of ~17 in the brain
TEXTURE = 0.06  # amplitude of the brain's smooth texture


def _ellipsoid(coords: np.ndarray, centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """(3, D, H, W) coordinates -> (D, H, W) squared normalised distance: < 1 inside the ellipsoid."""
    d = (coords - centre[:, None, None, None]) / radii[:, None, None, None]
    return np.sum(d * d, axis=0)


def render_phantom(
    class_index: int, index: int, shape: tuple[int, int, int] = (32, 32, 32), seed: int = 0
) -> np.ndarray:
    """Phantom ``index`` of class ``class_index``: (D, H, W) float32 intensities, about [0, 1.2].

    Args:
        class_index: number of lesions (>= 0).
        index: the phantom's number within its class (>= 0).
        shape: voxels per axis, each >= 8.
        seed: base seed; (seed, class_index, index) fixes every random draw.
    """
    rng = np.random.default_rng([seed, class_index, index])
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float64) for n in shape]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))  # (3, D, H, W) in [-1, 1]
    tilt = rng.uniform(-0.25, 0.25)  # radians about the first axis
    c, s = np.cos(tilt), np.sin(tilt)
    coords = np.stack([coords[0], c * coords[1] - s * coords[2], s * coords[1] + c * coords[2]])
    head_r = np.array([0.8, 0.85, 0.75]) * rng.uniform(0.92, 1.05, 3)
    head_c = rng.uniform(-0.05, 0.05, 3)
    head = _ellipsoid(coords, head_c, head_r)
    brain = _ellipsoid(coords, head_c, 0.86 * head_r)
    vol = np.where(head < 1.0, SKULL, 0.0)
    texture = gaussian_filter(rng.standard_normal(shape), sigma=max(shape) / 16)
    texture /= texture.std() + 1e-12
    vol = np.where(brain < 1.0, BRAIN + TEXTURE * texture, vol)
    vent_r = np.array([0.28, 0.12, 0.16]) * rng.uniform(0.8, 1.25)
    for side in (-1.0, 1.0):
        centre = head_c + np.array([0.05, 0.0, side * 0.18 * head_r[2]])
        vol = np.where(_ellipsoid(coords, centre, vent_r) < 1.0, VENTRICLE, vol)
    for _ in range(class_index):
        # uniform in the brain's inner half, clear of the shell
        centre = head_c + rng.uniform(-0.45, 0.45, 3) * head_r
        radius = rng.uniform(0.08, 0.14)
        vol = np.where(_ellipsoid(coords, centre, np.full(3, radius)) < 1.0, LESION, vol)
    noise = rng.normal(0.0, NOISE_SIGMA, (2, *shape))
    return np.sqrt((vol + noise[0]) ** 2 + noise[1] ** 2).astype(np.float32)  # Rician: |signal + complex noise|


def encode_volume(data: np.ndarray, spacing: tuple[float, float, float], file_format: str) -> bytes:
    """(D, H, W) float32 -> the bytes of a ``.nii.gz`` (affine = diag(spacing), mm) or ``.npy`` file (no timestamps,
    so equal volumes give equal bytes)."""
    if file_format == "npy":
        buf = io.BytesIO()
        np.save(buf, data, allow_pickle=False)
        return buf.getvalue()
    nib = require("nibabel", "NIfTI phantoms")
    img = nib.Nifti1Image(data, affine=np.diag([*spacing, 1.0]))
    img.header.set_xyzt_units("mm")
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def phantom_path(out_dir: Path, class_index: int, index: int, file_format: str) -> Path:
    """``out_dir/class_<class_index>/phantom_<index:04d>.<file_format>``."""
    return out_dir / f"class_{class_index}" / f"phantom_{index:04d}.{file_format}"


def generate_phantoms(
    out_dir: str | Path,
    num_classes: int = 2,
    volumes_per_class: int = 8,
    shape: tuple[int, int, int] = (32, 32, 32),
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    file_format: str = "nii.gz",
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write (or reuse) a phantom set with one folder per class (class k: k lesions per phantom).

    Args:
        out_dir: destination; must be empty, absent, or hold a set made with the same arguments.
        num_classes: folders class_0 .. class_<num_classes - 1>, >= 1.
        volumes_per_class: phantoms per class, >= 1.
        shape: voxels per axis (D, H, W), each >= 8.
        spacing: voxel size in mm written into the NIfTI affine (ignored by .npy).
        file_format: "nii.gz" or "npy".
        seed: base seed, >= 0.
        progress: show a progress bar.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        InvalidArgument: a bad argument, or ``out_dir`` holds other files or a set made differently.
    """
    for name, value, minimum in (("num_classes", num_classes, 1), ("volumes_per_class", volumes_per_class, 1)):
        if not isinstance(value, int) or value < minimum:
            raise InvalidArgument(f"{name} must be an integer >= {minimum}, got {value!r}")
    if len(shape) != 3 or min(shape) < 8:
        raise InvalidArgument(f"phantom shape must be 3 sizes of at least 8 voxels, got {list(shape)}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise InvalidArgument(f"phantom spacing must be 3 positive numbers, got {list(spacing)}")
    if file_format not in FORMATS:
        raise InvalidArgument(f"phantom file_format must be one of {', '.join(FORMATS)}, got {file_format!r}")
    out = Path(out_dir)
    params = {
        "phantom_version": PHANTOM_VERSION,
        "num_classes": num_classes,
        "volumes_per_class": volumes_per_class,
        "shape": list(shape),
        "spacing": [float(s) for s in spacing],
        "file_format": file_format,
        "seed": seed,
    }
    manifest = check_output_folder(out, MANIFEST, params, "phantoms")
    jobs = [
        (k, i)
        for k in range(num_classes)
        for i in range(volumes_per_class)
        if not phantom_path(out, k, i, file_format).exists()
    ]
    if not jobs and read_json(manifest).get("complete"):
        return out
    atomic_write_json(manifest, {"parameters": params, "complete": False})
    for k, i in tqdm(jobs, desc="synthetic phantoms", unit="vol", disable=not progress):
        data = render_phantom(k, i, shape, seed)
        atomic_write_bytes(phantom_path(out, k, i, file_format), encode_volume(data, spacing, file_format))
    atomic_write_json(manifest, {"parameters": params, "complete": True})
    return out
