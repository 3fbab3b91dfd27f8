"""Boulic-Thalmann global human walking model: joint trajectories of a walker over time.

References:
    R. Boulic, N. Magnenat-Thalmann, D. Thalmann, "A global human walking model with real-time
    kinematic personification", The Visual Computer 6(6):344-358, 1990 (appendices A-D: body
    translations, pelvis rotations, leg and arm joint angles as periodic curves of the cycle phase).
    V. C. Chen, "The Micro-Doppler Effect in Radar", Artech House, 2011, ch. 4: the same model driving
    the radar simulation of a walking person (his MATLAB code fixes the control points used here).

Frame: x forward along the walking direction (x = 0 at time 0), y to the walker's left, z up from the
ground. Angles are degrees in the model and radians only inside the rotations. The gait phase t in
[0, 1) starts at right heel strike; left limbs run half a cycle behind (t + 0.5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import PchipInterpolator

# Segment lengths as fractions of the body height (Boulic 1990 / Chen 2011).
HEAD = 0.130
HALF_SHOULDER = 0.1295
TORSO = 0.288
HALF_HIP = 0.0955
THIGH = 0.245
SHANK = 0.246
FOOT = 0.143
UPPER_ARM = 0.188
FOREARM = 0.152
LEG = THIGH + SHANK
"""Ht / H = 0.491: the leg length Ht normalises speed and stride in the model."""

# Boulic's model is fitted to walking between these relative speeds (gaits "b" and "c"); slower
# walking (gait "a", RV < 0.5) uses other curves and is never drawn by the synthetic users.
MIN_RELATIVE_SPEED = 0.5
MAX_RELATIVE_SPEED = 3.0

JOINTS = (
    "pelvis",
    "neck",
    "head",
    "shoulder_r",
    "elbow_r",
    "hand_r",
    "shoulder_l",
    "elbow_l",
    "hand_l",
    "hip_r",
    "knee_r",
    "ankle_r",
    "toe_r",
    "hip_l",
    "knee_l",
    "ankle_l",
    "toe_l",
)
"""Joint names in the order of :func:`walk`'s output; "pelvis" is the spine's origin between the hips,
"head" the top of the head, "toe" the tip of the foot."""


@dataclass(frozen=True)
class GaitStyle:
    """Personal deviations from the nominal Boulic walker (all neutral by default).

    Attributes:
        cadence: step-frequency factor; the cycle duration is divided by it at the same speed, so the
            stride shortens as the cadence rises.
        hip_gain: amplitude gain of the hip flexion curve about its cycle mean.
        knee_gain: amplitude gain of the knee flexion curve about its cycle mean.
        arm_gain: gain on the shoulder swing amplitude a = 9.88 RV.
        elbow_offset_deg: constant added to the elbow flexion (a more or less bent arm).
        asymmetry: the left leg's hip and knee amplitudes are scaled by (1 + asymmetry), the right
            leg's by (1 - asymmetry).
    """

    cadence: float = 1.0
    hip_gain: float = 1.0
    knee_gain: float = 1.0
    arm_gain: float = 1.0
    elbow_offset_deg: float = 0.0
    asymmetry: float = 0.0


@dataclass(frozen=True)
class GaitTiming:
    """Spatio-temporal gait parameters (Boulic 1990, section 3).

    Attributes:
        relative_speed: RV = V / Ht (leg lengths per second).
        cycle_s: duration of one cycle (two steps) in seconds, Dc = 1.346 sqrt(RV) / RV / cadence.
        stride_m: distance covered in one cycle, speed * cycle_s (1.346 sqrt(RV) Ht at cadence 1).
        support_fraction: duration of support over the cycle, (0.752 Dc - 0.143) / Dc.
    """

    relative_speed: float
    cycle_s: float
    stride_m: float
    support_fraction: float


def gait_timing(height_m: float, speed_mps: float, cadence: float = 1.0) -> GaitTiming:
    """Cycle duration, stride and support fraction of a walker of this height, speed and cadence."""
    rv = speed_mps / (LEG * height_m)
    if not MIN_RELATIVE_SPEED <= rv <= MAX_RELATIVE_SPEED:
        raise ValueError(
            f"relative speed V/Ht = {rv:.2f} (speed {speed_mps} m/s, height {height_m} m) is outside the "
            f"walking range [{MIN_RELATIVE_SPEED}, {MAX_RELATIVE_SPEED}] of the Boulic model; "
            "choose a speed between about 0.4 and 2.5 m/s"
        )
    cycle_s = 1.346 * np.sqrt(rv) / rv / cadence
    support = (0.752 * cycle_s - 0.143) / cycle_s
    return GaitTiming(float(rv), float(cycle_s), float(speed_mps * cycle_s), float(support))


def _periodic(x: list[float], y: list[float]) -> Callable[[np.ndarray], np.ndarray]:
    """Periodic shape-preserving cubic through control points (x in cycles, wrapped to [0, 1)).

    Chen interpolates Boulic's control points with MATLAB's 'cubic' (PCHIP) over three copies of the
    cycle; the same is done here so the curve and its slope join smoothly at the cycle boundary.
    """
    xs, idx = np.unique(np.mod(x, 1.0), return_index=True)
    ys = np.asarray(y, dtype=np.float64)[idx]
    curve = PchipInterpolator(np.concatenate([xs - 1, xs, xs + 1]), np.tile(ys, 3))
    return lambda t: curve(np.mod(t, 1.0))


def _scaled(curve: Callable[[np.ndarray], np.ndarray], gain: float) -> Callable[[np.ndarray], np.ndarray]:
    """The curve with its amplitude about the cycle mean multiplied by gain."""
    mean = float(curve(np.linspace(0.0, 1.0, 128, endpoint=False)).mean())
    return lambda t: mean + gain * (curve(t) - mean)


def joint_angle_curves(relative_speed: float, support_fraction: float) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Nominal flexion curves of one side (degrees) as functions of the phase t (cycles).

    Control points from Boulic 1990 appendices C-D as tabulated in Chen's simulation: gait "b" for
    RV < 1.3, blending linearly into gait "c" up to RV = 3 (s below). Chen's elbow y3 for gait "c" reads
    (rv - .13), a typo for (rv - 1.3) that breaks continuity with gait "b" at RV = 1.3; fixed here.

    Args:
        relative_speed: RV in [0.5, 3].
        support_fraction: support duration over cycle duration (the ankle's fourth control point).

    Returns:
        Curves "hip", "knee", "ankle" (dorsiflexion positive), "elbow" (flexion positive) and "thorax"
        (torsion about the vertical); the shoulder is analytic and handled in :func:`walk`.
    """
    rv = relative_speed
    s = float(np.clip((rv - 1.3) / 1.7, 0.0, 1.0))
    sb = float(np.clip((rv - 0.5) / 0.8, 0.0, 1.0))
    elbow_x2 = 0.5 + 0.01 * sb if rv < 1.3 else 0.51 + 0.04 * s
    elbow_y = (6 + 8 * sb, 20 + 24 * sb, 8 + 9 * sb) if rv < 1.3 else (14 - 6 * s, 44 + 26 * s, 17 - 6 * s)
    return {
        "hip": _periodic([0.2 * s - 0.1, 0.5, 0.9], [25 + 5 * s, -15, 25 + 6 * s]),
        "knee": _periodic(
            [0.17 - 0.05 * s, 0.4, 0.75 - 0.05 * s, 1 - 0.03 * s], [3 + 22 * s, 3, 70 - 5 * s, 3 + 3 * s]
        ),
        "ankle": _periodic(
            [0.0, 0.08, 0.5 - 0.1 * s, support_fraction, 0.85],
            [5 * s - 3, 4 * s - 18, 8 - 3 * s, -20 - 8 * s, 5 * s - 3],
        ),
        "elbow": _periodic([0.05, elbow_x2, 0.9 - 0.1 * s], list(elbow_y)),
        "thorax": _periodic([0.1, 0.4, 0.6, 0.9], [4 / 3 * rv, -4.5 / 3 * rv, -4 / 3 * rv, 4.5 / 3 * rv]),
    }


def _down(alpha: np.ndarray) -> np.ndarray:
    """Unit vectors (N, 3) in the sagittal plane, alpha radians from straight down towards forward."""
    return np.stack([np.sin(alpha), np.zeros_like(alpha), -np.cos(alpha)], axis=-1)


def _rotate(points: np.ndarray, pitch: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Rotate points (N, P, 3) about the origin: pitch about y (down swings forward), then yaw about z."""
    cp, sp, cy, sy = np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    # Chen's Ry maps (x, z) -> (x cos - z sin, x sin + z cos): a hanging limb swings forward for pitch > 0.
    xp, zp = x * cp[:, None] - z * sp[:, None], x * sp[:, None] + z * cp[:, None]
    return np.stack([xp * cy[:, None] - y * sy[:, None], xp * sy[:, None] + y * cy[:, None], zp], axis=-1)


def walk(
    time_s: np.ndarray,
    height_m: float,
    speed_mps: float,
    style: GaitStyle = GaitStyle(),
    start_phase: float = 0.0,
) -> dict[str, np.ndarray]:
    """Joint positions of a walker over time.

    Args:
        time_s: sample times (N,) in seconds.
        height_m: body height H in metres.
        speed_mps: mean forward speed V in m/s (RV = V / (0.491 H) must lie in [0.5, 3]).
        style: personal deviations from the nominal model.
        start_phase: gait phase at time 0, in cycles.

    Returns:
        Joint name (see ``JOINTS``) -> positions (N, 3) in metres, walker frame (x forward, z up).
    """
    timing = gait_timing(height_m, speed_mps, style.cadence)
    rv, ht = timing.relative_speed, LEG * height_m
    t = start_phase + np.asarray(time_s, dtype=np.float64) / timing.cycle_s
    curves = joint_angle_curves(rv, timing.support_fraction)
    rad = np.pi / 180

    # Body translations (Boulic appendix A, amplitudes relative to Ht): vertical bounce twice a cycle,
    # lateral sway once a cycle, fore-aft surge twice a cycle with phase 0.625 - support fraction.
    vertical = ht * 0.015 * rv * (np.sin(2 * np.pi * (2 * t - 0.35)) - 1)
    lateral = ht * -0.032 * np.sin(2 * np.pi * (t - 0.1))
    surge = ht * -0.021 * np.sin(2 * np.pi * (2 * t + 2 * (0.625 - timing.support_fraction)))
    origin = np.stack([speed_mps * np.asarray(time_s) + surge, lateral, ht + vertical], axis=-1)
    # Pelvis rotations (appendix B): forward/backward tilt (a1 = 2 deg, applied to the upper body as in
    # Chen) and torsion about the vertical (a3 = 4 RV deg, applied to the legs). The left/right list
    # (a2 = 0.01 RV deg in Chen's code) is below a millimetre of motion and is left out.
    tilt = (2 * np.sin(2 * np.pi * (2 * t - 0.1)) - 2) * rad
    torsion = -4 * rv * np.cos(2 * np.pi * t) * rad
    thorax = curves["thorax"](t) * rad
    shoulder_amp = 9.88 * rv * style.arm_gain

    legs, arms = [], []
    # Right side first, then left (half a cycle later, mirrored in y), matching the order of JOINTS.
    for phase, y_sign, leg_gain in ((t, -1.0, 1 - style.asymmetry), (t + 0.5, 1.0, 1 + style.asymmetry)):
        hip = _scaled(curves["hip"], style.hip_gain * leg_gain)(phase) * rad
        knee = _scaled(curves["knee"], style.knee_gain * leg_gain)(phase) * rad
        ankle = curves["ankle"](phase) * rad
        hip_p = np.broadcast_to([0.0, y_sign * HALF_HIP * height_m, 0.0], (len(t), 3))
        knee_p = hip_p + THIGH * height_m * _down(hip)
        ankle_p = knee_p + SHANK * height_m * _down(hip - knee)
        toe_p = ankle_p + FOOT * height_m * _down(np.pi / 2 + hip - knee + ankle)
        legs.append(np.stack([hip_p, knee_p, ankle_p, toe_p], axis=1))

        # Shoulder flexion 3 - a/2 - a cos(2 pi t) (Boulic appendix D), elbow from its control points.
        shoulder = (3 - shoulder_amp / 2 - shoulder_amp * np.cos(2 * np.pi * phase)) * rad
        elbow = (curves["elbow"](phase) + style.elbow_offset_deg) * rad
        shoulder_p = np.broadcast_to([0.0, y_sign * HALF_SHOULDER * height_m, TORSO * height_m], (len(t), 3))
        elbow_p = shoulder_p + UPPER_ARM * height_m * _down(shoulder)
        hand_p = elbow_p + FOREARM * height_m * _down(shoulder + elbow)
        arms.append(np.stack([shoulder_p, elbow_p, hand_p], axis=1))

    n = len(t)
    spine = np.zeros((n, 3, 3))
    spine[:, 1:, 2] = [TORSO * height_m, (TORSO + HEAD) * height_m]  # pelvis, neck, top of the head
    upper = _rotate(np.concatenate([spine, *arms], axis=1), tilt, thorax)  # (N, 3 + 2 * 3, 3)
    lower = _rotate(np.concatenate(legs, axis=1), np.zeros(n), torsion)  # (N, 2 * 4, 3)
    points = np.concatenate([upper, lower], axis=1) + origin[:, None]  # (N, 17, 3), ordered as JOINTS
    return {name: points[:, i] for i, name in enumerate(JOINTS)}
