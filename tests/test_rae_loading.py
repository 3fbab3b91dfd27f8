"""RAE weights: the released decoder layout, released encoder files, diffusers' AutoencoderRAE, stat.pt."""

from __future__ import annotations

import math

import pytest
import torch

from aetune.families.rae.loading import (
    load_rae_weights,
    read_latent_stats,
    released_decoder_state_dict,
)
from aetune.families.rae.model import RAE
from aetune.models import CheckpointError, create_autoencoder, get_family

pytest.importorskip("transformers")


def tiny_rae(**overrides: object) -> RAE:
    torch.manual_seed(0)
    model = create_autoencoder("rae", **{**get_family("rae").tiny, **overrides})
    assert isinstance(model, RAE)
    return model


def released_decoder_keys(depth: int) -> list[str]:
    """The reference ``GeneralDecoder``'s state-dict keys, written from its source (bytetriper/RAE)."""
    keys = ["decoder_embed.weight", "decoder_embed.bias", "decoder_pos_embed", "decoder_norm.weight"]
    keys += ["decoder_norm.bias", "decoder_pred.weight", "decoder_pred.bias", "trainable_cls_token"]
    for i in range(depth):
        for part in ("attention.attention.query", "attention.attention.key", "attention.attention.value",
                     "attention.output.dense", "intermediate.dense", "output.dense", "layernorm_before",
                     "layernorm_after"):  # fmt: skip
            keys += [f"decoder_layers.{i}.{part}.weight", f"decoder_layers.{i}.{part}.bias"]
    return keys


def random_released_decoder(model: RAE, seed: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {k[len("decoder.") :]: v.shape for k, v in model.state_dict().items() if k.startswith("decoder.")}
    state = {k: torch.randn(shapes[k], generator=g) for k in released_decoder_keys(model.config["decoder_depth"])}
    state["decoder_pos_embed"] = model.decoder.decoder_pos_embed.clone()  # fixed sin-cos in the file too
    return state


def test_released_decoder_layout_loads_with_zero_missing_keys(tmp_path) -> None:
    model = tiny_rae()
    state = random_released_decoder(model)
    assert set(state) == set(released_decoder_state_dict(model))  # our layout is the released one
    path = tmp_path / "model.pt"
    torch.save(state, path)
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    report = load_rae_weights(model, path)
    assert report.missing == [] and report.unexpected == []
    assert report.loaded == len(state) - 1  # the position table is checked, not loaded
    assert "decoder layout" in report.summary() and "sin-cos" in report.summary()
    torch.testing.assert_close(model.decoder.decoder_pred.weight, state["decoder_pred.weight"])
    q = "decoder_layers.1.attention.attention.query.weight"
    torch.testing.assert_close(model.decoder.state_dict()[q], state[q])
    for k, v in model.encoder.state_dict().items():  # a decoder file leaves the encoder alone
        torch.testing.assert_close(v, encoder_before[k])
    again = released_decoder_state_dict(model)
    torch.testing.assert_close(again["decoder_embed.bias"], state["decoder_embed.bias"])


def test_released_decoder_strictness() -> None:
    model = tiny_rae()
    state = random_released_decoder(model)
    short = {k: v for k, v in state.items() if k != "decoder_norm.bias"}
    with pytest.raises(CheckpointError, match="missing decoder.decoder_norm.bias; unexpected none"):
        load_rae_weights(model, short)
    with pytest.raises(CheckpointError, match="unexpected decoder_extra"):
        load_rae_weights(model, {**state, "decoder_extra": torch.zeros(1)})
    report = load_rae_weights(model, short, allow_partial=True)
    assert report.missing == ["decoder.decoder_norm.bias"]
    wide = tiny_rae(decoder_width=128)
    with pytest.raises(
        CheckpointError, match=r"decoder_width=128.*decoder_embed.weight is \[64, 64\] there and \[128, 64\] here"
    ):
        load_rae_weights(wide, {k: v for k, v in state.items() if k != "decoder_pos_embed"})
    bad_pos = {**state, "decoder_pos_embed": state["decoder_pos_embed"] + 0.1}
    with pytest.raises(CheckpointError, match="not the fixed 2-D sin-cos table"):
        load_rae_weights(model, bad_pos)
    with pytest.raises(CheckpointError, match="not an RAE file"):
        load_rae_weights(model, {"conv.weight": torch.zeros(1)})


def released_encoder_file(name: str, width: int, depth: int, seed: int = 3) -> dict[str, torch.Tensor]:
    """A random state dict with the key names and shapes of the released encoder files (saved with
    transformers 4: ``attention.attention.query`` etc.), including the parts RAE does not use."""
    g = torch.Generator().manual_seed(seed)
    w, m = width, 4 * width

    def lin(prefix: str, d_out: int, d_in: int) -> dict[str, tuple[int, ...]]:
        return {f"{prefix}.weight": (d_out, d_in), f"{prefix}.bias": (d_out,)}

    def norm(prefix: str) -> dict[str, tuple[int, ...]]:
        return {f"{prefix}.weight": (w,), f"{prefix}.bias": (w,)}

    shapes: dict[str, tuple[int, ...]] = {}
    if name == "dinov2-reg-b":
        shapes |= {"embeddings.cls_token": (1, 1, w), "embeddings.mask_token": (1, w),
                   "embeddings.register_tokens": (1, 4, w), "embeddings.position_embeddings": (1, 1 + 37 * 37, w),
                   "embeddings.patch_embeddings.projection.weight": (w, 3, 14, 14),
                   "embeddings.patch_embeddings.projection.bias": (w,), **norm("layernorm")}  # fmt: skip
        for i in range(depth):
            p = f"encoder.layer.{i}"
            for n in ("query", "key", "value"):
                shapes |= lin(f"{p}.attention.attention.{n}", w, w)
            shapes |= lin(f"{p}.attention.output.dense", w, w) | lin(f"{p}.mlp.fc1", m, w) | lin(f"{p}.mlp.fc2", w, m)
            shapes |= norm(f"{p}.norm1") | norm(f"{p}.norm2")
            shapes |= {f"{p}.layer_scale1.lambda1": (w,), f"{p}.layer_scale2.lambda1": (w,)}
    elif name == "mae-b16":
        shapes |= {"vit.embeddings.cls_token": (1, 1, w), "vit.embeddings.position_embeddings": (1, 197, w),
                   "vit.embeddings.patch_embeddings.projection.weight": (w, 3, 16, 16),
                   "vit.embeddings.patch_embeddings.projection.bias": (w,), **norm("vit.layernorm"),
                   "decoder.mask_token": (1, 1, 8), **lin("decoder.decoder_layers.0.output.dense", 8, 8)}  # fmt: skip
        for i in range(depth):
            p = f"vit.encoder.layer.{i}"
            for n in ("query", "key", "value"):
                shapes |= lin(f"{p}.attention.attention.{n}", w, w)
            shapes |= lin(f"{p}.attention.output.dense", w, w)
            shapes |= lin(f"{p}.intermediate.dense", m, w) | lin(f"{p}.output.dense", w, m)
            shapes |= norm(f"{p}.layernorm_before") | norm(f"{p}.layernorm_after")
    else:
        shapes |= {"vision_model.embeddings.patch_embedding.weight": (w, 3, 16, 16),
                   "vision_model.embeddings.patch_embedding.bias": (w,),
                   "vision_model.embeddings.position_embedding.weight": (256, w), **norm("vision_model.post_layernorm"),
                   "vision_model.head.probe": (1, 1, w), "text_model.embeddings.token_embedding.weight": (8, w),
                   "logit_scale": (1,), "logit_bias": (1,)}  # fmt: skip
        for i in range(depth):
            p = f"vision_model.encoder.layers.{i}"
            for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
                shapes |= lin(f"{p}.self_attn.{n}", w, w)
            shapes |= lin(f"{p}.mlp.fc1", m, w) | lin(f"{p}.mlp.fc2", w, m)
            shapes |= norm(f"{p}.layer_norm1") | norm(f"{p}.layer_norm2")
    return {k: torch.randn(v, generator=g) for k, v in shapes.items()}


@pytest.mark.parametrize(
    ("name", "size", "unused"),
    [("dinov2-reg-b", 56, 2), ("siglip2-b16-256", 64, 6), ("mae-b16", 64, 5)],
)
def test_released_encoder_files_load_and_skip_what_rae_does_not_use(name: str, size: int, unused: int) -> None:
    model = tiny_rae(encoder=name, encoder_input_size=size)
    state = released_encoder_file(name, 64, 2)
    report = load_rae_weights(model, state)
    assert report.missing == [] and report.unexpected == []
    assert len(report.skipped) == unused and report.loaded == len(state) - unused
    assert report.loaded == len(model.encoder.model.state_dict())
    assert "final LayerNorm affine (RAE removes it)" in report.summary()
    ours = list(model.encoder.model.state_dict().values())
    for key in set(state) - set(report.skipped):  # every used tensor landed somewhere (names vary by version)
        assert any(v.shape == state[key].shape and torch.equal(v, state[key]) for v in ours), key
    assert not any(p.requires_grad for p in model.encoder.parameters())  # loading does not unfreeze
    with pytest.raises(CheckpointError, match=r"is \[\d+.*\] in the file and \[\d+.*\] in rae\(.*the file's encoder"):
        load_rae_weights(model, released_encoder_file(name, 32, 2))
    first = next(k for k in state if "layer" in k and k not in report.skipped)
    with pytest.raises(CheckpointError, match="missing"):
        load_rae_weights(model, {k: v for k, v in state.items() if k != first})


WIDTH = {"dinov2": 64, "siglip2": 64, "mae": 768}
"""Encoder widths for the diffusers comparison: its MAE keeps ViTMAEConfig's MLP of 3072 = 4 x 768 at any width."""


def diffusers_rae(kind: str, **kw: object):
    diffusers = pytest.importorskip("diffusers")
    inputs = {"dinov2": (14, 224), "siglip2": (16, 256), "mae": (16, 256)}[kind]
    norm = {"encoder_norm_mean": [0.5] * 3, "encoder_norm_std": [0.5] * 3} if kind == "siglip2" else {}
    torch.manual_seed(0)
    ref = diffusers.AutoencoderRAE(
        encoder_type=kind, encoder_hidden_size=WIDTH[kind], encoder_patch_size=inputs[0], encoder_num_hidden_layers=2,
        decoder_hidden_size=64, decoder_num_hidden_layers=2, decoder_num_attention_heads=2,
        decoder_intermediate_size=128, patch_size=2, encoder_input_size=inputs[1], **norm, **kw,
    )  # fmt: skip
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for k, v in ref.state_dict().items():
            if k.startswith(("encoder.", "decoder.")) and v.is_floating_point():
                v.copy_(torch.randn(v.shape, generator=g) * 0.1)
    return ref.eval()


def ours_like(kind: str, **kw: object) -> RAE:
    name = {"dinov2": "dinov2-reg-b", "siglip2": "siglip2-b16-256", "mae": "mae-b16"}[kind]
    # diffusers builds its encoders with 64-wide heads
    w = WIDTH[kind]
    return tiny_rae(
        encoder=name, encoder_input_size=0, encoder_width=w, encoder_heads=w // 64, patch_size=2, **kw
    ).eval()


@pytest.mark.parametrize("kind", ["dinov2", "mae"])  # siglip2: diffusers 0.42 cannot build it on transformers 5
def test_diffusers_file_loads_and_matches_autoencoder_rae(kind: str, tmp_path) -> None:
    from safetensors.torch import save_file

    ref = diffusers_rae(kind)
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)
    model = ours_like(kind)
    report = load_rae_weights(model, path)
    assert report.missing == [] and report.unexpected == []
    assert "encoder normalisation, checked equal to ours" in report.summary()
    x01 = torch.randint(0, 256, (2, 3, 32, 32), generator=torch.Generator().manual_seed(1)).float() / 255
    with torch.no_grad():
        # diffusers' tokens before its latent scaling (it divides by std + 1e-5 even with its identity stats)
        tokens = ref._resize_and_normalize(x01)
        args = (ref.encoder, tokens, 16) if kind == "mae" else (ref.encoder, tokens)
        theirs = ref._encoder_forward_fn(*args)  # (B, N, C)
        ours = model.encode_tokens(x01 * 2 - 1).flatten(2).transpose(1, 2)
        assert ((ours - theirs).abs().max() / theirs.abs().max()).item() <= 1e-5
        z = ref.encode(x01).latent
        want = ref.decode(z).sample  # [0, 1]
        got = (model.decode(z * (1 + 1e-5)).sample + 1) / 2  # undo diffusers' 1e-5 scaling of z
        assert ((got - want).abs().max() / want.abs().max()).item() <= 1e-5


def test_diffusers_siglip2_layout_with_the_vision_model_level() -> None:
    """diffusers files saved with transformers 4 hold ``encoder.vision_model.*`` for SigLIP2 (written by hand:
    the installed diffusers cannot build its SigLIP2 encoder on transformers 5)."""
    source = ours_like("siglip2")
    renames = {
        ".attention.attention.query.": ".attention.to_q.",
        ".attention.attention.key.": ".attention.to_k.",
        ".attention.attention.value.": ".attention.to_v.",
        ".attention.output.dense.": ".attention.to_out.0.",
    }
    g = torch.Generator().manual_seed(6)
    state = {}
    for k, v in source.state_dict().items():
        if k.startswith("encoder.model."):
            state["encoder.vision_model." + k[len("encoder.model.") :]] = torch.randn(v.shape, generator=g)
        elif k.startswith("decoder.") and k != "decoder.decoder_pos_embed":
            for ours, theirs in renames.items():
                k = k.replace(ours, theirs)
            state[k] = torch.randn(v.shape, generator=g)
    state["encoder_mean"], state["encoder_std"] = torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.5)
    model = ours_like("siglip2")
    report = load_rae_weights(model, state)
    assert report.missing == [] and report.unexpected == []
    key = "encoder.model.embeddings.patch_embedding.weight"
    torch.testing.assert_close(model.state_dict()[key], state["encoder.vision_model.embeddings.patch_embedding.weight"])
    torch.testing.assert_close(
        model.state_dict()["decoder.decoder_layers.1.attention.output.dense.weight"],
        state["decoder.decoder_layers.1.attention.to_out.0.weight"],
    )
    with pytest.raises(CheckpointError, match="encoder_mean .* differs"):  # ImageNet numbers for a SigLIP2 model
        load_rae_weights(model, {**state, "encoder_mean": torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)})


def test_diffusers_latent_statistics_are_converted() -> None:
    g = torch.Generator().manual_seed(5)
    mean, std = torch.randn(64, 16, 16, generator=g), torch.rand(64, 16, 16, generator=g) + 0.5
    ref = diffusers_rae("dinov2", latents_mean=mean, latents_std=std)
    state = ref.state_dict()
    with pytest.raises(CheckpointError, match="normalize_latents=True"):
        load_rae_weights(ours_like("dinov2"), state)
    model = ours_like("dinov2", normalize_latents=True)
    report = load_rae_weights(model, state)
    assert "converted to latent_mean / latent_var" in report.summary()
    x01 = torch.randint(0, 256, (2, 3, 32, 32), generator=g).float() / 255
    with torch.no_grad():
        want = ref.encode(x01).latent
        got = model.encode(x01 * 2 - 1).latents
    assert ((got - want).abs().max() / want.abs().max()).item() <= 1e-5
    odd = {**state, "encoder_mean": torch.zeros(1, 3, 1, 1)}
    with pytest.raises(CheckpointError, match="encoder_mean .* differs"):
        load_rae_weights(model, odd)


def test_stat_pt_with_and_without_mean(tmp_path) -> None:
    model = tiny_rae(normalize_latents=True).eval()
    var = torch.full((1, 64, 4, 4), 9.0)
    path = tmp_path / "stat.pt"
    torch.save({"mean": None, "var": var}, path)  # the released DINOv2-B stat.pt has no mean
    mean, got = read_latent_stats(path)
    assert mean is None
    model.set_latent_stats(mean, got)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(model.encode(x).latents, model.encode_tokens(x) / math.sqrt(9 + 1e-5))
    torch.save({"mean": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="no 'var' tensor"):
        read_latent_stats(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_latent_stats(tmp_path / "nope.pt")
