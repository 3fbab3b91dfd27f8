"""The family registry and the interface every registered family shares (parametrised over the registry)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
import yaml

import aetune
from aetune.families.vavae.kl import KLAutoencoder, KLConfig
from aetune.losses import ObjectiveWeights, generator_objective
from aetune.models import (
    Autoencoder,
    DecoderOutput,
    DiagonalGaussian,
    EncoderOutput,
    FamilyConfig,
    ModelConfigError,
    create_autoencoder,
    get_family,
    list_families,
    register_family,
    registry,
)
from aetune.nn.patchgan import NLayerDiscriminator

FAMILIES = list_families()


def tiny(name: str) -> Autoencoder:
    torch.manual_seed(0)
    return create_autoencoder(name, **get_family(name).tiny)


def images(model: Autoencoder, size: int = 32, batch: int = 2) -> torch.Tensor:
    """Random inputs in [-1, 1]: (B, C, S, S) for image families, (B, C, S, S, S) for volume families."""
    shape = (batch, model.in_channels, *(size,) * model.spatial_dims)
    return torch.rand(shape, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_builtin_families_and_package_exports() -> None:
    assert {"kl", "vavae"} <= set(FAMILIES)
    assert aetune.list_families() == FAMILIES
    assert aetune.create_autoencoder is create_autoencoder


@pytest.mark.parametrize("name", FAMILIES)
def test_config_rebuilds_the_same_model(name: str) -> None:
    model = tiny(name)
    assert model.family == name
    config = model.config
    assert yaml.safe_load(yaml.safe_dump(config)) == config  # plain Python values
    rebuilt = create_autoencoder(model.family, **config)
    assert rebuilt.config == config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", FAMILIES)
def test_encode_decode_shapes_and_posterior(name: str) -> None:
    model = tiny(name).eval()
    x = images(model)
    f, c = model.downsample_factor, model.latent_channels
    with torch.no_grad():
        enc = model.encode(x)
        assert enc.latents.shape == (2, c, *(32 // f,) * model.spatial_dims)
        out = model.decode(enc.latents)
    assert out.sample.shape == x.shape
    post = enc.latent_dist
    if post is None:
        return
    assert isinstance(post, DiagonalGaussian)
    torch.testing.assert_close(post.mode(), post.mean)
    torch.testing.assert_close(post.std, torch.exp(0.5 * post.logvar))
    a = post.sample(generator=torch.Generator().manual_seed(3))
    b = post.sample(generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, post.sample(generator=torch.Generator().manual_seed(4)))
    kl = post.kl()
    assert kl.shape == (2,) and kl.dtype == torch.float32
    want = 0.5 * (post.mean**2 + post.logvar.exp() - 1 - post.logvar).sum(dim=tuple(range(1, post.mean.ndim)))
    torch.testing.assert_close(kl, want)


@pytest.mark.parametrize("name", FAMILIES)
def test_bad_image_sizes_name_the_sizes(name: str) -> None:
    model = tiny(name)
    f, c, rest = model.downsample_factor, model.in_channels, (32,) * (model.spatial_dims - 1)
    odd = 32 + f // 2
    sizes = "x".join(map(str, (odd, *rest)))
    with pytest.raises(ValueError, match=rf"image size {sizes} .* factor {f}"):
        model.encode(torch.zeros(1, c, odd, *rest))
    axes = ", ".join("DHW"[-model.spatial_dims :])
    wrong = (1, c % 3 + 1, 32, *rest)  # a channel count the family does not take
    with pytest.raises(ValueError, match=rf"expects images \(B, {c}, {axes}\), got \({', '.join(map(str, wrong))}\)"):
        model.encode(torch.zeros(wrong))
    with pytest.raises(ValueError, match="decodes latents"):
        model.decode(torch.zeros(1, model.latent_channels + 1, *(4,) * model.spatial_dims))


@pytest.mark.parametrize("name", FAMILIES)
def test_projection_exists_exactly_for_aligning_families(name: str) -> None:
    model = tiny(name)
    z = torch.zeros(1, model.latent_channels, 4, 4)
    if model.aligns:
        assert model.project(z).shape == (1, model.config["align_dim"], 4, 4)
    else:
        with pytest.raises(TypeError, match="no alignment projection"):
            model.project(z)


def test_vavae_is_kl_plus_a_bias_free_projection() -> None:
    kl, va = create_autoencoder("kl"), create_autoencoder("vavae")
    extra = set(va.state_dict()) - set(kl.state_dict())
    assert extra == {"linear_proj.weight"}
    assert va.linear_proj.weight.shape == (1024, 32, 1, 1) and va.linear_proj.bias is None
    assert kl.downsample_factor == 16 and kl.latent_channels == 32 and not kl.aligns and va.aligns
    assert va.gan_last_layer is va.decoder.conv_out.weight
    assert va.align_last_layer is va.encoder.conv_out.weight


def test_unknown_names_and_options_suggest_the_closest() -> None:
    with pytest.raises(ModelConfigError, match="unknown autoencoder family 'vave'; did you mean 'vavae'"):
        create_autoencoder("vave")
    with pytest.raises(ValueError, match="unknown option 'ch_mul' .*did you mean 'ch_mult'"):
        create_autoencoder("vavae", ch_mul=[1, 2])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"ch": 48}, "multiple of 32"),
        ({"ch": "128"}, "'ch' must be int"),
        ({"ch_mult": 4}, "'ch_mult' must be a list"),
        ({"ch_mult": [1, 2.5]}, r"'ch_mult\[1\]' must be int"),
        ({"embed_dim": 0}, "'embed_dim' must be positive"),
        ({"dropout": 1.0}, "dropout must be in"),
        ({"align_dim": -1}, "align_dim must be positive"),
    ],
)
def test_bad_option_values_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ModelConfigError, match=message):
        create_autoencoder("vavae", **overrides)


def test_yaml_lists_become_tuples() -> None:
    model = create_autoencoder("kl", ch=32, ch_mult=[1, 2], attn_resolutions=[])
    assert model._config.ch_mult == (1, 2) and model.config["ch_mult"] == [1, 2]
    assert model.downsample_factor == 2


def test_register_family_rejects_a_taken_name() -> None:
    class Other(KLAutoencoder):
        pass

    with pytest.raises(ValueError, match="'kl' is already registered"):
        register_family("kl", KLConfig, "dup")(Other)
    assert get_family("kl").model_cls is KLAutoencoder


def test_import_aetune_does_not_import_torch() -> None:
    code = "import sys, aetune; assert 'torch' not in sys.modules; print(aetune.__all__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "create_autoencoder" in out.stdout


@dataclasses.dataclass
class PlainConfig(FamilyConfig):
    width: int = 4  # latent channels


class Plain(Autoencoder):
    """A family without posterior, levels or checkpointing (like the tiny TAESD-style ones to come)."""

    def __init__(self, config: PlainConfig) -> None:
        super().__init__(config)
        self.enc = torch.nn.Conv2d(3, config.width, 2, stride=2)
        self.dec = torch.nn.ConvTranspose2d(config.width, 3, 2, stride=2)
        self.in_channels, self.latent_channels, self.downsample_factor = 3, config.width, 2

    def encode(self, x: torch.Tensor) -> EncoderOutput:
        self.check_images(x)
        return EncoderOutput(latent_dist=None, latents=self.enc(x))

    def decode(self, z: torch.Tensor) -> DecoderOutput:
        return DecoderOutput(sample=self.dec(z))

    @property
    def gan_last_layer(self) -> torch.nn.Parameter:
        return self.dec.weight


def test_a_family_without_posterior_fits_registry_and_objective(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))  # registration undone afterwards
    register_family("plain", PlainConfig, "test family", tiny={"width": 2})(Plain)
    model = create_autoencoder("plain", width=3)
    assert model.config == {"width": 3} and "plain" in list_families()
    assert model.freeze_encoder_levels(0) == [] and model.align_last_layer is None
    model.set_gradient_checkpointing(False)
    with pytest.raises(ValueError, match="no encoder levels"):
        model.freeze_encoder_levels(1)
    with pytest.raises(ValueError, match="does not support gradient checkpointing"):
        model.set_gradient_checkpointing(True)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    enc = model.encode(x)
    x_rec = model.decode(enc.latents).sample
    logits = NLayerDiscriminator(ndf=8, n_layers=1)(x_rec)
    out = generator_objective(
        x, x_rec, enc.latent_dist, weights=ObjectiveWeights(perceptual_weight=0.0), perceptual=None,
        logits_fake=logits, z_proj=None, teacher_feat=None, gan_last_layer=model.gan_last_layer,
        align_last_layer=model.align_last_layer, gan_active=True,
    )  # fmt: skip
    assert out["kl_loss"].item() == 0.0 and out["d_weight"] > 0
    out["total"].backward()
    assert model.enc.weight.grad is not None
