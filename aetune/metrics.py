"""Reconstruction and latent-space metrics: PSNR, SSIM, LPIPS, Frechet distance (rFID), probes.

Image metrics take (B, 3, H, W) float tensors in [0, 1] (callers clamp decoded images) and return one
value per image, shape (B,), so validation can report per-user numbers. They run without gradients on
whatever device the tensors live on. Latent metrics take (N, D) feature tensors.
"""

from __future__ import annotations

import logging
import math
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aetune.setup.hub import WeightCorrupt, WeightsUnavailable, torch_hub_path

log = logging.getLogger(__name__)

BT601_Y = (65.481, 128.553, 24.966)
"""ITU-R BT.601 RGB -> Y weights for RGB in [0, 1] and Y in [0, 255] (before the +16 offset)."""
SSIM_SIGMA = 1.5
"""Gaussian window of Wang et al. 2004; truncated at 3.5 sigma (scipy/skimage) -> an 11x11 window."""
SSIM_RADIUS = int(3.5 * SSIM_SIGMA + 0.5)
SSIM_K1, SSIM_K2 = 0.01, 0.03
FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
"""pytorch-fid's port of the TF Inception graph every published FID uses (torch hub cache name)."""
FID_INPUT_SIZE = 299
FID_FEATURE_DIM = 2048
"""Inception pool features per image: below this many images their covariance is rank-deficient."""
MSE_FLOOR = 1e-10
"""PSNR clamps the MSE (relative to ``data_range ** 2``) here, so a perfect reconstruction reads 100 dB, not inf
(an inf mean, or inf - inf = nan in a comparison, would read as divergence)."""


def _check_pair(a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"expected two (B, C, H, W) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")


@torch.no_grad()
def mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared error per image.

    Args:
        a, b: (B, C, H, W) images.

    Returns:
        (B,) float32.
    """
    _check_pair(a, b)
    return (a.float() - b.float()).pow(2).mean(dim=(1, 2, 3))


def rgb_to_y(x: Tensor) -> Tensor:
    """ITU-R BT.601 luma: Y = 16/255 + (65.481 R + 128.553 G + 24.966 B) / 255.

    The studio-swing Y of MATLAB's ``rgb2ycbcr`` and BasicSR's ``rgb2ycbcr(y_only=True)``: for RGB in
    [0, 1], Y lies in [16/255, 235/255]. SSIM rounds ``Y * 255`` to integers as MATLAB does for uint8
    images (BasicSR keeps the unrounded value; the difference is at most half a grey level).

    Args:
        x: (B, 3, H, W) RGB in [0, 1].

    Returns:
        (B, 1, H, W) Y in [16/255, 235/255], the dtype of ``x``.
    """
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"rgb_to_y expects (B, 3, H, W) RGB, got {tuple(x.shape)}")
    w = torch.tensor(BT601_Y, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True) / 255.0 + 16.0 / 255.0


def psnr_from_mse(mse_value: Tensor, data_range: float = 1.0) -> Tensor:
    """``10 log10(data_range^2 / MSE)`` in dB, at most 100 dB (``MSE_FLOOR``); any shape, float32 in and out."""
    return 10.0 * torch.log10(data_range**2 / mse_value.clamp_min(MSE_FLOOR * data_range**2))


@torch.no_grad()
def psnr(a: Tensor, b: Tensor, y_channel: bool = False, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio per image, in dB, at most 100 dB (identical images; see ``MSE_FLOOR``).

    Args:
        a, b: (B, 3, H, W) images in [0, 1].
        y_channel: compare BT.601 luma (unrounded) instead of RGB.
        data_range: peak value of the images (1 for [0, 1]).

    Returns:
        (B,) float32 dB in (-inf, 100].
    """
    _check_pair(a, b)
    a, b = a.float(), b.float()
    if y_channel:
        a, b = rgb_to_y(a), rgb_to_y(b)
    return psnr_from_mse(mse(a, b), data_range)


def _gaussian_window(device: torch.device) -> Tensor:
    """(2r+1,) float64 normalised Gaussian taps, as scipy.ndimage.gaussian_filter builds them."""
    x = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64, device=device)
    w = torch.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return w / w.sum()


def _blur(x: Tensor, w: Tensor) -> Tensor:
    """Separable Gaussian filter without padding: (N, 1, H, W) -> (N, 1, H - 2r, W - 2r).

    skimage filters with reflect padding and then crops r = (win_size - 1) // 2 pixels from each side,
    which leaves exactly the pixels whose window never touched the padding: a 'valid' convolution.
    """
    x = F.conv2d(x, w.view(1, 1, -1, 1))
    return F.conv2d(x, w.view(1, 1, 1, -1))


@torch.no_grad()
def ssim(a: Tensor, b: Tensor, y_channel: bool = True) -> Tensor:
    """Structural similarity per image (Wang et al. 2004), as scikit-image computes it.

    Equals ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=255)`` on ``Y * 255`` rounded to integers (``y_channel``), or
    on ``RGB * 255`` per channel then averaged. Computed in float64: ``E[x^2] - E[x]^2`` cancels badly in
    float32 at 255 scale.

    Args:
        a, b: (B, 3, H, W) images in [0, 1], H and W >= 11.
        y_channel: BT.601 luma rounded to 8 bit (the super-resolution convention) instead of RGB.

    Returns:
        (B,) float32 in [-1, 1].
    """
    _check_pair(a, b)
    win = 2 * SSIM_RADIUS + 1
    if min(a.shape[-2:]) < win:
        raise ValueError(f"SSIM needs images of at least {win}x{win} pixels, got {tuple(a.shape[-2:])}")
    a, b = a.double(), b.double()
    if y_channel:
        a, b = torch.round(rgb_to_y(a) * 255.0), torch.round(rgb_to_y(b) * 255.0)
    else:
        a, b = a * 255.0, b * 255.0
    bsz, ch, h, w = a.shape
    x = torch.cat([a, b, a * a, b * b, a * b]).reshape(5 * bsz * ch, 1, h, w)  # channels filtered alike
    mu_a, mu_b, e_aa, e_bb, e_ab = _blur(x, _gaussian_window(a.device)).reshape(5, bsz, ch, h - win + 1, -1)
    var_a, var_b = e_aa - mu_a**2, e_bb - mu_b**2  # population (co)variances, as use_sample_covariance=False
    cov = e_ab - mu_a * mu_b
    c1, c2 = (SSIM_K1 * 255.0) ** 2, (SSIM_K2 * 255.0) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean(dim=(2, 3)).mean(dim=1).float()  # per-channel mean, then over channels


@torch.no_grad()
def lpips_distance(model: nn.Module, a: Tensor, b: Tensor) -> Tensor:
    """LPIPS distance per image.

    Args:
        model: an ``lpips.LPIPS``-like module taking two (B, 3, H, W) images in [-1, 1], e.g. from
            ``aetune.losses.build_lpips``.
        a, b: (B, 3, H, W) images in [0, 1].

    Returns:
        (B,) float32, 0 for identical images.
    """
    _check_pair(a, b)
    d = model(a.float() * 2 - 1, b.float() * 2 - 1)  # (B, 1, 1, 1) for lpips.LPIPS
    return d.reshape(a.shape[0]).float()


def _as_float64(x: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def feature_statistics(features: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a feature set, as pytorch-fid computes them.

    Args:
        features: (N, D) with N >= 2.

    Returns:
        mu (D,) and sigma (D, D), float64; sigma is the unbiased (N - 1) covariance.
    """
    x = _as_float64(features)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"feature_statistics needs (N, D) features with N >= 2, got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def frechet_distance(
    mu1: Tensor | np.ndarray, sigma1: Tensor | np.ndarray, mu2: Tensor | np.ndarray, sigma2: Tensor | np.ndarray
) -> float:
    """Frechet distance between two Gaussians: |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    ``tr((S1 S2)^(1/2))`` is the sum of square roots of the eigenvalues of S1 S2, which equal those of
    the symmetric PSD matrix S1^(1/2) S2 S1^(1/2). Symmetric eigendecompositions in float64 with
    negative round-off clamped to 0 replace ``scipy.linalg.sqrtm``, which returns complex values and
    needs an epsilon for the singular covariances of small sets (N < D).

    Args:
        mu1, mu2: (D,) means.
        sigma1, sigma2: (D, D) covariances.

    Returns:
        The distance (>= 0 up to round-off).
    """
    m1, m2, s1, s2 = (_as_float64(v) for v in (mu1, mu2, sigma1, sigma2))
    d = m1.shape[0]
    if m1.shape != (d,) or m2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shape mismatch: mu {m1.shape}, {m2.shape}; sigma {s1.shape}, {s2.shape}")
    evals, evecs = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (evecs * np.sqrt(np.clip(evals, 0, None))) @ evecs.T
    m = root1 @ s2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = m1 - m2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def rfid(real_feats: Tensor | np.ndarray, fake_feats: Tensor | np.ndarray) -> float:
    """Reconstruction FID: Frechet distance of Inception features of originals vs reconstructions.

    Args:
        real_feats, fake_feats: (N, 2048) from :class:`InceptionFeatureExtractor`. Small N (a few hundred
            validation images) biases FID upwards: compare runs at equal N only.
    """
    return frechet_distance(*feature_statistics(real_feats), *feature_statistics(fake_feats))


def _fid_inception() -> nn.Module:
    """torchvision's Inception v3 with pytorch-fid's TF-compatible blocks (uninitialised weights)."""
    import torchvision
    from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2

    # The same block substitution as pytorch_fid.inception.fid_inception_v3, which we cannot call
    # because it downloads the weights itself; tests check parity with pytorch_fid.InceptionV3.
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE_1(1280)
    net.Mixed_7c = FIDInceptionE_2(2048)
    return net


def _read_inception_state(path: Path, net: nn.Module) -> dict[str, Tensor]:
    """pytorch-fid's Inception state dict from ``path``, checked against ``net`` (``_fid_inception()``).

    Raises:
        WeightCorrupt: unreadable (truncated, text, pickle beyond tensors) or another network's weights.
    """
    fix = f"re-run step2_download_models.py --only fid_inception, or attach an intact {FID_WEIGHTS_FILE}"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WeightCorrupt(f"FID Inception weights {path} are unreadable ({reason}): {fix}") from e
    expected = net.state_dict()
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightCorrupt(f"FID Inception weights {path} hold a {type(state).__name__}, not a state dict: {fix}")
    wrong = [k for k in expected if k not in state or state[k].shape != expected[k].shape]
    if wrong or len(state) != len(expected):
        raise WeightCorrupt(
            f"FID Inception weights {path} are not pytorch-fid's ({len(wrong)} of {len(expected)} tensors missing or "
            f"mis-shaped, first {wrong[0] if wrong else 'none'}; {len(state)} tensors in the file): {fix}"
        )
    return state


class InceptionFeatureExtractor(nn.Module):
    """[0, 1] images -> 2048-d pool features of the FID Inception network (pytorch-fid's weights).

    Args:
        weights_path: the ``pt_inception-2015-12-05-6726825d.pth`` file; None looks in the torch hub
            cache (where step 2 places it). Never downloads.
        random_weights: build with random weights instead (tests and the offline demo only: the
            numbers are then not FID).

    Raises:
        WeightsUnavailable: the weights file is missing.
        WeightCorrupt: the file is unreadable or holds another network's weights.
    """

    def __init__(self, weights_path: str | Path | None = None, random_weights: bool = False) -> None:
        super().__init__()
        self.net = _fid_inception()
        self.random_weights = random_weights
        if random_weights:
            # He init keeps activations O(1) through ~40 conv-BN-ReLU layers (PyTorch's default init
            # shrinks them to ~1e-8 by the pool, which would make every feature set look identical).
            for m in self.net.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        else:
            path = Path(weights_path) if weights_path is not None else torch_hub_path(FID_WEIGHTS_FILE)
            if not path.is_file():
                raise WeightsUnavailable(
                    f"FID Inception weights {path} not found: run step2_download_models.py --only "
                    f"fid_inception, or attach a Kaggle dataset holding {FID_WEIGHTS_FILE} and run step 2 "
                    "with --weights_dir"
                )
            self.net.load_state_dict(_read_inception_state(path, self.net))
        self.net.fc = nn.Identity()  # the 1008-way TF classifier is not part of FID: keep pool features
        self.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 2048) float32 features."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"Inception features need (B, 3, H, W) RGB, got {tuple(x.shape)}")
        # pytorch-fid's preprocessing: bilinear resize to 299 (no antialias), then [0, 1] -> [-1, 1].
        x = F.interpolate(x.float(), size=(FID_INPUT_SIZE, FID_INPUT_SIZE), mode="bilinear", align_corners=False)
        return self.net(2 * x - 1)  # (B, 2048)

    def train(self, mode: bool = True) -> InceptionFeatureExtractor:
        """Always eval: BatchNorm statistics and dropout of a metric network must not change."""
        return super().train(False)


def _labels_reason(y: np.ndarray, n: int) -> str | None:
    """Why a labelled set cannot be scored, or None when it can."""
    k = len(np.unique(y))
    if k < 2:
        return f"{k} label(s) present, need at least 2"
    if k > n - 1:
        return f"{k} labels for {n} samples, need fewer labels than samples"
    return None


def linear_probe_accuracy(
    train_x: Tensor | np.ndarray, train_y: Tensor | np.ndarray, val_x: Tensor | np.ndarray, val_y: Tensor | np.ndarray
) -> float:
    """Accuracy of a logistic-regression probe on standardised features: how linearly the classes separate.

    Args:
        train_x, val_x: (N, D) features (e.g. latents averaged over space).
        train_y, val_y: (N,) integer labels.

    Returns:
        Accuracy in [0, 1] on the validation set; nan (with a logged reason) when the training set has
        fewer than 2 classes.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    tx, vx = _as_float64(train_x), _as_float64(val_x)
    ty, vy = _as_float64(train_y).astype(np.int64), _as_float64(val_y).astype(np.int64)
    if len(np.unique(ty)) < 2:
        log.warning("linear probe skipped: the training features hold fewer than 2 labels")
        return math.nan
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(tx, ty)
    return float((probe.predict(vx) == vy).mean())


def silhouette(x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> float:
    """Silhouette score of features grouped by label (Euclidean), in [-1, 1].

    Args:
        x: (N, D) features.
        y: (N,) labels.

    Returns:
        The score; nan (with a logged reason) unless 2 <= number of labels <= N - 1.
    """
    from sklearn.metrics import silhouette_score

    xs, ys = _as_float64(x), _as_float64(y).astype(np.int64)
    reason = _labels_reason(ys, len(ys))
    if reason is not None:
        log.warning("silhouette skipped: %s", reason)
        return math.nan
    return float(silhouette_score(xs, ys))
