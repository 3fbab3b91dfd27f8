"""Initialisation of a tiny autoencoder trained from random weights (no released weights to load).

The references never train these layouts from random weights without a teacher: TAESD and TAEHV are
distilled from a big VAE's latents, and Seraena's notebooks only set the last bias to grey. PyTorch's
default convolution init (weights of variance 1/(3 fan_in), uniform biases) then makes the latents
almost independent of the input: through the ~20 unnormalised layers of an f8 encoder the
image-dependent part of the activations shrinks by about 1/3 per conv while the biases' part does not.
Measured at init on the micro-Doppler demo clips (32 px): the latents' spread across clips was 0.3 %
of their total spread (TAEHV; TAESD f8 2 %), against 30 % for the input frames. The decoder then
learns the one output that needs no latent, the mean image: in a plain training loop from pixels,
TAEHV stayed there (15-16.5 dB) for 600-2,000 batches in every variant tried but a few lucky seeds
(docs/demos.md).

The fix is the usual one for residual networks without normalisation (zero-initialised residual
branches: Goyal et al. 2017, Fixup, SkipInit): He-normal weights for the ReLU convolutions, zero
biases, and the last convolution of every residual branch zero, so each block starts as the identity
and depth does not shrink or blow up the signal. The latents then spread 40 % across clips at init,
and all three seeds measured left the mean image by batch 500 (17.2-18.2 dB there; the one run taken
to 1,000 batches reached 20.2 dB).

Released or teacher weights overwrite all of this; it decides only where a from-scratch run starts.
"""

from __future__ import annotations

from torch import nn


def init_from_scratch(model: nn.Module, branch_ends: list[nn.Conv2d], output: nn.Conv2d, output_bias: float) -> None:
    """Initialise ``model`` in place for training from random weights.

    Args:
        model: the autoencoder; every ``nn.Conv2d`` in it gets He-normal weights (ReLU gain) and zero bias.
        branch_ends: the last convolution of each residual branch: weights and bias set to zero.
        output: the decoder's last convolution: its bias set to ``output_bias``.
        output_bias: the start value of every output channel, in the decoder's [0, 1] output range.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    for end in branch_ends:
        nn.init.zeros_(end.weight)
        if end.bias is not None:
            nn.init.zeros_(end.bias)
    assert output.bias is not None
    nn.init.constant_(output.bias, output_bias)
