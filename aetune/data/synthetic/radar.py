"""Radar returns of a walker's body segments, their micro-Doppler spectrogram and its jet image.

Each body segment is an ellipsoid point scatterer at its centre (Chen, "The Micro-Doppler Effect in
Radar", 2011, sec. 4.3), so the baseband return of a monostatic CW radar is
    s(t) = sum_k g_k sqrt(sigma_k(t)) exp(-j 4 pi R_k(t) / lambda) + noise,
with sigma_k the ellipsoid's RCS at its current aspect and g_k a per-segment gain. The image mimics the
public Glasgow / CI4R spectrogram sets: time on x, Doppler velocity on y with zero in the middle and
approaching targets (positive velocity) up, dB normalised to the peak, jet colormap.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import NamedTuple

import matplotlib
import numpy as np
from PIL import Image
from scipy.signal import stft

from aetune.data.synthetic import walker

SPEED_OF_LIGHT = 299_792_458.0


class Segment(NamedTuple):
    """A body segment between two joints, scattering as an ellipsoid of semi-axes (a, a, c)."""

    name: str
    start: str
    end: str
    radius_m: float
    """a = b: Chen's fixed cross-section radius of the segment."""
    length: float
    """segment length as a fraction of the body height; c = length * H / 2."""


# Chen's 16 ellipsoids (MATLAB code of ch. 4): radii in metres, lengths from the Boulic body.
SEGMENTS = (
    Segment("head", "neck", "head", 0.10, walker.HEAD),
    Segment("torso", "pelvis", "neck", 0.15, walker.TORSO),
    Segment("shoulder_r", "neck", "shoulder_r", 0.06, walker.HALF_SHOULDER),
    Segment("shoulder_l", "neck", "shoulder_l", 0.06, walker.HALF_SHOULDER),
    Segment("upper_arm_r", "shoulder_r", "elbow_r", 0.06, walker.UPPER_ARM),
    Segment("upper_arm_l", "shoulder_l", "elbow_l", 0.06, walker.UPPER_ARM),
    Segment("forearm_r", "elbow_r", "hand_r", 0.05, walker.FOREARM),
    Segment("forearm_l", "elbow_l", "hand_l", 0.05, walker.FOREARM),
    Segment("hip_r", "pelvis", "hip_r", 0.07, walker.HALF_HIP),
    Segment("hip_l", "pelvis", "hip_l", 0.07, walker.HALF_HIP),
    Segment("thigh_r", "hip_r", "knee_r", 0.07, walker.THIGH),
    Segment("thigh_l", "hip_l", "knee_l", 0.07, walker.THIGH),
    Segment("shank_r", "knee_r", "ankle_r", 0.06, walker.SHANK),
    Segment("shank_l", "knee_l", "ankle_l", 0.06, walker.SHANK),
    Segment("foot_r", "ankle_r", "toe_r", 0.05, walker.FOOT),
    Segment("foot_l", "ankle_l", "toe_l", 0.05, walker.FOOT),
)
SEGMENT_NAMES = tuple(s.name for s in SEGMENTS)


@dataclass(frozen=True)
class RadarConfig:
    """Radar, STFT and image settings (defaults follow the Glasgow 5.8 GHz recordings)."""

    carrier_hz: float = 5.8e9  # the Ancortek C-band FMCW radar of the Glasgow human-activity set
    prf_hz: float = 1000.0  # slow-time sampling: +-12.9 m/s unambiguous at 5.8 GHz, above any foot
    duration_s: float = 3.0  # about three gait cycles (six foot swings) per image
    window_s: float = 0.16  # Hamming window: 6 Hz (0.16 m/s) resolution, limb sinusoids still sharp
    overlap: float = 0.95  # hop of 8 ms: ~360 frames, more than the 256 image columns
    nfft: int = 512  # zero-padded FFT: 0.05 m/s bins, 237 rows in +-6 m/s, 3 per resolution cell
    max_velocity_mps: float = 6.0  # displayed +-range: feet (3.5-4x the speed) of most walkers fit
    dynamic_range_db: float = 40.0  # dB below the peak mapped to the bottom of the colormap
    radar_height_m: float = 1.0  # antenna height above the ground

    @property
    def wavelength_m(self) -> float:
        """lambda = c / f_c in metres."""
        return SPEED_OF_LIGHT / self.carrier_hz

    @property
    def num_samples(self) -> int:
        """Slow-time samples per image."""
        return round(self.duration_s * self.prf_hz)


DEFAULT_RADAR = RadarConfig()


@dataclass(frozen=True)
class Spectrogram:
    """A micro-Doppler spectrogram before colouring.

    Attributes:
        power_db: (V, T) float32 power in dB relative to the peak (max 0), clipped at -dynamic range.
        velocity_mps: (V,) ascending radial velocity of each row, approaching positive.
        time_s: (T,) centre time of each column in seconds.
    """

    power_db: np.ndarray
    velocity_mps: np.ndarray
    time_s: np.ndarray


def ellipsoid_rcs(a: float, b: float, c: np.ndarray, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """RCS (m^2) of an ellipsoid with semi-axes a, b, c seen at aspect theta (from c) and azimuth phi.

    sigma = pi a^2 b^2 c^2 / (a^2 sin^2(theta) cos^2(phi) + b^2 sin^2(theta) sin^2(phi) + c^2 cos^2(theta))^2
    (Chen 2011, eq. 4.29). Arrays broadcast.
    """
    st2, ct2 = np.sin(theta) ** 2, np.cos(theta) ** 2
    den = a**2 * st2 * np.cos(phi) ** 2 + b**2 * st2 * np.sin(phi) ** 2 + c**2 * ct2
    return np.pi * a**2 * b**2 * c**2 / den**2


def scatterers(joints: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Centres and unit axes of the 16 segment ellipsoids.

    Args:
        joints: joint name -> positions (N, 3), as returned by :func:`walker.walk` (any frame).

    Returns:
        centres (N, K, 3) and unit axes along each segment (N, K, 3), K = len(SEGMENTS).
    """
    start = np.stack([joints[s.start] for s in SEGMENTS], axis=1)  # (N, K, 3)
    end = np.stack([joints[s.end] for s in SEGMENTS], axis=1)
    axis = end - start
    return (start + end) / 2, axis / np.linalg.norm(axis, axis=-1, keepdims=True)


def radar_return(
    centres: np.ndarray,
    axes: np.ndarray,
    height_m: float,
    gains: np.ndarray,
    radar_position: np.ndarray,
    wavelength_m: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free baseband return of the ellipsoid scatterers.

    Args:
        centres: (N, K, 3) scatterer positions in metres (radar frame).
        axes: (N, K, 3) unit vectors along each ellipsoid's long axis.
        height_m: body height, for the semi-axes c.
        gains: (K,) amplitude gains (a person's build and clothing).
        radar_position: (3,) antenna position.
        wavelength_m: carrier wavelength.

    Returns:
        signal (N,) complex128 and ranges (N, K) in metres.
    """
    los = radar_position - centres  # (N, K, 3) scatterer -> radar
    ranges = np.linalg.norm(los, axis=-1)
    theta = np.arccos(np.clip(np.sum(los * axes, axis=-1) / ranges, -1.0, 1.0))
    phi = np.arcsin(los[..., 1] / np.hypot(los[..., 0], los[..., 1]))
    radius = np.array([s.radius_m for s in SEGMENTS])
    half_length = np.array([s.length for s in SEGMENTS]) * height_m / 2
    rcs = ellipsoid_rcs(radius, radius, half_length, theta, phi)  # (N, K)
    phase = np.exp(-4j * np.pi * ranges / wavelength_m)
    return (gains * np.sqrt(rcs) * phase).sum(axis=1), ranges


def add_noise(signal: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add circular complex white Gaussian noise at snr_db relative to the signal's mean power."""
    noise_power = np.mean(np.abs(signal) ** 2) / 10 ** (snr_db / 10)
    noise = rng.standard_normal((2, signal.size)) * np.sqrt(noise_power / 2)
    return signal + noise[0] + 1j * noise[1]


def spectrogram(signal: np.ndarray, config: RadarConfig) -> Spectrogram:
    """STFT magnitude in dB of a slow-time signal, cropped to +-max_velocity and normalised to its peak.

    Args:
        signal: (N,) complex baseband samples at prf_hz.
        config: STFT and display settings.

    Returns:
        The spectrogram (Hamming window, periodic); only frames lying entirely inside the signal.
    """
    nperseg = round(config.window_s * config.prf_hz)
    noverlap = min(nperseg - 1, round(nperseg * config.overlap))
    # boundary=None, padded=False: no zero-padded frames at the ends, whose power would be too low.
    freq, time, z = stft(
        signal,
        fs=config.prf_hz,
        window="hamming",
        nperseg=nperseg,
        noverlap=noverlap,
        nfft=config.nfft,
        return_onesided=False,
        boundary=None,
        padded=False,
    )
    power = np.fft.fftshift(np.abs(z) ** 2, axes=0)  # (nfft, T), frequencies ascending
    velocity = np.fft.fftshift(freq) * config.wavelength_m / 2  # Doppler f = 2 v / lambda
    keep = np.abs(velocity) <= config.max_velocity_mps
    db = 10 * np.log10(power[keep] + np.finfo(np.float64).tiny)
    db = np.maximum(db - db.max(), -config.dynamic_range_db)
    return Spectrogram(db.astype(np.float32), velocity[keep], time)


@cache
def jet_lut() -> np.ndarray:
    """(256, 3) uint8 jet colours, index 0 = dark blue (floor), 255 = dark red (peak)."""
    rgba = matplotlib.colormaps["jet"](np.linspace(0.0, 1.0, 256))
    return np.round(rgba[:, :3] * 255).astype(np.uint8)


def to_image(spec: Spectrogram, image_size: int, dynamic_range_db: float) -> np.ndarray:
    """Jet-coloured square image of a spectrogram: time left to right, +velocity at the top.

    Args:
        spec: spectrogram with power_db in [-dynamic_range_db, 0].
        image_size: output side in pixels.
        dynamic_range_db: dB span mapped onto the colormap.

    Returns:
        (image_size, image_size, 3) uint8 RGB.
    """
    level = (spec.power_db[::-1] + dynamic_range_db) / dynamic_range_db  # (V, T) in [0, 1], row 0 = +v
    resized = Image.fromarray(level.astype(np.float32)).resize((image_size, image_size), Image.Resampling.BILINEAR)
    index = np.clip(np.round(np.asarray(resized) * 255), 0, 255).astype(np.uint8)
    return jet_lut()[index]
