"""``taehv``: frame counts, streaming == parallel, causality, the released key layout, options."""

from __future__ import annotations

import pytest
import torch

from aetune.families.tiny.loading import load_tiny_weights
from aetune.families.tiny.taehv import TAEHV, MemBlock
from aetune.models import CheckpointError, ModelConfigError, create_autoencoder, get_family


def tiny(**overrides: object) -> TAEHV:
    torch.manual_seed(0)
    model = create_autoencoder("taehv", **{**get_family("taehv").tiny, **overrides}).eval()
    assert isinstance(model, TAEHV)
    return model


def video(t: int, size: int = 32, batch: int = 2, seed: int = 3) -> torch.Tensor:
    return torch.rand(batch, t, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def model() -> TAEHV:
    """The tiny model with its residual branches switched on, as after training.

    ``init_from_scratch`` zeroes the last conv of every MemBlock, which would hide the past-frame path
    that the causality test follows.
    """
    m = tiny()
    g = torch.Generator().manual_seed(1)
    for block in m.modules():
        if isinstance(block, MemBlock):
            end = block.conv[-1].weight
            end.data.copy_(torch.randn(end.shape, generator=g) * 0.1)
    return m


@pytest.mark.parametrize("t", range(1, 13))
def test_frame_counts_and_streaming_equals_parallel(model: TAEHV, t: int) -> None:
    n = -(-t // 4)
    x = video(t, size=16)
    with torch.no_grad():
        z = model.encode(x).latents
        assert z.shape == (2, n, 4, 2, 2) and model.latent_frames(t) == n
        torch.testing.assert_close(model.encode(x, parallel=False).latents, z, atol=1e-6, rtol=0)
        y = model.decode(z).sample
        assert y.shape == (2, 4 * n - 3, 3, 16, 16) and model.output_frames(t) == 4 * n - 3
        torch.testing.assert_close(model.decode(z, parallel=False).sample, y, atol=1e-6, rtol=0)
        stream = model.stream_decoder()
        pushed = [stream.push(z[:, k]) for k in range(n)]
    assert [len(p) for p in pushed] == [1] + [4] * (n - 1)  # the first latent's 3 leading frames are trimmed
    torch.testing.assert_close(torch.stack([f for p in pushed for f in p], 1), y, atol=1e-6, rtol=0)


def test_memory_makes_it_causal_in_time(model: TAEHV) -> None:
    x = video(12)
    later = x.clone()
    later[:, 8:] = -later[:, 8:]  # change frames 8.. (the third latent's group)
    earlier = x.clone()
    earlier[:, 0] = -earlier[:, 0]
    with torch.no_grad():
        z, z_later, z_earlier = (model.encode(v).latents for v in (x, later, earlier))
        torch.testing.assert_close(z_later[:, :2], z[:, :2])  # the past does not see the future
        assert (z_earlier[:, 1] - z[:, 1]).abs().max() > 1e-5  # frame 0 reaches latent 1 through the MemBlocks
        y, y2 = model.decode(z).sample, model.decode(torch.cat([z[:, :2], -z[:, 2:]], 1)).sample
    torch.testing.assert_close(y2[:, :5], y[:, :5])  # frames 0..4 come from latents 0 and 1 only
    assert (y2[:, 5:] - y[:, 5:]).abs().max() > 1e-4


def test_images_are_one_frame_videos(model: TAEHV) -> None:
    x = video(1)
    with torch.no_grad():
        z = model.encode(x[:, 0]).latents
        torch.testing.assert_close(z, model.encode(x).latents[:, 0])
        torch.testing.assert_close(model(x[:, 0]), model.decode(z.unsqueeze(1)).sample[:, 0])
    assert model(x[:, 0]).shape == (2, 3, 32, 32)


def test_patch_size_two_is_f16(tmp_path: object) -> None:
    model = tiny(patch_size=2, latent_channels=8)
    assert model.downsample_factor == 16 and model.encoder[0].in_channels == 12
    x = video(5, size=32)
    with torch.no_grad():
        z = model.encode(x).latents
        assert z.shape == (2, 2, 8, 2, 2)
        y = model.decode(z).sample
        assert y.shape == x.shape
        torch.testing.assert_close(model.decode(z, parallel=False).sample, y, atol=1e-6, rtol=0)


def test_released_layout_keys_and_shapes_load_strictly() -> None:
    # Indices of the published taehv.pth (HunyuanVideo: 16 latent channels, time pooled in stages 1 and 2,
    # grown in decoder stages 2 and 3); widths 64 / (256, 128, 64, 64).
    model = create_autoencoder("taehv")
    state = model.state_dict()
    expect = {
        "encoder.0.weight": (64, 3, 3, 3),
        "encoder.2.conv.weight": (64, 128, 1, 1),  # TPool stride 2
        "encoder.7.conv.weight": (64, 128, 1, 1),
        "encoder.12.conv.weight": (64, 64, 1, 1),  # TPool stride 1
        "encoder.4.conv.0.weight": (64, 128, 3, 3),  # MemBlock: frame and past concatenated
        "encoder.17.weight": (16, 64, 3, 3),
        "decoder.1.weight": (256, 16, 3, 3),
        "decoder.7.conv.weight": (256, 256, 1, 1),  # TGrow stride 1
        "decoder.13.conv.weight": (256, 128, 1, 1),  # TGrow stride 2
        "decoder.19.conv.weight": (128, 64, 1, 1),
        "decoder.22.weight": (3, 64, 3, 3),
    }
    assert {k: tuple(state[k].shape) for k in expect} == expect
    assert not any(".skip." in k for k in state)  # equal widths everywhere: identity skips, as released
    assert 11_000_000 < sum(v.numel() for v in state.values()) < 11_600_000
    g = torch.Generator().manual_seed(0)
    released = {k: torch.randn(v.shape, generator=g) for k, v in state.items()}
    other = create_autoencoder("taehv")
    report = load_tiny_weights(other, released)
    assert (report.missing, report.unexpected, report.loaded) == ([], [], len(state))
    torch.testing.assert_close(other.decoder[13].conv.weight, released["decoder.13.conv.weight"])
    with pytest.raises(CheckpointError, match=r"encoder.17.weight is \[16, 64, 3, 3\] there and \[32, 64, 3, 3\]"):
        load_tiny_weights(create_autoencoder("taehv", latent_channels=32), released)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"decoder_widths": [64, 64]}, "4 positive widths"),
        ({"encoder_time_downscale": [True, True]}, "3 entries"),
        ({"decoder_time_upscale": [True, True, True]}, "same factor"),
        ({"patch_size": 0}, "must be positive"),
    ],
)
def test_bad_options_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ModelConfigError, match=message):
        create_autoencoder("taehv", **overrides)


def test_bad_inputs_name_the_shapes(model: TAEHV) -> None:
    with pytest.raises(ValueError, match=r"expects videos \(B, T, 3, H, W\) with T >= 1"):
        model.encode(torch.zeros(1, 4, 1, 32, 32))
    with pytest.raises(ValueError, match=r"image size 36x32 .* factor 8"):
        model.encode(torch.zeros(1, 4, 3, 36, 32))
    with pytest.raises(ValueError, match=r"decodes latents \(B, n, 4, h, w\)"):
        model.decode(torch.zeros(1, 2, 5, 4, 4))


@pytest.mark.parametrize("patch_size", [1, 2])
def test_new_decoders_start_grey(patch_size: int) -> None:
    """The last decoder bias starts at 0.5, as TAESD's and the TAEHV training notebook's: 0 in [-1, 1]."""
    model = create_autoencoder("taehv", **{**get_family("taehv").tiny, "patch_size": patch_size})
    assert model.decoder[-1].bias.shape == (3 * patch_size**2,)
    assert torch.all(model.decoder[-1].bias == 0.5)
