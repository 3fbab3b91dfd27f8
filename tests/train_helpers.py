"""Tiny data and configs for the step 4 tests: a prepared work directory and a 32 px VA-VAE preset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from aetune.config import Config, load_config
from aetune.data.prepare import prepare_dataset

TINY_PRESET = """\
base: vavae
data: {image_size: 32, num_workers: 0}
model:
  args: {ch: 32, ch_mult: [1, 1, 2], num_res_blocks: 1, attn_resolutions: [8], resolution: 32, align_dim: 64}
teacher: {name: test_vit, pretrained: false}
discriminator: {ndf: 8, n_layers: 2}
loss: {perceptual_weight: 0.0, lpips_pretrained: false}
train:
  batch_size: 4
  gradient_accumulation: 1
  learning_rate: 1.0e-3
  precision: "32"
  val_every_n_steps: 4
  checkpoint_every_n_batches: 2
  patience: 50
  stages:
    "1": {epochs: 1, loss: {vf_weight: 0.5, disc_start: -1}}
    "2": {epochs: 1, loss: {vf_weight: 0.1, disc_start: 0}}
    "3": {epochs: 1, loss: {vf_weight: 0.1, disc_start: 0, distmat_margin: 0.25, cos_margin: 0.5}}
"""


def spectrogram_like(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random image with a few bright curves: (size, size, 3) uint8, learnable by a tiny model."""
    t = np.linspace(0, 1, size)
    img = np.zeros((size, size), dtype=np.float64)
    for _ in range(3):
        f, phase, amp = rng.uniform(1, 4), rng.uniform(0, 6.3), rng.uniform(0.1, 0.35)
        centre = 0.5 + amp * np.sin(2 * np.pi * f * t + phase)  # one Doppler curve over time
        img += np.exp(-(((np.arange(size)[:, None] / size) - centre[None, :]) ** 2) / 0.002)
    img = np.clip(img / img.max(), 0, 1)
    return (np.stack([img, img**2, np.sqrt(img)], axis=-1) * 255).astype(np.uint8)


def make_work_dir(tmp_path: Path, users: int = 3, per_user: int = 8, size: int = 32) -> Path:
    """``users`` folders of ``per_user`` PNGs, prepared by step 3's code (val ratio 0.25) in ``tmp/work``."""
    root, work = tmp_path / "images", tmp_path / "work"
    rng = np.random.default_rng(0)
    for u in range(users):
        (root / f"ID_{u + 1}").mkdir(parents=True, exist_ok=True)
        for i in range(per_user):
            Image.fromarray(spectrogram_like(rng, size)).save(root / f"ID_{u + 1}" / f"{i:03d}.png")
    prepare_dataset(root, work, name="tiny", val_ratio=0.25, seed=0, progress=False)
    return work


def tiny_preset(tmp_path: Path) -> Path:
    """The tiny preset as a YAML file (``--config`` path)."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_PRESET, encoding="utf-8")
    return path


def tiny_config(tmp_path: Path, *overrides: str) -> Config:
    """The tiny preset with ``--set``-style overrides."""
    return load_config(str(tiny_preset(tmp_path)), list(overrides))


def nan_inputs_at(monkeypatch, batches: set[int]) -> None:
    """Make the kl/vavae recipe's generator phase see NaN images at the given stage batches (0-based).

    Every loss term is then non-finite, whichever way the recipe splits its backward.
    """
    from aetune.families.vavae.recipe import KLRecipe

    real = KLRecipe.generator_step

    def step(self, x, target, ctx):
        return real(self, x * float("nan") if ctx.batch in batches else x, target, ctx)

    monkeypatch.setattr(KLRecipe, "generator_step", step)
