"""Every demo preset visibly learns: a few batches from scratch beat the constant-image baseline by a margin.

A collapsed model passes every other test: issue 19's ``taesd_demo`` and ``taehv_demo`` ended as one
dark-blue image (9.9 and 10.2 dB), below the ~10.5 dB of predicting each image by its own mean colour. Here
each preset in ``configs/*_demo.yaml`` trains its first stage on a tiny synthetic set of its data kind,
made by step 3 as the demo commands make it, and its validation PSNR (step 4's own, from
``validation_history.json``) must beat that baseline, computed here on the same validation targets with the
same metric, by ``MARGIN_DB``.

The presets are loaded as they ship; the only overrides (``SHRINK`` and ``BATCHES``) shrink the run: fewer
and smaller images, and the number of batches, so the learning rate, loss, model and schedule are the
demo's own. Full-length figures: docs/demos.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import step3_prepare_dataset as step3
from aetune.config import Config, load_config
from aetune.data.datamodule import ImageDataModule
from aetune.data.prepared import load_prepared
from aetune.recipes import get_recipe
from aetune.train.runner import TrainRequest, run_training

MARGIN_DB = 1.0
"""The bar above the baseline. The baseline (each image, frame or slice replaced by its own per-channel mean
colour) is the best any output that ignores the image's structure can score: a collapsed model, one colour
whatever the input, scores at or below it (issue 19's demos: 0.3 to 0.6 dB below). 1 dB above it is 21 % less
squared error than that best flat image, several times the run-to-run spread of these few-batch runs, and
within reach of every preset in ``BATCHES``; the full-length demos clear it by 4 dB and more (docs/demos.md)."""

STEP3 = {
    "image": ["--synthetic", "microdoppler", "--num_users", "2", "--images_per_user", "10", "--image_size", "32"],
    "video": ["--synthetic", "microdoppler_video", "--num_users", "2", "--image_size", "32"],
    "volume": ["--synthetic", "phantoms", "--phantom_classes", "2", "--phantoms_per_class", "5"],
    "pair": ["--synthetic", "paired", "--pairs_per_type", "5", "--image_size", "32"],
}
"""Step 3's demo commands with fewer and smaller items (the size-reducing part of the test)."""

SHRINK = {"taehv_demo": ["clip.frames=5"]}
"""Size-reducing overrides beyond 32 px images (32^3 volumes, the kl3d demo's own size): 5-frame clips (2
latents). At 16^3 the kl3d demo's f2 model learned too slowly for a short test (measured below the baseline
after 60 batches)."""

BATCHES = {
    "demo": 25,  # +3.7 dB after 25 (the f2 demo model)
    "rae_demo": 320,  # a random frozen encoder: +1.0 dB after 250 (a small model: ~0.2 s per batch)
    "taesd_demo": 40,  # +1.2 dB after 30, +2.1 after 40 (f8)
    "taehv_demo": 100,  # +0.2 dB after 40, +1.9 dB after 100
    "kl3d_demo": 50,  # +1.2 dB after 40, +2.3 dB after 80
    "restoration_demo": 15,  # +5.8 dB after 15, +6.5 after 20 (the f2 model)
}
"""Batches of stage 1 per preset: about the fewest that clear the margin with room (the comments: measured here
with these settings, seed 0, 2 busy CPU cores)."""


def demo_run(preset: str, work: Path) -> tuple[float, float]:
    """Train ``preset``'s stage 1 for ``BATCHES[preset]`` batches in ``work``; (validation PSNR, baseline) in dB."""
    n = BATCHES[preset]
    sets = [
        "data.image_size=32",
        "data.cache=ram",
        *SHRINK.get(preset, []),
        f"train.stages.1.max_steps={n}",
        "train.stages.1.epochs=1000",
    ]
    sets += [f"train.val_every_n_steps={n}", f"train.checkpoint_every_n_batches={n}", "train.patience=0"]
    cfg = load_config(preset, sets)
    kind = get_recipe(cfg.model.family, cfg.model.task).data_kind
    assert step3.main(step3.parse_args(["--output_dir", str(work), "--no_progress", *STEP3[kind]])) == 0
    result = run_training(TrainRequest(work, cfg, ["1"], accelerator="cpu", progress_bar=False))
    assert result.status == "done", result
    history = json.loads((work / "checkpoints/stage1/validation_history.json").read_text())
    last = history["validations"][-1]
    assert last["batches"] == n, history
    return psnr_of(last), constant_baseline(cfg, work)


def psnr_of(values: dict) -> float:
    """The PSNR of a validation record: ``psnr``, or ``PSNR`` under the restoration task's fork-style keys."""
    return values["psnr"] if "psnr" in values else values["PSNR"]


def constant_baseline(cfg: Config, work: Path) -> float:
    """Mean validation PSNR of each target image (frame, slice) replaced by its own per-channel mean colour."""
    recipe = get_recipe(cfg.model.family, cfg.model.task)(cfg, "1")
    recipe.attach(recipe.build())  # the video recipe asks its model how many frames come back
    prepared = load_prepared(work)
    names = {label: name for name, label in prepared.labels.items()}
    size = cfg.stage_image_size("1")
    data = ImageDataModule(prepared, work, size, 4, 0, "ram", 0, lambda: 0, False, recipe.data_kind)
    data.setup()
    values = []
    for batch in data.val_dataloader():
        _, target = recipe.inputs(batch)
        a = (target.float() + 1.0) / 2.0  # (N, 3, H, W) in [0, 1]: what validation scores
        flat = a.mean(dim=(-2, -1), keepdim=True).expand_as(a)
        values.append(psnr_of(recipe.validation_values(a, flat, batch[-1], names)))
    return torch.cat(values).mean().item()


@pytest.mark.parametrize("preset", list(BATCHES))
def test_demo_preset_beats_the_constant_image_baseline(preset: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    psnr, baseline = demo_run(preset, tmp_path / "work")
    assert psnr > baseline + MARGIN_DB, (
        f"{preset}: {psnr:.2f} dB after {BATCHES[preset]} batches, the constant-image baseline {baseline:.2f} dB: "
        f"not {MARGIN_DB} dB above it (a collapsed or too slow demo)"
    )
