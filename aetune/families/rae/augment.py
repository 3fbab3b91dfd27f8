"""What the RAE decoder trains on: the reference's resize + random crop (bytetriper/RAE ``train_stage1.py``).

Training: resize to 1.5 x the model's size (bicubic; 256 -> 384, the reference's first size) and take one random
``size`` x ``size`` window per image. Validation and training without crops: the whole image resized to the
model's size (the reference's centre crop of a square image). Every resized image is rounded to 8 bit, as the
reference's PIL resize returns uint8 pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from aetune.families.rae.losses import quantize_fakes

CROP_RESIZE = 1.5
"""Side resized to before the random crop, in crop sides (the reference: 384 for 256, else int(1.5 x size))."""


def resize_images(x: Tensor, size: int) -> Tensor:
    """Images (B, 3, H, W) in [-1, 1] -> (B, 3, size, size) in [-1, 1], 8-bit levels; unchanged when already square
    ``size``. Bicubic with antialiasing, torch's counterpart of the reference's PIL bicubic resize."""
    if x.shape[-2:] == (size, size):
        return x
    y = F.interpolate(x.float(), size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return quantize_fakes(y).to(x.dtype)  # bicubic overshoots: clamp and round as a uint8 image would be


def random_crops(x: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """Images (B, 3, H, W) in [-1, 1] -> one random (3, size, size) window of each, resized to
    ``int(CROP_RESIZE * size)`` first: (B, 3, size, size).

    Args:
        x: images of any size (the loader's).
        size: the crop side (the model's image size).
        generator: draws the windows (the batch's generator, on ``x``'s device: the same crops after a resume).
    """
    big = resize_images(x, int(CROP_RESIZE * size))
    b, c = big.shape[:2]
    # one (top, left) per image, uniform over every window that fits, as torchvision's RandomCrop
    corners = torch.randint(0, big.shape[-1] - size + 1, (b, 2, 1), generator=generator, device=generator.device)
    rows, cols = (corners + torch.arange(size, device=big.device)).unbind(1)  # (B, size) pixel indices each
    batch, channel = torch.arange(b, device=big.device), torch.arange(c, device=big.device)
    # advanced indexing gathers every window at once, without reading the corners back to the host
    return big[batch[:, None, None, None], channel[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]
