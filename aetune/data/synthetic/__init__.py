"""Built-in synthetic dataset: radar micro-Doppler spectrograms of simulated walkers, one folder per user.

A physics-based stand-in for the public Glasgow / CI4R walking sets: Boulic-Thalmann gait kinematics
(:mod:`.walker`), ellipsoid scatterers seen by a 5.8 GHz CW radar and a jet spectrogram (:mod:`.radar`),
users with fixed gait fingerprints and per-recording jitter (:mod:`.users`), and the folder writer
(:mod:`.generate`).
"""

from aetune.data.synthetic.generate import generate_microdoppler_dataset, render_image
from aetune.data.synthetic.radar import RadarConfig, Spectrogram
from aetune.data.synthetic.users import (
    ImageJitter,
    Simulation,
    UserProfile,
    draw_user,
    image_rng,
    simulate_spectrogram,
)
from aetune.data.synthetic.walker import GaitStyle

__all__ = [
    "GaitStyle",
    "ImageJitter",
    "RadarConfig",
    "Simulation",
    "Spectrogram",
    "UserProfile",
    "draw_user",
    "generate_microdoppler_dataset",
    "image_rng",
    "render_image",
    "simulate_spectrogram",
]
