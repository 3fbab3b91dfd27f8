"""Metrics against their references: scikit-image (PSNR, SSIM), pytorch-fid (Frechet, Inception), sklearn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import linalg
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from aetune import metrics
from aetune.setup.hub import WeightCorrupt, WeightsUnavailable


@pytest.fixture
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    """Two batches of 3 images (3 x 40 x 48) in [0, 1]: b is a noisy, clipped copy of a smooth a."""
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.avg_pool2d(torch.rand(3, 3, 44, 52, generator=g), 5, stride=1)
    b = (a + 0.08 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    return a, b


def _y255_numpy(x: np.ndarray) -> np.ndarray:
    """(3, H, W) RGB in [0, 1] -> BT.601 Y in [0, 255] rounded (MATLAB rgb2ycbcr on uint8)."""
    return np.round(16.0 + 65.481 * x[0] + 128.553 * x[1] + 24.966 * x[2])


def test_psnr_matches_skimage(pair):
    a, b = pair
    got = metrics.psnr(a, b)
    ref = [peak_signal_noise_ratio(x.numpy(), y.numpy(), data_range=1.0) for x, y in zip(a, b, strict=True)]
    assert got.shape == (3,)
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-4)


def test_psnr_of_a_perfect_reconstruction_is_finite(pair):
    """Identical images read 100 dB (MSE clamped at 1e-10), not inf, which a mean or a comparison turns into nan."""
    a, b = pair
    same = metrics.psnr(a, a)
    assert same.tolist() == pytest.approx([100.0] * 3, abs=1e-4) and torch.isfinite(same).all()
    assert metrics.psnr(a, a, y_channel=True).tolist() == pytest.approx([100.0] * 3, abs=1e-4)
    assert metrics.psnr(a * 255, a * 255, data_range=255.0).tolist() == pytest.approx([100.0] * 3, abs=1e-4)
    almost = a.clone()
    almost[0, 0, 0, 0] += 1e-3  # MSE 1e-6 / 3072 ~ 3e-10, above the floor: still the exact value
    expected = 10 * math.log10(1 / float(((almost - a) ** 2).mean(dim=(1, 2, 3))[0]))
    assert metrics.psnr(almost, a)[0].item() == pytest.approx(expected, rel=1e-4)
    assert float(torch.stack([metrics.psnr(a, a), metrics.psnr(a, b)]).mean()) < 100  # a mean stays a number


def test_psnr_y_channel_and_mse(pair):
    a, b = pair
    ya, yb = metrics.rgb_to_y(a), metrics.rgb_to_y(b)
    assert ya.shape == (3, 1, 40, 48)
    white, black = torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    assert metrics.rgb_to_y(white).flatten()[0].item() == pytest.approx(235 / 255, abs=1e-6)
    assert metrics.rgb_to_y(black).flatten()[0].item() == pytest.approx(16 / 255, abs=1e-6)
    ref = [peak_signal_noise_ratio(x.numpy(), y.numpy(), data_range=1.0) for x, y in zip(ya, yb, strict=True)]
    np.testing.assert_allclose(metrics.psnr(a, b, y_channel=True).numpy(), ref, atol=1e-4)
    np.testing.assert_allclose(metrics.mse(a, b).numpy(), ((a - b) ** 2).mean(dim=(1, 2, 3)).numpy(), rtol=1e-6)


def test_ssim_y_matches_skimage(pair):
    a, b = pair
    got = metrics.ssim(a, b, y_channel=True)
    ref = [
        structural_similarity(
            _y255_numpy(x.double().numpy()),
            _y255_numpy(y.double().numpy()),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255,
        )
        for x, y in zip(a, b, strict=True)
    ]
    assert got.shape == (3,)
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-5)
    assert 0.2 < min(ref) < max(ref) < 0.99  # a real comparison, not two identical images
    np.testing.assert_allclose(metrics.ssim(a, a).numpy(), 1.0, atol=1e-6)


def test_ssim_rgb_matches_skimage(pair):
    a, b = pair
    got = metrics.ssim(a, b, y_channel=False)
    ref = [
        structural_similarity(
            x.double().numpy() * 255,
            y.double().numpy() * 255,
            channel_axis=0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255,
        )
        for x, y in zip(a, b, strict=True)
    ]
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-5)


def test_ssim_rejects_small_or_mismatched_images():
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(torch.rand(1, 3, 10, 32), torch.rand(1, 3, 10, 32))
    with pytest.raises(ValueError, match="one shape"):
        metrics.psnr(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 17))


def test_lpips_distance_scales_inputs_to_minus_one_one(pair):
    a, b = pair
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x, y):
            seen.append(x)
            return (x - y).abs().mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)

    d = metrics.lpips_distance(Probe(), a, b)
    assert d.shape == (3,)
    np.testing.assert_allclose(d.numpy(), (2 * (a - b)).abs().mean(dim=(1, 2, 3)).numpy(), rtol=1e-5)
    torch.testing.assert_close(seen[0], 2 * a - 1)


def test_lpips_distance_with_lpips_network(pair):
    lpips = pytest.importorskip("lpips")
    model = lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False).eval()
    a, b = pair
    d = metrics.lpips_distance(model, a[:2], b[:2])
    assert d.shape == (2,)
    np.testing.assert_allclose(metrics.lpips_distance(model, a[:2], a[:2]).numpy(), 0.0, atol=1e-6)


def _pytorch_fid_reference(mu1, s1, mu2, s2) -> float:
    """pytorch-fid's calculate_frechet_distance (scipy sqrtm), written out here as the reference."""
    covmean = linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_distance_matches_scipy_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16))
    y = rng.normal(size=(150, 16)) @ rng.normal(size=(16, 16)) * 0.5 + 0.3
    mu1, s1 = metrics.feature_statistics(torch.from_numpy(x).float())
    mu2, s2 = metrics.feature_statistics(y)
    np.testing.assert_allclose(s1, np.cov(x.astype(np.float32).astype(np.float64), rowvar=False), rtol=1e-6)
    got = metrics.frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(_pytorch_fid_reference(mu1, s1, mu2, s2), rel=1e-6)
    assert metrics.rfid(x, y) == pytest.approx(got, rel=1e-9)


def test_frechet_distance_analytic_cases():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(8, 8))
    s = a @ a.T + np.eye(8)
    mu = rng.normal(size=8)
    assert metrics.frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9)
    d = np.arange(8.0)
    assert metrics.frechet_distance(mu, s, mu + d, s) == pytest.approx(d @ d, rel=1e-9)
    v1, v2 = rng.uniform(0.5, 2, 8), rng.uniform(0.5, 2, 8)
    closed = ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()  # diagonal covariances: sum (sqrt v1 - sqrt v2)^2
    assert metrics.frechet_distance(mu, np.diag(v1), mu, np.diag(v2)) == pytest.approx(closed, rel=1e-9)


def test_frechet_distance_singular_covariance_small_n():
    """N < D (a few hundred validation images, 2048-d features): singular covariances stay finite."""
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(10, 32)), rng.normal(size=(10, 32)) + 1.0
    got = metrics.rfid(x, y)
    ref = _pytorch_fid_reference(*metrics.feature_statistics(x), *metrics.feature_statistics(y))
    assert np.isfinite(got) and got == pytest.approx(ref, rel=1e-4)
    with pytest.raises(ValueError, match="N >= 2"):
        metrics.feature_statistics(x[:1])
    with pytest.raises(ValueError, match="shape mismatch"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_inception_extractor_matches_pytorch_fid(monkeypatch, tmp_path):
    """Same weights through our extractor and pytorch_fid.InceptionV3 give the same 2048-d features."""
    from pytorch_fid import inception as pfid

    torch.manual_seed(0)
    ours = metrics.InceptionFeatureExtractor(random_weights=True)
    state = dict(ours.net.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    weights = tmp_path / metrics.FID_WEIGHTS_FILE
    torch.save(state, weights)
    monkeypatch.setattr(pfid, "load_state_dict_from_url", lambda *a, **k: torch.load(weights))
    ref = pfid.InceptionV3([pfid.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    feats = ours(x)
    assert feats.shape == (2, 2048)
    with torch.no_grad():
        expected = ref(x)[0].flatten(1)
    torch.testing.assert_close(feats, expected, rtol=1e-4, atol=1e-5)
    assert (feats[0] - feats[1]).abs().max() > 1e-3  # per-image features, not a constant

    loaded = metrics.InceptionFeatureExtractor(weights)
    for k, v in ours.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)
    loaded.train()
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


@pytest.mark.parametrize(
    "content",
    [b"not weights\n", b"PK\x03\x04truncated", "tensor", "other_network"],
    ids=["text", "truncated_zip", "a_tensor", "another_network"],
)
def test_inception_extractor_with_corrupt_weights_names_the_file(tmp_path, content):
    path = tmp_path / metrics.FID_WEIGHTS_FILE
    if content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content == "other_network":
        torch.save({"conv.weight": torch.zeros(3, 3, 3, 3)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(WeightCorrupt, match=f"{path}.*(unreadable|not a state dict|not pytorch-fid's).*step2") as e:
        metrics.InceptionFeatureExtractor(path)
    assert "\n" not in str(e.value)


def test_inception_extractor_without_weights_names_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailable, match="pt_inception-2015-12-05-6726825d.pth.*step2"):
        metrics.InceptionFeatureExtractor()


def test_linear_probe_and_silhouette():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 16)) * 6
    y = np.repeat(np.arange(3), 60)
    x = centers[y] + rng.normal(size=(180, 16))
    tr, va = np.arange(180) % 3 != 0, np.arange(180) % 3 == 0
    assert metrics.linear_probe_accuracy(x[tr], y[tr], x[va], y[va]) > 0.98
    y_rand = rng.integers(0, 3, size=180)
    x_rand = rng.normal(size=(180, 16))
    acc = metrics.linear_probe_accuracy(x_rand[tr], y_rand[tr], x_rand[va], y_rand[va])
    assert acc < 0.6  # chance is 1/3
    assert metrics.silhouette(torch.from_numpy(x), torch.from_numpy(y)) > 0.5
    assert abs(metrics.silhouette(x_rand, y_rand)) < 0.1


def test_probe_and_silhouette_need_two_labels(caplog):
    x = np.random.default_rng(0).normal(size=(10, 4))
    assert math.isnan(metrics.silhouette(x, np.zeros(10)))
    assert "1 label(s)" in caplog.text
    assert math.isnan(metrics.linear_probe_accuracy(x, np.zeros(10), x, np.zeros(10)))
