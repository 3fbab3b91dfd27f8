"""Synthetic users: a fixed gait fingerprint per user, jittered per image, simulated into a spectrogram.

The fingerprint ranges are chosen so users differ subtly, as real people walking past the same radar
do: a pixel-level linear classifier separates them well above chance but far from perfectly
(``benchmarks/synthetic_user_accuracy.py`` measures it).

Every random draw comes from a ``numpy.random.SeedSequence`` keyed by (seed, stream, user[, image]), so
a user's fingerprint and each image depend on nothing else: asking for more users or more images per
user later leaves the earlier ones unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aetune.data.synthetic.radar import (
    DEFAULT_RADAR,
    SEGMENTS,
    RadarConfig,
    Spectrogram,
    add_noise,
    radar_return,
    scatterers,
    spectrogram,
)
from aetune.data.synthetic.walker import GaitStyle, GaitTiming, gait_timing, walk

_USER_STREAM = 0
_IMAGE_STREAM = 1
_BODY_DOPPLER_BAND_HZ = 250.0
"""Doppler extent of a walker, about -1 to +5.5 m/s at 5.8 GHz: the band the SNR is measured in."""


@dataclass(frozen=True)
class UserProfile:
    """A user's fixed gait fingerprint.

    Attributes:
        user_id: 1-based id (the folder ``ID_<user_id>``).
        height_m: body height, N(1.72, 0.08) clipped to [1.55, 1.95] m (adult stature spread).
        speed_mps: preferred walking speed, U(1.0, 1.6) m/s.
        style: cadence U(0.93, 1.07), hip and knee gains U(0.9, 1.1), arm-swing gain U(0.6, 1.35),
            elbow offset U(-5, 15) degrees, left/right asymmetry U(-0.05, 0.05).
        rcs_gains: per-segment amplitude gains U(0.7, 1.3), one per entry of ``radar.SEGMENTS``.
    """

    user_id: int
    height_m: float
    speed_mps: float
    style: GaitStyle
    rcs_gains: tuple[float, ...]


@dataclass(frozen=True)
class ImageJitter:
    """What changes between two recordings of the same user.

    Attributes:
        speed_factor: walking speed multiplier, N(1, 0.06) clipped to [0.8, 1.2] (session-to-session
            speed varies by about 5 %; 0.04 let a pixel probe name 86 % of the 31 users, 0.06 about 78 %).
        heading_deg: walking direction off the radar line of sight, U(-5, 5).
        start_phase: gait phase at the first sample, U(0, 1) cycles.
        start_range_m: distance to the radar at the first sample, U(8, 12) m.
        snr_db: signal-to-noise ratio of the raw return, U(22, 32) dB.
    """

    speed_factor: float
    heading_deg: float
    start_phase: float
    start_range_m: float
    snr_db: float


@dataclass(frozen=True)
class Simulation:
    """One simulated recording.

    Attributes:
        spectrogram: the dB spectrogram with its velocity and time axes.
        jitter: the per-image draws that produced it.
        timing: gait timing at the jittered speed (cycle duration, stride).
        time_s: (N,) slow-time sample times.
        radial_velocity_mps: (N, K) radial velocity of each scatterer of ``radar.SEGMENTS``,
            approaching positive (the ground truth the spectrogram should show).
    """

    spectrogram: Spectrogram
    jitter: ImageJitter
    timing: GaitTiming
    time_s: np.ndarray
    radial_velocity_mps: np.ndarray


def _rng(*key: int) -> np.random.Generator:
    """Generator for one independent stream; keys must be non-negative integers."""
    seed, *spawn_key = key
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=tuple(spawn_key)))


def image_rng(seed: int, user_id: int, image_index: int) -> np.random.Generator:
    """The random stream of one image, independent of every other image and user."""
    return _rng(seed, _IMAGE_STREAM, user_id, image_index)


def draw_user(user_id: int, seed: int = 42) -> UserProfile:
    """The fingerprint of user ``user_id`` (>= 1) under ``seed``; the same arguments give the same user."""
    if user_id < 1:
        raise ValueError(f"user_id must be >= 1 (folders are ID_1, ID_2, ...), got {user_id}")
    rng = _rng(seed, _USER_STREAM, user_id)
    height = float(np.clip(rng.normal(1.72, 0.08), 1.55, 1.95))
    speed = float(rng.uniform(1.0, 1.6))
    style = GaitStyle(
        cadence=float(rng.uniform(0.93, 1.07)),
        hip_gain=float(rng.uniform(0.9, 1.1)),
        knee_gain=float(rng.uniform(0.9, 1.1)),
        arm_gain=float(rng.uniform(0.6, 1.35)),
        elbow_offset_deg=float(rng.uniform(-5.0, 15.0)),
        asymmetry=float(rng.uniform(-0.05, 0.05)),
    )
    gains = tuple(float(g) for g in rng.uniform(0.7, 1.3, size=len(SEGMENTS)))
    return UserProfile(user_id, height, speed, style, gains)


def draw_jitter(rng: np.random.Generator) -> ImageJitter:
    """Draw the per-image variations (see :class:`ImageJitter` for the distributions)."""
    return ImageJitter(
        speed_factor=float(np.clip(rng.normal(1.0, 0.06), 0.8, 1.2)),
        heading_deg=float(rng.uniform(-5.0, 5.0)),
        start_phase=float(rng.uniform(0.0, 1.0)),
        start_range_m=float(rng.uniform(8.0, 12.0)),
        snr_db=float(rng.uniform(22.0, 32.0)),
    )


def simulate_spectrogram(
    user: UserProfile, rng: np.random.Generator, config: RadarConfig = DEFAULT_RADAR
) -> Simulation:
    """Simulate one recording of ``user`` walking towards the radar.

    Args:
        user: the walker's fingerprint.
        rng: the image's random stream (:func:`image_rng`); jitter is drawn first, then the noise.
        config: radar and spectrogram settings.

    Returns:
        The spectrogram (dB, velocity and time axes) with the ground truth behind it.
    """
    jitter = draw_jitter(rng)
    speed = user.speed_mps * jitter.speed_factor
    time = np.arange(config.num_samples) / config.prf_hz
    joints = walk(time, user.height_m, speed, user.style, jitter.start_phase)

    # Walker frame -> radar frame: the radar sits at the origin, the walker starts start_range_m away on
    # the x axis and walks back towards it, heading_deg off the line of sight.
    heading = np.deg2rad(jitter.heading_deg)
    forward = np.array([-np.cos(heading), np.sin(heading), 0.0])
    left = np.array([-np.sin(heading), -np.cos(heading), 0.0])
    start = np.array([jitter.start_range_m, 0.0, 0.0])
    to_radar = np.stack([forward, left, [0.0, 0.0, 1.0]])  # rows: images of the walker's x, y, z axes
    world = {name: start + p @ to_radar for name, p in joints.items()}

    centres, axes = scatterers(world)
    radar_position = np.array([0.0, 0.0, config.radar_height_m])
    signal, ranges = radar_return(
        centres, axes, user.height_m, np.asarray(user.rcs_gains), radar_position, config.wavelength_m
    )
    # The SNR counts the noise inside the band the body occupies, not over the whole PRF.
    in_band_db = 10 * np.log10(config.prf_hz / _BODY_DOPPLER_BAND_HZ)
    spec = spectrogram(add_noise(signal, jitter.snr_db - in_band_db, rng), config)
    radial_velocity = -np.gradient(ranges, time, axis=0)  # range shrinking = approaching = positive
    timing = gait_timing(user.height_m, speed, user.style.cadence)
    return Simulation(spec, jitter, timing, time, radial_velocity)
