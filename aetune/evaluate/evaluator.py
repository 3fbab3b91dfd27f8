"""One pass of an autoencoder over a split: latents, reconstructions, per-image metrics, Inception features.

Everything step 5 reports is computed from ``SplitResult``: per-image numbers (aggregated overall and per
user by ``aetune.evaluate.report``), flattened posterior means (linear probe, silhouette, projections), streaming
latent statistics, and the Inception features of originals and reconstructions (rFID).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from aetune import metrics
from aetune.data.cache import CachedImages, build_file_cache, load_images, to_model_range
from aetune.data.kinds.volume import axial_slices
from aetune.data.prepared import PreparedData
from aetune.errors import AetuneError
from aetune.evaluate.latent_stats import LatentStatistics, LatentStatsAccumulator
from aetune.models.base import Autoencoder
from aetune.setup.hub import WeightCorrupt, WeightsUnavailable, recorded_weight
from aetune.tasks.restoration.metrics import restoration_metrics

log = logging.getLogger(__name__)

FeatureFn = Callable[[Tensor], Tensor]
"""Images (B, 3, H, W) in [0, 1] -> features (B, D) (the Inception extractor, or a stand-in in tests)."""


def to_unit(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1], clamped (reconstructions may overshoot)."""
    return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def model_input(x: Tensor) -> Tensor:
    """A batch as served -> the autoencoder's input: uint8 images [0, 255] -> [-1, 1]; float volumes as they are."""
    return x.float() if x.is_floating_point() else to_model_range(x)


def constant_image(real: Tensor) -> Tensor:
    """Images (N, 3, H, W) in [0, 1] -> each image's mean colour everywhere: the best constant image (least MSE).

    Its PSNR is the baseline a model must beat: a model that collapsed to a flat colour scores at most this.
    """
    return real.mean(dim=(-2, -1), keepdim=True).expand_as(real)


@dataclass
class SplitResult:
    """What one pass over a split produced (everything on CPU, in the split's image order).

    Attributes:
        labels: (N,) int64 user labels.
        latents: (N, C*h*w) float32 flattened posterior means (the deterministic latents).
        stats: latent statistics of the split (source as requested).
        per_image: name -> (N,) float64 for ``mse``, ``psnr``, ``psnr_y``, ``ssim_y``, the constant-image
            baselines ``psnr_baseline`` and ``psnr_y_baseline`` (the PSNR of each image's mean colour,
            ``constant_image``) and ``lpips`` when a pretrained LPIPS was given; empty without reconstruction.
            For paired data ``psnr_y``, ``ssim_y`` and ``lpips`` are the restoration task's validation values
            (``aetune.tasks.restoration.metrics``: 8-bit images, Y as pyiqa, no border crop).
        real_features, fake_features: (N, D) Inception features of originals and reconstructions, or None.
        examples: image index -> (original, reconstruction), each (3, S, S) float32 in [0, 1]; for paired
            data (original = the target GT, reconstruction = the output, the input LQ).
    """

    labels: np.ndarray
    latents: np.ndarray
    stats: LatentStatistics
    per_image: dict[str, np.ndarray] = field(default_factory=dict)
    real_features: np.ndarray | None = None
    fake_features: np.ndarray | None = None
    examples: dict[int, tuple[np.ndarray, ...]] = field(default_factory=dict)


@torch.inference_mode()
def evaluate_split(
    model: Autoencoder,
    dataset: Dataset,
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    reconstruct: bool = True,
    lpips_model: nn.Module | None = None,
    features: FeatureFn | None = None,
    stats_source: str = "mode",
    keep_examples: Sequence[int] = (),
    seed: int = 0,
    progress: bool = True,
    desc: str = "encoding",
) -> SplitResult:
    """Encode (and with ``reconstruct``, decode and score) every image of ``dataset``.

    Args:
        model: the autoencoder; put in eval mode on ``device`` here.
        dataset: items ``(image (3, S, S) uint8, label)`` (``aetune.data.cache.CachedImages``), or
            ``(input, target, label)`` for paired data (``aetune.data.kinds.pair``): the input is encoded and
            the output scored against the target; or ``(clip (T, 3, S, S) uint8, label)`` for video
            (``aetune.data.kinds.video``): the frames that come back are scored, metrics averaged per clip,
            statistics over every latent frame, examples the first frame of a clip.
        batch_size: images per forward pass.
        device: where the model (and LPIPS / feature networks) run.
        reconstruct: decode and compute per-image metrics; False only encodes (statistics, probe).
        lpips_model: a pretrained LPIPS network for ``metrics.lpips_distance``; None skips LPIPS.
        features: image -> feature function for rFID (``metrics.InceptionFeatureExtractor``); None skips.
        stats_source: ``"mode"`` or ``"sample"``: which latents the statistics describe.
        keep_examples: image indices whose original and reconstruction are kept for figures.
        seed: seeds the posterior samples (``stats_source="sample"``).
        progress: show a tqdm bar.
        desc: the bar's label.

    Raises:
        ValueError: ``dataset`` is empty, or the model has no posterior and ``stats_source="sample"``.
    """
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError(f"{desc}: no images in this split")
    model.eval().to(device)
    for net in (lpips_model, features):
        if isinstance(net, nn.Module):
            net.eval().to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    acc = LatentStatsAccumulator(stats_source)
    keep = set(keep_examples)
    labels, latents = [], []
    per_image: dict[str, list[Tensor]] = {}
    real_feats, fake_feats = [], []
    examples: dict[int, tuple[np.ndarray, ...]] = {}
    start = 0
    for *images, y in tqdm(DataLoader(dataset, batch_size=batch_size), desc=desc, unit="batch", disable=not progress):
        x = model_input(images[0].to(device))  # uint8 -> [-1, 1]; volumes come as floats
        paired = len(images) == 2  # (input, target, label) items: restoration pairs
        volume = getattr(model, "spatial_dims", 2) == 3  # (B, 1, D, H, W) volumes (test doubles are 2-D)
        video = x.ndim == 5 and not volume  # (B, T, 3, S, S) clips
        enc = model.encode(x)
        post = enc.latent_dist
        if stats_source == "sample":
            if post is None:
                raise ValueError(f"family '{model.family}' is deterministic: use latent statistics of the mode")
            acc.update(post.sample(generator), post)
        else:
            acc.update(enc.latents.flatten(0, 1) if video else enc.latents, post)  # (B, n, C, h, w) -> (B*n, ...)
        labels.append(y)
        latents.append(enc.latents.float().flatten(1).cpu())  # (B, C, h, w) -> (B, C*h*w)
        if reconstruct:
            real = to_unit(to_model_range(images[1].to(device))) if paired else to_unit(x)
            fake = to_unit(model.decode(enc.latents).sample)
            t_out = fake.shape[1] if video else fake.shape[2] if volume else 1  # output frame j reconstructs input j
            if video:
                real, fake = real[:, :t_out].flatten(0, 1), fake.flatten(0, 1)  # -> (B*T', 3, S, S)
            if volume:  # scored per axial slice, then averaged per volume (MSE is then the volume's; PSNR below)
                real, fake = axial_slices(real), axial_slices(fake)  # -> (B*D, 3, H, W)
            scores = {
                "mse": metrics.mse(real, fake),
                "psnr": metrics.psnr(real, fake, y_channel=False),
                "psnr_baseline": metrics.psnr(real, constant_image(real), y_channel=False),
                "psnr_y_baseline": metrics.psnr(real, constant_image(real), y_channel=True),
            }
            if paired:  # as the restoration task validates: Y PSNR / SSIM and LPIPS of the 8-bit images (no crop)
                task = restoration_metrics(fake, real, lpips_model)
                scores |= {"psnr_y": task["psnr"], "ssim_y": task["ssim"]}
                scores |= {"lpips": task["lpips"]} if lpips_model is not None else {}
            else:
                scores["psnr_y"] = metrics.psnr(real, fake, y_channel=True)
                scores["ssim_y"] = metrics.ssim(real, fake, y_channel=True)
                if lpips_model is not None:
                    scores["lpips"] = metrics.lpips_distance(lpips_model, real, fake)
            per_item = {k: v.view(-1, t_out).mean(1) if t_out > 1 else v for k, v in scores.items()}  # clip / volume
            if volume:  # PSNR over the whole volume (the mean of its slices' PSNR rewards reproduced empty padding)
                per_item["psnr_slices"] = per_item["psnr"]
                per_item["psnr"] = metrics.psnr_from_mse(per_item["mse"])
            for name, value in per_item.items():
                per_image.setdefault(name, []).append(value.double().cpu())
            if features is not None:
                real_feats.append(features(real).double().cpu())
                fake_feats.append(features(fake).double().cpu())
            for j in range(len(x)):
                if start + j in keep:
                    f = j * t_out + (t_out // 2 if volume else 0)  # a clip's first frame, a volume's middle slice
                    kept = (real[f], fake[f], to_unit(x[j])) if paired else (real[f], fake[f])
                    examples[start + j] = tuple(t.cpu().numpy() for t in kept)
        start += len(x)
    return SplitResult(
        labels=torch.cat(labels).numpy().astype(np.int64),
        latents=torch.cat(latents).numpy(),
        stats=acc.result(),
        per_image={k: torch.cat(v).numpy() for k, v in per_image.items()},
        real_features=torch.cat(real_feats).numpy() if real_feats else None,
        fake_features=torch.cat(fake_feats).numpy() if fake_feats else None,
        examples=examples,
    )


def pick_examples(labels: Sequence[int], max_users: int = 6) -> list[int]:
    """Indices of the first image of up to ``max_users`` users, spread evenly over the label order."""
    first: dict[int, int] = {}
    for i, label in enumerate(labels):
        first.setdefault(int(label), i)
    users = sorted(first)
    if len(users) > max_users:
        users = [users[k] for k in np.linspace(0, len(users) - 1, max_users).round().astype(int)]
    return [first[u] for u in users]


class Evaluator:
    """Runs each split through the model at most once: encode-only, or with reconstruction and metrics.

    A reconstructed result also answers ``encoded`` for its split, so no image is encoded twice for the
    same purpose. Images come from step 4's decoded-image cache (``data.cache``: ``ram`` decodes them
    now, ``file`` reuses or builds ``<work_dir>/cache``).

    Args:
        model: the autoencoder.
        prepared: the dataset.
        image_size: the training image side.
        cache_mode: ``"ram"`` or ``"file"`` (the run's ``data.cache``).
        work_dir: the work directory (file cache).
        lpips_model, features: as ``evaluate_split``, used by ``evaluated``.
        kind: the data kind (``aetune.data.kinds``); ``pair`` serves (LQ, GT, label) items.
        **options: more ``evaluate_split`` arguments (batch_size, device, stats_source, seed, progress).
    """

    def __init__(
        self,
        model: Autoencoder,
        prepared: PreparedData,
        image_size: int,
        cache_mode: str,
        work_dir: Path,
        *,
        lpips_model: nn.Module | None = None,
        features: FeatureFn | None = None,
        kind: str = "image",
        **options: Any,
    ) -> None:
        self.kind = kind
        self.model, self.prepared, self.image_size = model, prepared, image_size
        self.cache_mode, self.work_dir = cache_mode, Path(work_dir)
        self.lpips_model, self.features = lpips_model, features
        self.options = options
        self._encoded: dict[str, SplitResult] = {}
        self._evaluated: dict[str, SplitResult] = {}

    def _images(self, split: str) -> np.ndarray:
        """(N, S, S, 3) uint8 images of ``split`` in ``prepared.split(split)`` order."""
        if split == "all":  # train then val, as PreparedData.split("all"); no third cache file
            return np.concatenate([self._images("train"), self._images("val")])
        if not self.prepared.split(split):
            return np.zeros((0, self.image_size, self.image_size, 3), np.uint8)
        progress = self.options.get("progress", True)
        if self.cache_mode == "file":
            build_file_cache(self.prepared, split, self.image_size, self.work_dir, progress=progress)
        return load_images(self.prepared, split, self.image_size, self.cache_mode, self.work_dir, progress=progress)

    def dataset(self, split: str) -> Dataset:
        """The ``split`` images as training saw them (same resize, no augmentation), in ``prepared.split`` order."""
        if self.kind != "image":
            from aetune.data.kinds import get_data_kind

            progress = self.options.get("progress", True)
            make = get_data_kind(self.kind).dataset
            return make(self.prepared, split, self.image_size, self.cache_mode, self.work_dir, progress)
        return CachedImages(self._images(split), [s.label for s in self.prepared.split(split)])

    def encoded(self, split: str) -> SplitResult | None:
        """Latents and statistics of ``split`` (``"train"``, ``"val"``, ``"all"``); None if it is empty."""
        if split in self._evaluated:
            return self._evaluated[split]
        if split not in self._encoded and self.prepared.split(split):
            self._encoded[split] = evaluate_split(
                self.model, self.dataset(split), reconstruct=False, desc=f"encoding {split}", **self.options
            )
        return self._encoded.get(split)

    def evaluated(self, split: str) -> SplitResult:
        """``encoded`` plus reconstructions, per-image metrics, rFID features and example images.

        Raises:
            AetuneError: the split is empty.
        """
        samples = self.prepared.split(split)
        if not samples:
            raise AetuneError(f"the {split} split has no images: choose another --split")
        if split not in self._evaluated:
            self._evaluated[split] = evaluate_split(
                self.model, self.dataset(split), lpips_model=self.lpips_model, features=self.features,
                keep_examples=pick_examples([s.label for s in samples]), desc=f"evaluating {split}", **self.options,
            )  # fmt: skip
        return self._evaluated[split]


def check_labels(meta: dict[str, Any], labels: dict[str, int], checkpoint: Path) -> None:
    """Refuse a checkpoint trained on other users than ``data/labels.json`` lists (per-user numbers would lie).

    Raises:
        AetuneError: naming both user sets and the fix.
    """
    if dict(meta["labels"]) != dict(labels):
        theirs, ours = list(meta["labels"]), list(labels)
        raise AetuneError(
            f"{checkpoint} was trained on {len(theirs)} users ({', '.join(theirs[:4])}, ...) but data/labels.json "
            f"lists {len(ours)} ({', '.join(ours[:4])}, ...): re-run step 3 on the training data, or use this "
            "dataset's checkpoint"
        )


def report_lpips(meta: dict[str, Any]) -> tuple[nn.Module | None, str | None]:
    """The pretrained LPIPS-VGG for the report, or None with the reason it is unavailable.

    A run trained without pretrained LPIPS (the demo preset) gets no LPIPS number at all: its figures
    must not suggest a perceptual quality that was never optimised or checked.
    """
    if meta.get("lpips") is False:
        return None, (
            "unavailable: this run trained without pretrained LPIPS weights (loss.lpips_pretrained false, "
            "demo preset); train with them to get an LPIPS score"
        )
    from aetune.losses import build_lpips

    try:
        return build_lpips(pretrained=True), None
    except AetuneError as e:  # build_lpips raises it only for the missing VGG16 file
        return None, f"unavailable: {e}"


def inception_features(weights: str | None, device: torch.device) -> tuple[nn.Module | None, str | None]:
    """The FID Inception extractor on ``device``, or None with the reason (missing or corrupt weights file)."""
    try:
        return metrics.InceptionFeatureExtractor(weights).to(device), None
    except WeightsUnavailable as e:
        return None, f"unavailable: {e}"
    except WeightCorrupt as e:  # the rest of the report is still worth writing; the table says why rFID is missing
        log.warning("WARNING: %s", e)
        return None, f"unavailable: {e}"


def quality_models(
    meta: dict[str, Any], work_dir: Path, inception_weights: str | None, device: torch.device
) -> tuple[nn.Module | None, str | None, nn.Module | None, str | None]:
    """(LPIPS model, why not, FID Inception extractor, why not) for step 5's metrics, from step 2's weights.

    Finding the recorded VGG16 links it into the torch hub cache, where ``lpips`` looks for it.
    """
    recorded_weight(work_dir, "lpips_vgg16")
    lpips_model, lpips_reason = report_lpips(meta)
    features, rfid_reason = inception_features(inception_weights or recorded_weight(work_dir, "fid_inception"), device)
    return lpips_model, lpips_reason, features, rfid_reason


def resolve_device(name: str | None) -> torch.device:
    """``--device`` as a torch device; None picks CUDA when it is available, else the CPU.

    Raises:
        AetuneError: not a device name, or a CUDA device this machine does not have.
    """
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise AetuneError(f"--device {name} is not a device name: use cpu, cuda or cuda:N") from e
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise AetuneError(
                f"--device {name}: no CUDA GPU is visible here (torch {torch.__version__}, {build}): "
                "use --device cpu, or leave --device out"
            )
        if device.index is not None and device.index >= count:
            raise AetuneError(f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    elif device.type != "cpu":
        raise AetuneError(f"--device {name}: only cpu and cuda devices are supported")
    return device
