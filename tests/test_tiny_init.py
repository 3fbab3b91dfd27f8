"""A tiny autoencoder built from random weights starts with latents that depend on the image.

With PyTorch's default init the f8 encoders' latents barely vary from image to image (2 % of their spread
for TAESD, 0.6 % for TAEHV on the images below), so a from-scratch run learns the mean image first and
stays there (issue 19's taehv demo). ``init_from_scratch`` must keep the image in the latents.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aetune.families.tiny.taehv import MemBlock
from aetune.families.tiny.taesd import OUTPUT_BIAS_INIT, Block
from aetune.models import create_autoencoder

DEMO_SHAPES = {
    "taesd": {"latent_channels": 8, "width": 32},  # f8 (the released shape) at the demo's width
    "taehv": {"latent_channels": 16, "encoder_width": 16, "decoder_widths": [32, 16, 16, 16]},  # taehv_demo
}


def images() -> torch.Tensor:
    """Eight smooth random images (8, 3, 32, 32) in [-1, 1]: their spread across images is ~95 % of the total."""
    g = torch.Generator().manual_seed(0)
    return nn.functional.interpolate(torch.rand(8, 3, 8, 8, generator=g), size=32, mode="bilinear") * 2 - 1


def spread_across_images(model: nn.Module, family: str) -> float:
    """Mean std of the latents across the images, over their total std (0: the latents ignore the image)."""
    x = images()
    with torch.no_grad():
        z = model.encode(x[:, None].expand(-1, 5, -1, -1, -1) if family == "taehv" else x).latents
    return float(z.std(0).mean() / z.std())


@pytest.mark.parametrize("family", sorted(DEMO_SHAPES))
def test_latents_carry_the_image_from_the_first_batch(family: str) -> None:
    torch.manual_seed(0)
    model = create_autoencoder(family, **DEMO_SHAPES[family])
    assert spread_across_images(model, family) > 0.2  # measured 0.33 (taehv) and 0.37 (taesd)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()  # PyTorch's default init, what the model had before
    assert spread_across_images(model, family) < 0.05  # measured 0.006 and 0.02: why the init exists


SHAPES = {**DEMO_SHAPES, "taesd_gn": {"latent_channels": 8, "width": 8, "midblock_gn": True}}
"""The demo shapes and taef2's (a GroupNorm residual branch in the lowest-resolution Blocks)."""


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_blocks_start_as_the_identity_and_the_output_grey(shape: str) -> None:
    model = create_autoencoder(shape.removesuffix("_gn"), **SHAPES[shape])
    blocks = [m for m in model.modules() if isinstance(m, (Block, MemBlock))]
    assert len(blocks) >= 12
    for block in blocks:
        assert not block.conv[-1].weight.any() and not block.conv[-1].bias.any()
        assert block.conv[0].weight.std() > 0
    pools = [b.pool for b in blocks if getattr(b, "pool", None) is not None]
    assert len(pools) == (6 if shape == "taesd_gn" else 0)  # 3 Blocks each in the encoder's and decoder's f8 stage
    assert all(not pool[-1].weight.any() and pool[0].weight.std() > 0 for pool in pools)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.bias is not None]
    assert all(not m.bias.any() for m in convs if m is not model.decoder[-1])
    assert torch.equal(model.decoder[-1].bias, torch.full((3,), OUTPUT_BIAS_INIT))
    with torch.no_grad():
        y = model.decode(torch.zeros(1, *model.encode(images()[:1]).latents.shape[1:])).sample
    torch.testing.assert_close(y, torch.zeros_like(y))  # zero latents decode to grey (0 in [-1, 1])
