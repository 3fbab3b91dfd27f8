"""One pass over a split: per-image metrics (analytic and scikit-image), latents, statistics, caching, checks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio
from torch import nn

from aetune.data.cache import CachedImages
from aetune.data.prepare import prepare_dataset
from aetune.data.prepared import load_prepared
from aetune.errors import AetuneError
from aetune.evaluate import evaluator as evaluate
from aetune.evaluate.evaluator import (
    Evaluator,
    check_labels,
    evaluate_split,
    inception_features,
    pick_examples,
    report_lpips,
    resolve_device,
)
from aetune.evaluate.latent_stats import LatentStatsAccumulator
from aetune.models import create_autoencoder, get_family
from aetune.models.outputs import DecoderOutput, DiagonalGaussian, EncoderOutput
from tests.conftest import make_user_folders


class Shift(nn.Module):
    """Latents are the images themselves; decoding adds ``2 * delta`` ([-1, 1] units): ``delta`` in [0, 1]."""

    family = "shift"

    def __init__(self, delta: float, posterior: bool = True) -> None:
        super().__init__()
        self.delta, self.posterior = delta, posterior

    def encode(self, x: torch.Tensor) -> EncoderOutput:
        if not self.posterior:
            return EncoderOutput(latent_dist=None, latents=x)
        post = DiagonalGaussian(torch.cat([x, torch.zeros_like(x)], dim=1))
        return EncoderOutput(latent_dist=post, latents=post.mode())

    def decode(self, z: torch.Tensor) -> DecoderOutput:
        return DecoderOutput(sample=z + 2 * self.delta)


def _mid_grey_images(n: int = 5, size: int = 16, seed: int = 0) -> CachedImages:
    """uint8 images in [64, 191]: a shift of 0.05 never clips, so the metrics are analytic."""
    rng = np.random.default_rng(seed)
    images = rng.integers(64, 192, (n, size, size, 3), dtype=np.uint8)
    return CachedImages(images, [i % 2 for i in range(n)])


def test_perfect_and_shifted_reconstructions_are_analytic() -> None:
    data = _mid_grey_images()
    perfect = evaluate_split(Shift(0.0), data, batch_size=2, progress=False)
    assert np.all(perfect.per_image["mse"] == 0)
    np.testing.assert_allclose(perfect.per_image["psnr"], 100.0, atol=1e-4)  # clamped: a number, not inf
    np.testing.assert_allclose(perfect.per_image["ssim_y"], 1.0, atol=1e-6)
    shifted = evaluate_split(Shift(0.05), data, batch_size=2, progress=False)
    np.testing.assert_allclose(shifted.per_image["mse"], 0.05**2, rtol=1e-4)
    np.testing.assert_allclose(shifted.per_image["psnr"], -10 * math.log10(0.05**2), rtol=1e-4)
    assert set(shifted.per_image) == {"mse", "psnr", "psnr_y", "ssim_y", "psnr_baseline", "psnr_y_baseline"}
    assert shifted.labels.tolist() == [0, 1, 0, 1, 0]
    assert shifted.latents.shape == (5, 3 * 16 * 16)


class Flat(Shift):
    """A collapsed model: every reconstruction is its input's mean colour, a flat image."""

    def decode(self, z: torch.Tensor) -> DecoderOutput:
        return DecoderOutput(sample=z.mean(dim=(2, 3), keepdim=True).expand_as(z))


def test_constant_image_baseline_is_the_psnr_of_each_images_mean_colour() -> None:
    halves = np.zeros((2, 16, 16, 3), np.uint8)
    halves[:, :, :8], halves[:, :, 8:] = 64, 192  # grey halves: mean colour 128/255, every pixel 64/255 from it
    halves[1, :, :, 2] = 100  # image 1: a flat blue channel adds no error to its baseline (MSE over 3 channels)
    data = CachedImages(halves, [0, 1])
    rgb = [-20 * math.log10(64 / 255), -10 * math.log10((2 / 3) * (64 / 255) ** 2)]
    y = [-20 * math.log10(219 / 255 * 64 / 255), -20 * math.log10((65.481 + 128.553) / 255 * 64 / 255)]
    perfect = evaluate_split(Shift(0.0), data, batch_size=2, progress=False)
    np.testing.assert_allclose(perfect.per_image["psnr_baseline"], rgb, rtol=1e-5)  # 12.01 and 13.77 dB
    np.testing.assert_allclose(perfect.per_image["psnr_y_baseline"], y, rtol=1e-5)
    np.testing.assert_allclose(perfect.per_image["psnr"], 100.0, atol=1e-4)  # far above its baseline
    collapsed = evaluate_split(Flat(0.0), data, batch_size=2, progress=False)
    np.testing.assert_allclose(collapsed.per_image["psnr"], rgb, rtol=1e-5)  # a flat model scores the baseline


def test_latents_statistics_and_features_are_batch_size_invariant() -> None:
    data = _mid_grey_images(n=7)
    pooled = {"features": lambda imgs: imgs.mean(dim=(2, 3))}  # (B, 3, H, W) -> (B, 3)
    a = evaluate_split(Shift(0.02), data, batch_size=1, progress=False, keep_examples=[0, 6], **pooled)
    b = evaluate_split(Shift(0.02), data, batch_size=4, progress=False, keep_examples=[0, 6], **pooled)
    for key in a.per_image:
        np.testing.assert_allclose(a.per_image[key], b.per_image[key], rtol=1e-6)
    np.testing.assert_array_equal(a.latents, b.latents)
    torch.testing.assert_close(a.stats.channel_std, b.stats.channel_std)
    x = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 127.5 - 1  # what the encoder saw
    ref = LatentStatsAccumulator()
    ref.update(x, DiagonalGaussian(torch.cat([x, torch.zeros_like(x)], 1)))
    torch.testing.assert_close(a.stats.channel_mean, ref.result().channel_mean)
    np.testing.assert_allclose(a.real_features, data.images.mean(axis=(1, 2)) / 255.0, atol=1e-6)
    np.testing.assert_allclose(a.fake_features, a.real_features + 0.02, atol=1e-6)
    assert sorted(a.examples) == [0, 6]
    orig, rec = a.examples[6]
    np.testing.assert_allclose(orig, data.images[6].transpose(2, 0, 1) / 255.0, atol=1e-6)
    np.testing.assert_allclose(rec, orig + 0.02, atol=1e-6)


def test_samples_are_seeded_and_need_a_posterior() -> None:
    data = _mid_grey_images()
    s1 = evaluate_split(Shift(0.0), data, stats_source="sample", seed=3, reconstruct=False, progress=False)
    s2 = evaluate_split(Shift(0.0), data, stats_source="sample", seed=3, reconstruct=False, progress=False)
    assert s1.stats.source == "sample" and s1.per_image == {}
    torch.testing.assert_close(s1.stats.channel_std, s2.stats.channel_std)
    mode = evaluate_split(Shift(0.0), data, reconstruct=False, progress=False)
    assert float((s1.stats.channel_std - mode.stats.channel_std).abs().max()) > 0.1  # unit posterior noise
    with pytest.raises(ValueError, match="deterministic"):
        evaluate_split(Shift(0.0, posterior=False), data, stats_source="sample", progress=False)
    with pytest.raises(ValueError, match="no images"):
        evaluate_split(Shift(0.0), CachedImages(np.zeros((0, 8, 8, 3), np.uint8), []), progress=False)


@pytest.fixture
def prepared_work(tmp_path: Path) -> Path:
    """A work directory whose step 3 ran on 3 users x 6 images of 32 px (val ratio 1/3)."""
    root = make_user_folders(tmp_path / "data", {"ID_1": 6, "ID_2": 6, "ID_10": 6})
    prepare_dataset(root, tmp_path / "work", name="toy", val_ratio=1 / 3, progress=False)
    return tmp_path / "work"


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return create_autoencoder("vavae", **get_family("vavae").tiny)


def test_real_model_psnr_matches_scikit_image(prepared_work: Path) -> None:
    prepared = load_prepared(prepared_work)
    ev = Evaluator(_tiny(), prepared, 32, "ram", prepared_work, batch_size=4, progress=False)
    res = ev.evaluated("val")
    assert len(res.labels) == len(prepared.val) > 0
    model = ev.model
    assert not model.training
    (orig, rec) = res.examples[0]
    ref = peak_signal_noise_ratio(orig, rec, data_range=1.0)
    assert res.per_image["psnr"][0] == pytest.approx(ref, rel=1e-4)
    assert sorted(set(res.labels[list(res.examples)])) == [0, 1, 2]  # one example per user


def test_evaluator_runs_each_split_once(prepared_work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prepared = load_prepared(prepared_work)
    calls: list[str] = []
    real = evaluate.evaluate_split

    def counting(*args, **kwargs):
        calls.append(kwargs["desc"])
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_split", counting)
    ev = Evaluator(_tiny(), prepared, 32, "file", prepared_work, batch_size=8, progress=False)
    val = ev.evaluated("val")
    assert ev.encoded("val") is val and ev.evaluated("val") is val
    train = ev.encoded("train")
    assert ev.encoded("train") is train
    everything = ev.encoded("all")
    assert calls == ["evaluating val", "encoding train", "encoding all"]
    np.testing.assert_array_equal(everything.latents, np.concatenate([train.latents, val.latents]))
    assert (prepared_work / "cache" / "train_32px.npy").is_file()  # file cache mode reuses step 4's cache


def test_empty_split(prepared_work: Path) -> None:
    split_file = prepared_work / "data" / "split.json"
    split = json.loads(split_file.read_text())
    split["train"], split["val"] = split["train"] + split["val"], []
    split_file.write_text(json.dumps(split))
    ev = Evaluator(_tiny(), load_prepared(prepared_work), 32, "ram", prepared_work, progress=False)
    assert ev.encoded("val") is None
    with pytest.raises(AetuneError, match="val split has no images"):
        ev.evaluated("val")


def test_pick_examples_spreads_over_users() -> None:
    labels = [u for u in range(10) for _ in range(3)]
    picked = pick_examples(labels, max_users=4)
    assert [labels[i] for i in picked] == [0, 3, 6, 9] and picked == [0, 9, 18, 27]
    assert pick_examples([2, 2, 1], max_users=6) == [2, 0]


def test_check_labels(tmp_path: Path) -> None:
    labels = {"ID_1": 0, "ID_2": 1}
    check_labels({"labels": labels}, dict(labels), tmp_path / "c.pt")
    with pytest.raises(AetuneError, match="trained on 2 users .* lists 1"):
        check_labels({"labels": labels}, {"ID_1": 0}, tmp_path / "c.pt")
    with pytest.raises(AetuneError, match="trained on 2 users"):
        check_labels({"labels": labels}, {"ID_1": 0, "ID_3": 1}, tmp_path / "c.pt")


def test_missing_weights_are_reported_not_invented(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    model, reason = report_lpips({"lpips": True})
    assert model is None and reason.startswith("unavailable:") and "vgg16-397923af.pth" in reason
    model, reason = report_lpips({"lpips": False})
    assert model is None and "lpips_pretrained false" in reason
    extractor, reason = inception_features(None, torch.device("cpu"))
    assert extractor is None and reason.startswith("unavailable:") and "pt_inception-2015-12-05" in reason
    corrupt = tmp_path / "inception.pth"
    corrupt.write_bytes(b"\x00" * 64)
    extractor, reason = inception_features(str(corrupt), torch.device("cpu"))
    assert extractor is None and reason.startswith("unavailable:") and str(corrupt) in reason


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    for name in ("cuda", "cuda:0"):
        with pytest.raises(AetuneError, match=f"--device {name}: no CUDA GPU is visible here"):
            resolve_device(name)
    with pytest.raises(AetuneError, match="not a device name"):
        resolve_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device(None) == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(AetuneError, match="has 2 CUDA GPU"):
        resolve_device("cuda:2")


class PaddingOnlyVolumes(nn.Module):
    """A 3-D stand-in that reproduces the first half of each volume's slices exactly and blurs the rest by 0.1."""

    family = "kl3d"
    spatial_dims = 3

    def encode(self, x: torch.Tensor) -> EncoderOutput:
        return EncoderOutput(latent_dist=None, latents=x)

    def decode(self, z: torch.Tensor) -> DecoderOutput:
        out = z.clone()
        out[:, :, z.shape[2] // 2 :] += 0.2  # +0.1 in [0, 1]
        return DecoderOutput(sample=out)


def test_step5_scores_a_volume_by_its_own_psnr_not_its_slices_mean() -> None:
    volumes = torch.rand(2, 1, 8, 16, 16, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8  # [-0.8, 0.8]
    result = evaluate.evaluate_split(PaddingOnlyVolumes(), [(v, 0) for v in volumes], progress=False)
    mse = 0.1**2 / 2  # half the voxels are off by 0.1
    np.testing.assert_allclose(result.per_image["psnr"], 10 * math.log10(1 / mse), rtol=1e-5)  # 23.0 dB
    np.testing.assert_allclose(result.per_image["psnr_slices"], (100 + 20) / 2, rtol=1e-5)  # exact slices: 100 dB
