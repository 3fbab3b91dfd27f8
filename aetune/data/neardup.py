"""Near-duplicates: images of one user that are the same picture, or windows of one recording shifted in time.

Spectrogram datasets are often cut as overlapping windows from one long recording, so a validation
image can be a copy of a training image shifted along the time axis (the image width). A perceptual
hash (pHash, dHash) summarises the whole frame: a shift by a quarter of the width changes it
completely, so it misses exactly these windows. Instead each pair of same-size images is compared at
every time shift that keeps at least ``MIN_OVERLAP`` of the width in common, by the normalised
cross-correlation (NCC) of their high-pass detail over the overlapping columns:

- detail, not the picture: a user's recordings share the same Doppler band layout and a periodic gait,
  so the plain grey images of two *different* recordings correlate at 0.99; the high-pass residual
  (speckle, noise, fine structure) is what a copy shares and another recording does not.
- NCC is invariant to a gain change, and the high-pass removes an offset, so a window re-encoded as
  JPEG or with its brightness rescaled still matches.
- shift 0 covers plain near-copies (re-encoded, lightly edited).

Measured on the built-in synthetic set (31 users, 256 px): distinct recordings of one user reach at
most NCC 0.95, a shifted crop 0.999, re-encoded as JPEG quality 30 still 0.98: ``MIN_CORRELATION``
is 0.97. Not caught: windows re-scaled in time or frequency, windows of different sizes, or windows
whose colour map was re-normalised per window (the colours then change non-linearly).

Images are compared within each user folder only (windows of one recording belong to one user);
exact copies across users are found by their pixel hash in :mod:`aetune.data.split`. Cost: one FFT
per image and, per user, a batched matrix product over n^2 pairs (0.12 s for 150 images of 256 px).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import uniform_filter

from aetune.data.scan import ImageRecord, natural_key

MIN_OVERLAP = 0.5
"""Smallest shared fraction of the width that counts: shorter overlaps share little and match by chance."""
MIN_CORRELATION = 0.97
"""NCC above which two images are near-duplicates (distinct recordings <= 0.95, copies >= 0.98)."""
_PAIR_BUDGET = 2**27
"""Floats of cross-correlation held at once (0.5 GB): larger users are processed in row blocks."""


@dataclass(frozen=True)
class NearDuplicate:
    """Two images of one user showing the same content; ``b`` starts ``shift`` pixels later in time."""

    a: str  # relpath
    b: str  # relpath
    shift: int  # pixels of the original width; 0 for a plain near-copy
    overlap: float  # fraction of the width the two share, in [MIN_OVERLAP, 1]
    correlation: float  # NCC of the high-pass detail over the overlap, in [MIN_CORRELATION, 1]


def _detail(prints: np.ndarray) -> np.ndarray:
    """(n, bands, cols) uint8 -> float32 high-pass residual: each pixel minus its 3x3 neighbourhood mean."""
    x = prints.astype(np.float32)
    return x - uniform_filter(x, size=(1, 3, 3), mode="nearest")


def _best_shifts(detail: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best NCC over shifts for every ordered pair.

    Args:
        detail: (n, bands, cols) float32 high-pass fingerprints of same-size images.

    Returns:
        (ncc, shift), both (n, n): ``ncc[i, j]`` is the largest NCC of ``detail[i][:, d:]`` with
        ``detail[j][:, :cols - d]`` over ``0 <= d <= cols * (1 - MIN_OVERLAP)``, reached at ``shift[i, j]``
        (image j starts d columns after image i).
    """
    n, _, cols = detail.shape
    length = 2 * cols  # zero padding: the circular correlation of the FFT equals the linear one
    spec = np.fft.rfft(detail, n=length, axis=2)  # (n, bands, f)
    spec = np.ascontiguousarray(spec.transpose(2, 0, 1))  # (f, n, bands)
    energy = (detail.astype(np.float64) ** 2).sum(axis=1)  # (n, cols): per-column energy
    cum = np.concatenate([np.zeros((n, 1)), np.cumsum(energy, axis=1)], axis=1)  # (n, cols + 1)
    max_shift = int(cols * (1 - MIN_OVERLAP))
    ncc = np.full((n, n), -1.0)
    shift = np.zeros((n, n), dtype=np.int64)
    block = max(1, _PAIR_BUDGET // (length * n))
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        # sum over bands of F_i conj(F_j), then back to shifts: cc[d, i, j] = sum_x detail_i[x + d] detail_j[x]
        cc = np.fft.irfft(spec[:, lo:hi] @ np.conj(spec).transpose(0, 2, 1), n=length, axis=0)  # (L, b, n)
        for d in range(max_shift + 1):
            e_i = cum[lo:hi, cols] - cum[lo:hi, d]  # energy of i's columns d..cols
            e_j = cum[:, cols - d]  # energy of j's columns 0..cols-d
            r = cc[d] / np.sqrt(np.outer(e_i, e_j) + 1e-6)  # (b, n); flat images give 0, never a match
            better = r > ncc[lo:hi]
            ncc[lo:hi][better] = r[better]
            shift[lo:hi][better] = d
    return ncc, shift


def find_near_duplicates(records: Sequence[ImageRecord], prints: Mapping[str, np.ndarray]) -> list[NearDuplicate]:
    """Near-duplicate pairs among ``records`` (see the module docstring), in natural order of ``a``.

    Args:
        records: accepted images; exact copies (same ``sha1``) are compared once, through the first.
        prints: relpath -> ``aetune.data.images.fingerprint`` of every record.

    Returns:
        One entry per pair of distinct-content images of one user and one size whose best NCC is at
        least ``MIN_CORRELATION``. Whether a pair matches depends on the two images only, never on
        the others, so adding images only adds pairs.
    """
    by_size: dict[tuple[str, int, int], dict[str, str]] = defaultdict(dict)
    for r in sorted(records, key=lambda r: natural_key(r.relpath)):
        by_size[(r.user, r.width, r.height)].setdefault(r.sha1, r.relpath)
    found: list[NearDuplicate] = []
    for (_, width, _), firsts in by_size.items():
        paths = list(firsts.values())
        if len(paths) < 2:
            continue
        ncc, shift = _best_shifts(_detail(np.stack([prints[p] for p in paths])))
        cols = prints[paths[0]].shape[1]
        for i, j in zip(*np.triu_indices(len(paths), k=1), strict=True):
            # The better of the two orders says which image is later in time.
            a, b = (i, j) if ncc[i, j] >= ncc[j, i] else (j, i)
            if ncc[a, b] >= MIN_CORRELATION:
                d = int(shift[a, b])
                found.append(
                    NearDuplicate(
                        paths[a], paths[b], round(d * width / cols), round(1 - d / cols, 4), round(float(ncc[a, b]), 4)
                    )
                )
    return sorted(found, key=lambda p: (natural_key(p.a), natural_key(p.b)))
