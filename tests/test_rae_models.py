"""RAE model side: encoders against transformers, decoder against diffusers, noise, normalisation, discriminator."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from aetune.errors import AetuneError
from aetune.families.rae.decoder import DECODER_SIZES, RAEDecoder, sincos_pos_embed
from aetune.families.rae.discriminator import (
    DinoFeatures,
    DinoHeads,
    LocalBatchNorm,
    colour,
    diff_augment,
    sn_conv1d,
    translate,
)
from aetune.families.rae.encoders import ENCODERS, FrozenEncoder
from aetune.families.rae.loading import map_key
from aetune.families.rae.model import RAE, RAEConfig, apply_token_noise, sample_token_noise
from aetune.models import ModelConfigError, create_autoencoder, get_family

transformers = pytest.importorskip("transformers")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max absolute difference relative to the reference's largest magnitude."""
    return ((a - b).abs().max() / b.abs().max()).item()


def tiny_rae(**overrides: object) -> RAE:
    torch.manual_seed(0)
    model = create_autoencoder("rae", **{**get_family("rae").tiny, **overrides})
    assert isinstance(model, RAE)
    return model


def pixels01(size: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    """uint8-valued images in [0, 1], so that [-1, 1] and back is exact."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), generator=g).float() / 255


def _reference_tokens(name: str, encoder: FrozenEncoder, x01: torch.Tensor) -> torch.Tensor:
    """The reference's RAE encoders written independently: a transformers model with our weights, its last
    hidden state before the final LayerNorm, a LayerNorm without affine, prefix tokens dropped."""
    spec, tf = ENCODERS[name], transformers
    cfg, model = encoder.model.config, None
    if spec.kind == "dinov2":
        model = tf.Dinov2WithRegistersModel(cfg)
    elif spec.kind == "siglip2":
        model = tf.SiglipVisionModel(cfg)
        model = getattr(model, "vision_model", model)
    else:
        model = tf.ViTMAEModel(cfg)
    missing, unexpected = model.load_state_dict(encoder.model.state_dict(), strict=False)
    assert unexpected == [] and set(missing) <= {"layernorm.weight", "layernorm.bias", "post_layernorm.weight",
                                                   "post_layernorm.bias"}  # fmt: skip
    model.eval()
    size = encoder.input_size
    x = F.interpolate(x01, size=(size, size), mode="bicubic", align_corners=False)
    x = (x - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    kwargs: dict = {"output_hidden_states": True}
    if spec.kind != "dinov2":
        kwargs["interpolate_pos_encoding"] = True
    if spec.kind == "mae":
        n = encoder.grid**2
        kwargs["noise"] = torch.arange(n).float().expand(x.shape[0], n)
    with torch.no_grad():
        hidden = model(pixel_values=x, **kwargs).hidden_states[-1]
    return F.layer_norm(hidden, (hidden.shape[-1],), eps=cfg.layer_norm_eps)[:, spec.prefix_tokens :]


@pytest.mark.parametrize(("name", "size"), [("dinov2-reg-b", 56), ("siglip2-b16-256", 64), ("mae-b16", 64)])
def test_encoder_matches_transformers_with_a_non_affine_final_norm(name: str, size: int) -> None:
    model = tiny_rae(encoder=name, encoder_input_size=size, patch_size=8)
    x01 = pixels01(model.image_size)
    ours = model.encode_tokens(x01 * 2 - 1)  # (B, C, g, g)
    ref = _reference_tokens(name, model.encoder, x01)  # (B, g*g, C)
    g = model.encoder.grid
    assert ours.shape == (2, 64, g, g)
    assert rel_err(ours.flatten(2).transpose(1, 2), ref) <= 1e-5
    assert not any(p.requires_grad for p in model.encoder.parameters())


def _diffusers_decoder(ours: RAEDecoder, latent_dim: int, width: int, depth: int, heads: int, mlp: int, patch: int):
    from diffusers.models.autoencoders.autoencoder_rae import RAEDecoder as DiffusersDecoder

    ref = DiffusersDecoder(
        hidden_size=latent_dim, decoder_hidden_size=width, decoder_num_hidden_layers=depth,
        decoder_num_attention_heads=heads, decoder_intermediate_size=mlp, num_patches=ours.grid**2, patch_size=patch,
        image_size=ours.grid * patch,
    )  # fmt: skip
    ours_from_theirs = {}
    for key in ref.state_dict():
        target, _ = map_key("decoder." + key, "diffusers", ENCODERS["dinov2-reg-b"])  # the one key mapping
        ours_from_theirs[target.removeprefix("decoder.")] = key
    with torch.no_grad():
        for k, p in ours.state_dict().items():
            if k in ours_from_theirs:
                p.normal_(0, 0.2)
                ref.state_dict()[ours_from_theirs[k]].copy_(p)
    return ref.eval()


@pytest.mark.parametrize("tokens", [256, 64])  # the decoder's own grid, and one it resizes (bilinear)
def test_decoder_matches_diffusers_rae_decoder(tokens: int) -> None:
    pytest.importorskip("diffusers")
    torch.manual_seed(0)
    dims = (96, 2, 4, 128)
    ours = RAEDecoder(64, *dims, grid=16, patch=2).eval()  # diffusers' table is MAE's only at grid 16
    ref = _diffusers_decoder(ours, 64, *dims, patch=2)
    torch.testing.assert_close(ours.decoder_pos_embed, ref.decoder_pos_embed, rtol=0, atol=1e-6)
    z = torch.randn(2, tokens, 64)
    with torch.no_grad():
        assert rel_err(ours(z), ref.unpatchify(ref(z).logits)) <= 1e-5


def test_sincos_table_hand_numbers() -> None:
    s, c = math.sin(1.0), math.cos(1.0)
    # dim 4: [sin col, cos col, sin row, cos row] per token, row-major; the cls row is zeros
    want = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 1], [s, c, 0, 1], [0, 1, s, c], [s, c, s, c]])
    torch.testing.assert_close(sincos_pos_embed(4, 2), want.float())
    assert sincos_pos_embed(8, 3).shape == (10, 8)
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_pos_embed(6, 2)


def test_released_sizes_and_key_layout() -> None:
    assert DECODER_SIZES == {"B": (768, 12, 12, 3072), "L": (1024, 24, 16, 4096), "XL": (1152, 28, 16, 4096)}
    cfg = RAEConfig()
    assert (cfg.encoder, cfg.decoder_size, cfg.patch_size, cfg.noise_tau) == ("dinov2-reg-b", "XL", 16, 0.8)
    with torch.device("meta"):  # shapes only: the full XL decoder without allocating 1.7 GB
        dec = RAEDecoder(768, *DECODER_SIZES["XL"], grid=16, patch=16)
    state = dec.state_dict()
    assert len(state) == 8 + 28 * 16  # embed 2, pos 1, norm 2, pred 2, cls 1 + 16 per block: model.pt has 456
    assert state["decoder_pos_embed"].shape == (1, 257, 1152)
    assert state["decoder_pred.weight"].shape == (768, 1152)
    assert state["decoder_layers.27.attention.attention.query.weight"].shape == (1152, 1152)
    assert state["decoder_layers.0.intermediate.dense.weight"].shape == (4096, 1152)


def test_noise_formula_hand_numbers() -> None:
    z = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    u = torch.tensor([0.5, 0.25])  # one level per sample
    n = torch.tensor([[1.0, -1.0], [2.0, 0.0]])
    torch.testing.assert_close(apply_token_noise(z, 0.8, u, n), torch.tensor([[1.4, 1.6], [3.4, 4.0]]))
    # sampled: u ~ U(0, 1) per sample first, then n ~ N(0, I), from the generator
    z4 = torch.zeros(3, 2, 4, 4)
    g = torch.Generator().manual_seed(5)
    u, n = torch.rand(3, generator=g), torch.randn(z4.shape, generator=g)
    got = sample_token_noise(z4, 0.8, torch.Generator().manual_seed(5))
    torch.testing.assert_close(got, 0.8 * u.view(3, 1, 1, 1) * n)
    torch.testing.assert_close(sample_token_noise(z4 + 1, 0.0), z4 + 1)


def test_encode_decode_interface_and_pixel_ranges() -> None:
    model = tiny_rae().eval()
    x01 = pixels01(32)
    enc = model.encode(x01 * 2 - 1)
    assert enc.latent_dist is None and enc.latents.shape == (2, 64, 4, 4)
    # the encoder sees [0, 1] pixels: our [-1, 1] input is converted inside
    torch.testing.assert_close(enc.latents.flatten(2).transpose(1, 2), model.encoder(x01))
    with torch.no_grad():
        model.decoder.decoder_pred.weight.zero_()
        model.decoder.decoder_pred.bias.zero_()
    out = model.decode(enc.latents).sample  # zero in the encoder's normalised space -> its mean in [0, 1]
    want = 2 * torch.tensor([0.485, 0.456, 0.406]) - 1
    torch.testing.assert_close(out, want.view(1, 3, 1, 1).expand(2, 3, 32, 32))
    assert model.gan_last_layer is model.decoder.decoder_pred.weight
    assert model.align_last_layer is None and not model.aligns


def test_only_the_decoder_trains() -> None:
    model = tiny_rae()
    model.train()
    assert not model.encoder.model.training and model.decoder.training
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"decoder." + n for n, _ in model.decoder.named_parameters()}
    assert "decoder.decoder_pos_embed" not in trainable  # a fixed buffer
    x = pixels01(32) * 2 - 1
    model.set_gradient_checkpointing(True)
    loss = (model.decode(model.add_noise(model.encode_tokens(x))).sample - x).abs().mean()
    loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.gan_last_layer.grad is not None and model.decoder.trainable_cls_token.grad is not None


def test_latent_normalisation_per_chw_in_the_model() -> None:
    model = tiny_rae(normalize_latents=True).eval()
    x = pixels01(32) * 2 - 1
    raw = model.encode_tokens(x)
    g = torch.Generator().manual_seed(2)
    mean, var = torch.randn(64, 4, 4, generator=g), torch.rand(1, 64, 4, 4, generator=g) + 0.5
    model.set_latent_stats(mean, var)
    z = model.encode(x).latents
    torch.testing.assert_close(z, (raw - mean) / torch.sqrt(var[0] + 1e-5))
    torch.testing.assert_close(model.decode(z).sample, model.decode_tokens(raw), rtol=1e-5, atol=1e-5)
    state = model.state_dict()  # exported with the model
    torch.testing.assert_close(state["latent_var"], var[0])
    model.set_latent_stats(None, torch.full((64, 1, 1), 4.0))  # no mean (released DINOv2-B stat.pt); per channel
    torch.testing.assert_close(model.encode(x).latents, raw / math.sqrt(4 + 1e-5))
    with pytest.raises(ValueError, match="broadcast to"):
        model.set_latent_stats(None, torch.ones(63))
    with pytest.raises(ValueError, match="not a log-variance"):
        model.set_latent_stats(None, -torch.ones(64, 4, 4))
    plain = tiny_rae()
    plain.set_latent_stats(mean, var)
    torch.testing.assert_close(plain.encode(x).latents, raw)  # normalize_latents=False: identity


def test_bad_options_and_sizes_are_refused() -> None:
    with pytest.raises(ModelConfigError, match="unknown RAE encoder 'dinov3'; valid: dinov2-reg-b"):
        create_autoencoder("rae", encoder="dinov3")
    with pytest.raises(ModelConfigError, match="decoder_size 'XXL'"):
        create_autoencoder("rae", decoder_size="XXL")
    with pytest.raises(ModelConfigError, match="not a multiple of the encoder's 14 px"):
        create_autoencoder("rae", encoder_input_size=100)
    model = tiny_rae()
    with pytest.raises(ValueError, match=r"image size 64x64 is not the 32x32"):
        model.encode(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="decodes latents"):
        model.decode(torch.zeros(1, 64, 4, 3))


# --- discriminator -------------------------------------------------------------------------------------------


def tiny_disc(**kw: object) -> tuple[DinoFeatures, DinoHeads]:
    torch.manual_seed(0)
    features = DinoFeatures(pretrained=False, img_size=32, depth=6, width=32, heads=2, **kw)
    return features, DinoHeads(features.embed_dim, 1 + len(features.key_blocks))


def test_discriminator_heads_features_and_freezing() -> None:
    features, heads = tiny_disc()
    assert features.key_blocks == (2, 5) and len(heads.heads) == 3  # final output + blocks 2, 5
    x = (pixels01(48) * 2 - 1).requires_grad_(True)  # resized to 32 px (bilinear)
    feats = features(x)
    assert [f.shape for f in feats] == [(2, 32, 16)] * 3
    torch.testing.assert_close(feats[0], feats[2])  # the reference's quirk: the last block twice
    logits = heads(feats)
    assert logits.shape == (2, 3 * 16)
    logits.mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # the generator's GAN term reaches the images
    assert all(p.grad is None for p in features.parameters()) and not any(
        p.requires_grad for p in features.parameters()
    )
    assert all(p.requires_grad for p in heads.parameters())
    features.train()
    assert not features.vit.training
    assert isinstance(features.vit.blocks[0].mlp.act, torch.nn.GELU)
    assert "Tanh" in type(tiny_disc(tanh_gelu=True)[0].vit.blocks[0].mlp.act).__name__
    assert sorted(heads.state_dict())[:3] == ["heads.0.0.0.bias", "heads.0.0.0.weight_orig", "heads.0.0.0.weight_u"]


def test_discriminator_weights_are_never_random_by_accident(tmp_path) -> None:
    with pytest.raises(AetuneError, match=r"does not exist"):
        DinoFeatures(weights_path=str(tmp_path / "missing.safetensors"))
    with pytest.raises(AetuneError, match="pretrained=False only"):
        DinoFeatures(pretrained=True, depth=3)


def test_local_batchnorm_hand_numbers() -> None:
    bn = LocalBatchNorm(1)
    x = torch.tensor([[[1.0, 2.0, 3.0]], [[10.0, 10.0, 13.0]]])  # (B=2, C=1, L=3): stats per sample
    out = bn(x)
    torch.testing.assert_close(out[0, 0], (torch.tensor([1.0, 2.0, 3.0]) - 2) / math.sqrt(2 / 3 + 1e-6))
    torch.testing.assert_close(out[1, 0], (torch.tensor([10.0, 10.0, 13.0]) - 11) / math.sqrt(2 + 1e-6))


def test_spectral_norm_keeps_head_convs_near_unit_gain() -> None:
    torch.manual_seed(0)
    conv = sn_conv1d(16, 16, 9).train()
    x = torch.randn(1, 16, 20)
    for _ in range(50):  # one power iteration per training forward
        conv(x)
    sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2).item()
    assert abs(sigma - 1) < 0.02
    assert torch.linalg.matrix_norm(conv.weight_orig.detach().flatten(1), ord=2).item() != pytest.approx(1, abs=0.1)


def test_translation_and_colour_hand_numbers() -> None:
    x = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
    down = translate(x, torch.tensor([1]), torch.tensor([0]))
    torch.testing.assert_close(down[0, 0], torch.tensor([[4.0, 5, 6], [7, 8, 9], [0, 0, 0]]))
    right = translate(x, torch.tensor([0]), torch.tensor([-1]))
    torch.testing.assert_close(right[0, 0], torch.tensor([[0.0, 1, 2], [0, 4, 5], [0, 7, 8]]))
    px = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    one = torch.ones(1)
    # +0.1 -> [.2 .3 .4]; saturation 2 about the pixel mean .3 -> [.1 .3 .5]; contrast .5 about .3 -> [.2 .3 .4]
    out = colour(px, 0.1 * one, 2 * one, 0.5 * one)
    torch.testing.assert_close(out.flatten(), torch.tensor([0.2, 0.3, 0.4]))


def test_diff_augment_is_seeded_bounded_and_differentiable() -> None:
    x = (pixels01(32, batch=4) * 2 - 1).requires_grad_(True)
    assert diff_augment(x, prob=0.0) is x
    a = diff_augment(x, generator=torch.Generator().manual_seed(3))
    b = diff_augment(x, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    a.sum().backward()
    assert x.grad is not None
    # translation only moves content by at most round(32 / 8) = 4 px: a constant centre stays constant
    flat = torch.ones(4, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        t = translate(flat, *(torch.randint(-4, 5, (4,), generator=g) for _ in range(2)))
        assert bool((t[..., 4:28, 4:28] == 1).all())


def test_per_position_statistics_describe_raw_tokens() -> None:
    model = tiny_rae(normalize_latents=True).eval()
    model.set_latent_stats(torch.full((64, 4, 4), 1.0), torch.full((64, 4, 4), 3.0))
    raw = torch.stack([torch.zeros(64, 4, 4), torch.full((64, 4, 4), 2.0), torch.full((64, 4, 4), 4.0)])
    stats = model.per_position_stats(model.normalize(raw).flatten(1).numpy())  # as step 5 holds them
    torch.testing.assert_close(stats["mean"], torch.full((64, 4, 4), 2.0))
    torch.testing.assert_close(stats["var"], torch.full((64, 4, 4), 8 / 3))  # population variance of 0, 2, 4
