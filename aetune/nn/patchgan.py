"""PatchGAN discriminator in the taming-transformers layout (``NLayerDiscriminator``), as LightningDiT uses it.

State-dict compatible with ``loss.discriminator.*`` of the released VA-VAE checkpoint: ``main.0`` conv,
``main.2``/``main.3`` conv + BatchNorm, ... ``main.11`` the 1-channel output conv. With n_layers=3 a 256 px
image gives 30x30 logits, each seeing a 70x70 patch (pix2pix).
"""

from __future__ import annotations

from torch import Tensor, nn


class NLayerDiscriminator(nn.Module):
    """Images (B, input_nc, H, W) in [-1, 1] -> patch logits (B, 1, h', w').

    Args:
        input_nc: image channels.
        ndf: width of the first conv; doubles per layer up to 8 * ndf.
        n_layers: stride-2 conv layers after the first one is counted in (3 in the released model).

    BatchNorm (not ActNorm) as the released model: in train mode it normalises with the statistics of
    the batch it is given, so call it separately on real and on reconstructed images (as the reference).
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        if input_nc <= 0 or ndf <= 0 or n_layers <= 0:
            raise ValueError(f"input_nc, ndf and n_layers must be positive, got {input_nc}, {ndf}, {n_layers}")
        self.config = {"input_nc": input_nc, "ndf": ndf, "n_layers": n_layers}
        # Convs followed by BatchNorm have no bias (BatchNorm's shift replaces it), as in taming.
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1  # the last hidden layer keeps the resolution
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)


def _init_weights(m: nn.Module) -> None:
    """DCGAN initialisation (taming ``weights_init``): conv N(0, 0.02), BatchNorm scale N(1, 0.02), shift 0."""
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
