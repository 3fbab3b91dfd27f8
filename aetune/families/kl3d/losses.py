"""Thin adapters around MONAI's 3-D GAN parts: the patch discriminator and the fake-3-D perceptual loss.

Nothing here re-implements MONAI: ``PatchDiscriminator3D`` returns the logits that MONAI's
``PatchDiscriminator`` puts last in a list, and ``build_perceptual_3d`` builds MONAI's ``PerceptualLoss``
(2.5-D LPIPS-squeeze on a random fraction of slices along each axis) without ever downloading.

Where the perceptual weights come from: MONAI builds ``lpips.LPIPS(net="squeeze", pretrained=...)``. Its
``pretrained`` flag only picks lpips' linear heads (shipped inside the lpips package); the SqueezeNet 1.1 trunk
is always torchvision's ImageNet weights, which torchvision takes from the torch hub cache
(``<hub dir>/checkpoints/squeezenet1_1-b8a52dc0.pth``) and downloads when that file is missing. Step 2 puts the
file there (registry entry ``lpips_squeeze``), and we refuse to build before it is, so nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from aetune.errors import AetuneError
from aetune.optional import require
from aetune.setup.hub import torch_hub_path

MIN_SLICE_SIDE = 17
"""LPIPS-squeeze's smallest slice side: below it SqueezeNet's last pooling has no output (measured)."""
SQUEEZENET_FILE = "squeezenet1_1-b8a52dc0.pth"
"""torchvision's ImageNet SqueezeNet 1.1: the trunk of LPIPS-squeeze (MONAI's fake-3-D perceptual network)."""


class PatchDiscriminator3D(nn.Module):
    """MONAI's ``PatchDiscriminator(spatial_dims=3)``; ``forward`` returns only the patch logits.

    Args:
        in_channels: volume channels.
        num_layers_d: strided conv layers (seed for 24 GB: 2; MONAI's 3-D notebooks: 3).
        channels: width of the first layer, doubled per layer (seed: 16; MONAI's 3-D notebooks: 32).
        norm: MONAI norm name ("BATCH": MONAI's default and both 3-D notebooks; "INSTANCE": the 3-D LDM script).
    """

    def __init__(self, in_channels: int = 1, num_layers_d: int = 2, channels: int = 16, norm: str = "BATCH") -> None:
        super().__init__()
        if num_layers_d <= 0 or channels <= 0:
            raise AetuneError(f"discriminator layers and channels must be positive, got {num_layers_d} and {channels}")
        nets = require("monai.networks.nets", "--family kl3d")
        self.net = nets.PatchDiscriminator(
            spatial_dims=3, num_layers_d=num_layers_d, channels=channels, in_channels=in_channels, norm=norm
        )

    def forward(self, x: Tensor) -> Tensor:
        """Volumes (B, C, D, H, W) in [-1, 1] -> patch logits (B, 1, d, h, w)."""
        return self.net(x)[-1]  # MONAI returns every layer's features; the logits are last


class FrozenPerceptual3D(nn.Module):
    """MONAI's ``PerceptualLoss`` (fake 3-D, LPIPS-squeeze), frozen and pinned to eval mode (lpips has dropout).

    ``forward(x, y)``: volumes (B, C, D, H, W) in [-1, 1] -> scalar, the sum over the three axes of the mean
    LPIPS over a random ``fake_3d_ratio`` of the slices (the slices drawn with torch's global generator).
    One-channel slices broadcast to 3 channels in lpips' scaling layer.
    """

    def __init__(self, loss: nn.Module, pretrained_backbone: bool) -> None:
        super().__init__()
        self.loss = loss
        self.loss.requires_grad_(False)
        self.pretrained_backbone = pretrained_backbone
        self.eval()

    def train(self, mode: bool = True) -> FrozenPerceptual3D:
        """Stay in eval mode whatever the parent module does."""
        return super().train(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Raises ``ValueError`` naming the sizes when a slice is too small or no slice would be drawn."""
        b, _, *sizes = x.shape
        if min(sizes) < MIN_SLICE_SIDE:
            raise ValueError(
                f"the kl3d perceptual loss needs volumes of at least {MIN_SLICE_SIDE} voxels per side, got "
                f"{'x'.join(map(str, sizes))}: switch it off for this stage or use a larger resolution"
            )
        ratio = self.loss.fake_3d_ratio
        if int(b * min(sizes) * ratio) < 1:
            raise ValueError(f"fake_3d_ratio {ratio} draws no slice of {b} x {min(sizes)}: raise the ratio")
        return self.loss(x.float(), y.float())  # LPIPS in fp32 even under AMP (DESIGN: losses in fp32)


@contextlib.contextmanager
def _hub_dir(path: Path) -> Iterator[None]:
    """Point torch hub (hence torchvision's weight cache) at ``path`` for the block, then restore it."""
    # Restore torch.hub's own override, not get_dir()'s answer: setting that answer back would pin the hub
    # folder for the rest of the process and silently ignore a later $TORCH_HOME (tests, notebooks).
    old = torch.hub._hub_dir
    torch.hub.set_dir(str(path))
    try:
        yield
    finally:
        torch.hub._hub_dir = old


def build_perceptual_3d(fake_3d_ratio: float, pretrained: bool = True) -> FrozenPerceptual3D:
    """MONAI's fake-3-D perceptual loss with LPIPS-squeeze, built offline.

    Args:
        fake_3d_ratio: fraction of slices per axis (MONAI's LDM notebook: 0.2, AE notebook: 0.25), in (0, 1].
        pretrained: take the SqueezeNet trunk from the torch hub cache (step 2 fills it). False builds the
            trunk from random weights (tests, CPU demo: only by explicit choice) and warns: its values mean
            nothing.

    Raises:
        AetuneError: a ratio outside (0, 1], or pretrained and the SqueezeNet file is not in the hub cache.
    """
    if not 0.0 < fake_3d_ratio <= 1.0:
        raise AetuneError(f"perceptual fake_3d_ratio must be in (0, 1], got {fake_3d_ratio}")
    losses = require("monai.losses", "--family kl3d perceptual loss")
    require("lpips", "--family kl3d perceptual loss")

    def build() -> nn.Module:
        with warnings.catch_warnings():
            # lpips calls torchvision's deprecated squeezenet1_1(pretrained=...); the warning is about lpips' code.
            warnings.filterwarnings("ignore", message="Arguments other than a weight enum", category=UserWarning)
            warnings.filterwarnings("ignore", message="The parameter 'pretrained' is deprecated", category=UserWarning)
            return losses.PerceptualLoss(
                spatial_dims=3, network_type="squeeze", is_fake_3d=True, fake_3d_ratio=fake_3d_ratio, pretrained=True
            )

    if pretrained:
        cached = torch_hub_path(SQUEEZENET_FILE)
        if not cached.is_file():
            raise AetuneError(
                f"the kl3d perceptual loss needs torchvision's SqueezeNet 1.1 weights at {cached}: run "
                f"`python step2_download_models.py --only lpips_squeeze`, or copy {SQUEEZENET_FILE} there, "
                "or switch the perceptual loss off"
            )
        return FrozenPerceptual3D(build(), pretrained_backbone=True)
    warnings.warn("kl3d perceptual loss with a random SqueezeNet trunk: its values mean nothing", stacklevel=2)
    tv = require("torchvision.models")
    # MONAI always asks torchvision for the ImageNet trunk; a private hub folder holding random weights under
    # that file name gives it a random trunk without a download and without touching the user's cache.
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "checkpoints").mkdir()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # one random trunk for every session: a resumed run sees the same loss
            torch.save(tv.squeezenet1_1(weights=None).state_dict(), Path(tmp) / "checkpoints" / SQUEEZENET_FILE)
        with _hub_dir(Path(tmp)):
            return FrozenPerceptual3D(build(), pretrained_backbone=False)
