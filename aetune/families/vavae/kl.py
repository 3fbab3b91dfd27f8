"""``kl``: the LDM KL autoencoder (LightningDiT's ``AutoencoderKL`` without alignment), f16d32 by default."""

from __future__ import annotations

from torch import Tensor, nn

from aetune.models.base import Autoencoder, frozen_names
from aetune.models.outputs import DecoderOutput, DiagonalGaussian, EncoderOutput
from aetune.models.registry import register_family
from aetune.nn.ldm import Decoder, Encoder, KLConfig, set_kernels


@register_family(
    "kl",
    KLConfig,
    "LDM KL-VAE (LightningDiT layout), f16d32 by default",
    tiny={"ch": 32, "ch_mult": [1, 1, 2], "num_res_blocks": 1, "attn_resolutions": [8], "resolution": 32},
)
class KLAutoencoder(Autoencoder):
    """Encoder -> ``quant_conv`` (1x1) -> diagonal Gaussian -> ``post_quant_conv`` (1x1) -> decoder.

    Attribute names are the state-dict keys of LightningDiT's ``AutoencoderKL``.
    """

    def __init__(self, config: KLConfig) -> None:
        super().__init__(config)
        c = config
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.quant_conv = nn.Conv2d(2 * c.z_channels, 2 * c.embed_dim, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(c.embed_dim, c.z_channels, kernel_size=1)
        self.in_channels = c.in_channels
        self.latent_channels = c.embed_dim
        self.downsample_factor = 2 ** (len(c.ch_mult) - 1)

    def encode(self, x: Tensor) -> EncoderOutput:
        """Images (B, 3, H, W) in [-1, 1] -> posterior over (B, embed_dim, H/f, W/f) latents.

        Raises:
            ValueError: wrong shape, or H, W not multiples of ``downsample_factor``.
        """
        self.check_images(x)
        posterior = DiagonalGaussian(self.quant_conv(self.encoder(x)))  # (B, 2 embed_dim, h, w)
        return EncoderOutput(latent_dist=posterior, latents=posterior.mode())

    def decode(self, z: Tensor) -> DecoderOutput:
        """Latents (B, embed_dim, h, w) -> images (B, 3, h*f, w*f)."""
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(f"{self.family} decodes latents (B, {self.latent_channels}, h, w), got {tuple(z.shape)}")
        return DecoderOutput(sample=self.decoder(self.post_quant_conv(z)))

    @property
    def gan_last_layer(self) -> nn.Parameter:
        return self.decoder.conv_out.weight

    @property
    def align_last_layer(self) -> nn.Parameter:
        return self.encoder.conv_out.weight

    def freeze_encoder_levels(self, n: int) -> list[str]:
        """Freeze ``encoder.conv_in`` and ``encoder.down.0`` .. ``encoder.down.{n-1}`` (n=0: nothing).

        Fine-tuning on a few thousand images keeps the generic low-level filters (the seed freezes 3-4 of
        the 5 levels for ~5k images); the deep levels, ``mid``, ``conv_out`` and the decoder still train.

        Returns:
            The full names of the parameters frozen (``requires_grad=False``).

        Raises:
            ValueError: if ``n`` is not in [0, number of levels].
        """
        levels = len(self.encoder.down)
        if not 0 <= n <= levels:
            raise ValueError(f"freeze_encoder_levels must be in [0, {levels}] for this encoder, got {n}")
        if n == 0:
            return []
        names = frozen_names(self.encoder.conv_in, "encoder.conv_in")
        for i in range(n):
            names += frozen_names(self.encoder.down[i], f"encoder.down.{i}")
        return names

    def set_kernels(self, kernels: str) -> None:
        """Switch the encoder and decoder to op sequence ``kernels`` (``exact`` | ``fast`` | ``auto``)."""
        set_kernels(self, kernels)
        self._config.kernels = kernels

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.encoder.gradient_checkpointing = enabled
        self.decoder.gradient_checkpointing = enabled
