"""RAE's inputs: the reference's bicubic resize and random crops, and images of any size reaching the recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from aetune.config import load_config
from aetune.families.rae.augment import random_crops, resize_images
from aetune.recipes import StepContext, get_recipe

pytest.importorskip("transformers")


def smooth_image(size: int, seed: int = 0) -> np.ndarray:
    """(size, size, 3) uint8: a bicubic blow-up of 8 x 8 noise (a photo-like image, no pixel-level noise)."""
    base = (np.random.default_rng(seed).random((8, 8, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(base).resize((size, size), Image.Resampling.BICUBIC))


def to_range(u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(u8.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1  # (1, 3, S, S) in [-1, 1]


@pytest.mark.parametrize("size", [96, 32])  # up (the 1.5 x crop source) and down (a large image to the model's)
def test_resize_is_the_references_pil_bicubic_within_one_level(size: int) -> None:
    img = smooth_image(64)
    pil = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC)).astype(int)
    ours = resize_images(to_range(img), size)
    levels = (ours + 1) * 127.5
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)  # 8-bit levels, as a uint8 image
    diff = np.abs(levels[0].permute(1, 2, 0).round().numpy().astype(int) - pil)
    assert diff.max() <= 1 and diff.mean() < 0.5
    x = to_range(img)
    assert resize_images(x, 64) is x  # the model's size already: untouched


def test_random_crops_are_windows_of_the_1_5x_resize() -> None:
    x = torch.cat([to_range(smooth_image(32, seed)) for seed in range(4)])
    big = resize_images(x, 48)  # 32 * 1.5, the reference's 256 -> 384
    crops = random_crops(x, 32, torch.Generator().manual_seed(0))
    assert crops.shape == (4, 3, 32, 32)
    corners = []
    for img, crop in zip(big, crops, strict=True):
        found = [(t, s) for t in range(17) for s in range(17) if torch.equal(img[:, t : t + 32, s : s + 32], crop)]
        assert len(found) == 1
        corners += found
    assert len(set(corners)) > 1  # one window per image, not one for the batch
    torch.testing.assert_close(random_crops(x, 32, torch.Generator().manual_seed(0)), crops, rtol=0, atol=0)
    assert not torch.equal(random_crops(x, 32, torch.Generator().manual_seed(1)), crops)


def demo_recipe(*sets: str):
    recipe = get_recipe("rae")(load_config("rae_demo", list(sets)), "1")
    torch.manual_seed(0)
    recipe.attach(recipe.build())
    return recipe


def test_images_of_another_size_are_resized_or_cropped_not_refused() -> None:
    u8 = torch.from_numpy(np.stack([smooth_image(48, seed) for seed in range(2)])).permute(0, 3, 1, 2)
    recipe = demo_recipe()  # the preset: random crops, no token cache; the model reconstructs 32 px
    x, target = recipe.inputs((u8, torch.zeros(2)))
    assert x.shape[-1] == 48 and target.shape[-1] == 32
    torch.testing.assert_close(target, resize_images(x, 32))
    assert recipe.reconstruct(recipe.rae, x).shape == (2, 3, 32, 32)  # validation: the whole image at 32 px
    g = recipe.generator_step(x, target, StepContext(batch=0, generator=torch.Generator().manual_seed(3)))
    real = g.carry["real"]  # what the loss and the discriminator compare with: a crop, not the whole image
    assert real.shape == (2, 3, 32, 32) and not torch.equal(real, target)
    torch.testing.assert_close(g.carry["tokens"], recipe.rae.encode_tokens(real), rtol=0, atol=0)
    whole = demo_recipe("augment.random_crop=false")
    g = whole.generator_step(x, target, StepContext(batch=0, generator=torch.Generator().manual_seed(3)))
    torch.testing.assert_close(g.carry["real"], target, rtol=0, atol=0)
    torch.testing.assert_close(g.carry["tokens"], whole.rae.encode_tokens(target), rtol=0, atol=0)
