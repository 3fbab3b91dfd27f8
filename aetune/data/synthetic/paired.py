"""Built-in synthetic paired restoration set: micro-Doppler spectrograms (GT) and degraded copies (LQ).

Layout: ``out_dir/<Type>/GT/img_<iiii>.png`` and ``out_dir/<Type>/LQ/img_<iiii>.png`` (RGB, image_size
square) for each degradation type, plus ``out_dir/synthetic_paired.json`` with the parameters and whether
the set is complete. The same arguments always give byte-identical PNGs; pair i of a type depends only on
(type, i, num_users, image_size, seed), never on how many pairs are asked for. Each type has its own clean
images (no GT is shared between types, so a per-type split cannot leak one).

Degradations (each pair draws its own strength from a generator keyed by (seed, type, i)):
- ``Blur``: Gaussian blur, sigma U(1.0, 2.5) px (defocus / a long STFT window smearing the gait bands).
- ``Noise``: additive Gaussian noise, sigma U(8, 25) grey levels (a weak return, a far walker).
- ``LowLight``: gamma U(1.6, 2.4) darkening times a gain U(0.35, 0.6), then 2-level sensor noise.
- ``Occlusion``: 1 to 3 black rectangles, each side 10-30 % of the image (dropped frames, clutter gating).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from tqdm.auto import tqdm

from aetune.data.synthetic.generate import _check, render_image
from aetune.data.synthetic.manifest import check_output_folder
from aetune.data.synthetic.users import draw_user
from aetune.errors import InvalidArgument
from aetune.io import atomic_path, atomic_write_json, read_json

DEGRADATIONS = ("Blur", "Noise", "LowLight", "Occlusion")
"""The degradation types, in the order their random streams are numbered (append new ones at the end)."""
PAIRED_MANIFEST = "synthetic_paired.json"
PAIRED_GENERATOR_VERSION = 1
"""Bumped whenever a degradation or the layout changes its pixels, so an old set is not silently reused."""
_DEGRADATION_STREAM = 7  # keeps these draws apart from the spectrogram simulation's streams
_TYPE_IMAGE_STRIDE = 1_000_000  # image indices of type t start at t * stride: distinct clean images per type


def pair_paths(out_dir: Path, kind: str, index: int) -> tuple[Path, Path]:
    """(LQ, GT) paths of pair ``index`` of degradation ``kind``."""
    name = f"img_{index:04d}.png"
    return out_dir / kind / "LQ" / name, out_dir / kind / "GT" / name


def degrade(gt: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Apply degradation ``kind`` (one of :data:`DEGRADATIONS`) to an (H, W, 3) uint8 image -> uint8 of one shape."""
    x = gt.astype(np.float64)
    h, w = gt.shape[:2]
    if kind == "Blur":
        s = rng.uniform(1.0, 2.5)
        x = gaussian_filter(x, sigma=(s, s, 0))  # spatial blur only, channels kept apart
    elif kind == "Noise":
        x = x + rng.normal(0.0, rng.uniform(8.0, 25.0), x.shape)
    elif kind == "LowLight":
        gamma, gain = rng.uniform(1.6, 2.4), rng.uniform(0.35, 0.6)
        x = 255.0 * gain * (x / 255.0) ** gamma + rng.normal(0.0, 2.0, x.shape)
    elif kind == "Occlusion":
        for _ in range(rng.integers(1, 4)):
            rh, rw = int(rng.uniform(0.1, 0.3) * h), int(rng.uniform(0.1, 0.3) * w)
            top, left = rng.integers(0, h - rh + 1), rng.integers(0, w - rw + 1)
            x[top : top + rh, left : left + rw] = 0.0
    else:
        raise InvalidArgument(f"unknown degradation '{kind}': choose from {', '.join(DEGRADATIONS)}")
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def render_pair(kind: str, index: int, image_size: int, num_users: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(LQ, GT) of pair ``index`` of degradation ``kind``: two (image_size, image_size, 3) uint8 RGB arrays."""
    t = DEGRADATIONS.index(kind)
    user = draw_user(index % num_users + 1, seed)
    gt = render_image(user, t * _TYPE_IMAGE_STRIDE + index // num_users, image_size, seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, _DEGRADATION_STREAM, t, index]))
    return degrade(gt, kind, rng), gt


def generate_paired_dataset(
    out_dir: str | Path,
    pairs_per_type: int = 40,
    image_size: int = 128,
    num_users: int = 8,
    seed: int = 42,
    types: tuple[str, ...] = DEGRADATIONS,
    progress: bool = True,
) -> Path:
    """Generate (or reuse, or complete) the synthetic paired set ``out_dir/<Type>/{LQ,GT}/``.

    Args:
        out_dir: destination; must be empty, absent, or hold a set made with the same arguments.
        pairs_per_type: LQ/GT pairs per degradation type, >= 1.
        image_size: side of the square images, >= 16.
        num_users: simulated walkers the clean images cycle through, >= 1.
        seed: base seed, >= 0.
        types: degradation types to write, a non-empty subset of :data:`DEGRADATIONS`.
        progress: show a progress bar.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        InvalidArgument: a bad number or type, or ``out_dir`` holds other files or a set made differently.
    """
    _check("pairs_per_type", pairs_per_type, 1)
    _check("image_size", image_size, 16)
    _check("num_users", num_users, 1)
    _check("seed", seed, 0)
    unknown = [t for t in types if t not in DEGRADATIONS]
    if not types or unknown or len(set(types)) != len(types):
        raise InvalidArgument(f"types must be distinct names from {', '.join(DEGRADATIONS)}, got {list(types)}")
    out = Path(out_dir)
    params = {
        "generator_version": PAIRED_GENERATOR_VERSION,
        "pairs_per_type": pairs_per_type,
        "image_size": image_size,
        "num_users": num_users,
        "seed": seed,
        "types": list(types),
    }
    manifest = check_output_folder(out, PAIRED_MANIFEST, params, "a synthetic paired set")
    jobs = [(k, i) for k in types for i in range(pairs_per_type) if not all(p.exists() for p in pair_paths(out, k, i))]
    if not jobs and read_json(manifest).get("complete"):
        return out
    atomic_write_json(manifest, {"parameters": params, "complete": False})
    for kind, i in tqdm(jobs, desc="synthetic paired set", unit="pair", disable=not progress):
        for path, rgb in zip(pair_paths(out, kind, i), render_pair(kind, i, image_size, num_users, seed), strict=True):
            with atomic_path(path) as tmp:
                Image.fromarray(rgb).save(tmp, format="PNG", compress_level=3)
    atomic_write_json(manifest, {"parameters": params, "complete": True})
    return out
