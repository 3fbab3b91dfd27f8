"""The latents of every image in LightningDiT's latent-dataset format, so its DiT trains on them unchanged.

LightningDiT's ``extract_features.py`` writes ``latents_rank{RR}_shard{SSS}.safetensors`` files of about
10,000 images, each holding ``latents`` (N, C, h, w) float32, ``latents_flip`` (the same images flipped
horizontally) and ``labels`` (N,) int64, and its ``datasets/img_latent_dataset.py`` (``ImgLatentDataset``)
reads every ``*.safetensors`` of the folder in sorted order, picks ``latents`` or ``latents_flip`` at
random per item, and normalises with ``latents_stats.pt`` = ``{"mean", "std"}``, each (1, C, 1, 1),
``latents.mean / .std(dim=[0, 2, 3], keepdim=True)`` over the stored ``latents``.

What differs here, and why:
- Images are resized exactly as training saw them (step 4's cache: bicubic, whole image), not centre-cropped.
- No flip: a horizontal flip reverses time in a spectrogram. ``ImgLatentDataset`` still reads
  ``latents_flip`` half of the time, so it must exist: it holds a second, independent posterior sample of
  the same unflipped image (``source="sample"``; LightningDiT's two keys also differ by an independent
  draw, we keep that and drop the flip), or the same posterior mean (``source="mode"``).
- Labels are the user labels of ``data/labels.json`` (class-conditional DiT), not ImageFolder's.
- ``latents_stats.pt`` is computed from all stored ``latents`` (LightningDiT samples 10,000 of them).
- ``latents_index.json`` beside the shards says which image each row is (ignored by ``ImgLatentDataset``).
- Volumes (``kind: volume``) are stored the same way with latents (N, C, d, h, w), for a 3-D DiT; restoration
  pairs and video clips get no latent dataset (``unsupported_reason`` says why).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from aetune.data.prepared import Sample
from aetune.data.video import VideoClips
from aetune.errors import AetuneError
from aetune.evaluate.evaluator import model_input
from aetune.evaluate.latent_stats import LATENT_SOURCES, LatentStatistics, LatentStatsAccumulator
from aetune.io import atomic_path, atomic_torch_save, atomic_write_json
from aetune.models.base import Autoencoder
from aetune.models.loading import lightningdit_writer
from aetune.optional import require

log = logging.getLogger(__name__)

LATENTS_DIR = "latents"
"""Step 5 writes the latent dataset to ``results/latents/`` (point LightningDiT's ``data.data_path`` there)."""
SHARD_IMAGES = 10_000
"""Images per shard, as LightningDiT's ``extract_features.py`` (10000 // batch_size batches)."""
STATS_FILE = "latents_stats.pt"
INDEX_FILE = "latents_index.json"
DEFAULT_SOURCE = "sample"
"""LightningDiT stores ``posterior.sample()`` (``tokenizer/vavae.py`` ``encode_images``)."""
UNSUPPORTED_KINDS = {
    "pair": "a restoration run maps degraded inputs to clean targets, so there is no image set for a "
    "class-conditional DiT to learn (the encoder is still exported by --export)",
}
"""Data kind -> why its runs get no latent dataset (``image``, ``volume`` and ``video`` runs get one: a row per
image, volume or clip)."""


def unsupported_reason(kind: str) -> str | None:
    """Why a run of data kind ``kind`` gets no latent dataset, or None when it gets one."""
    return UNSUPPORTED_KINDS.get(kind)


STEP5_PARTS = ("metrics", "figures", "latent_stats", "export", "export_latents")
"""Step 5's parts, each a flag of its own (``--all``: every one that applies)."""


def step5_parts(named: set[str], everything: bool, kind: str, family: str) -> tuple[set[str], dict[str, str]]:
    """The step 5 parts to run for a run of data ``kind`` and ``family``, and what is skipped (label -> why).

    Args:
        named: the parts given as flags; none (or ``everything``, ``--all``) means every part that applies.

    Raises:
        AetuneError: a part named on its own does not apply to this data kind.
    """
    wanted = set(STEP5_PARTS) if everything or not named else set(named)
    skipped = {}
    reason = unsupported_reason(kind)
    if reason is not None and "export_latents" in wanted:
        if "export_latents" in named and not everything:
            raise AetuneError(f"--export_latents does not apply to this {kind} run: {reason}")
        wanted.discard("export_latents")
        skipped["--export_latents"] = f"{kind} data: {reason}"
    if "export" in wanted and lightningdit_writer(family) is None:
        skipped["--export's *_lightningdit.pt"] = f"LightningDiT's tokenizer cannot load a {family} model"
    return wanted, skipped


def shard_name(index: int, rank: int = 0) -> str:
    """``latents_rank00_shard000.safetensors``: LightningDiT's name (the sorted order is the image order)."""
    return f"latents_rank{rank:02d}_shard{index:03d}.safetensors"


@dataclass(frozen=True)
class LatentDatasetInfo:
    """What ``write_latent_dataset`` wrote.

    Attributes:
        folder: the dataset folder.
        shards: the shard files, in order.
        stats: statistics of the stored ``latents`` (``latents_stats.pt`` is ``stats.lightningdit_stats()``).
        num_images: rows over all shards.
    """

    folder: Path
    shards: list[Path]
    stats: LatentStatistics
    num_images: int


def _save_shard(path: Path, latents: list[Tensor], second: list[Tensor], labels: list[Tensor], source: str) -> Path:
    """One shard: ``latents``, ``latents_flip`` (N, C, h, w) [clips: (N, n, C, h, w)] float32, ``labels`` (N,)
    int64, LightningDiT's metadata."""
    save_file = require("safetensors.torch", "--export_latents").save_file
    z = torch.cat(latents).contiguous()
    tensors = {"latents": z, "latents_flip": torch.cat(second).contiguous(), "labels": torch.cat(labels).contiguous()}
    flip = "a second posterior sample, not flipped" if source == "sample" else "the posterior mean again, not flipped"
    metadata = {
        "total_size": str(z.shape[0]),
        "dtype": str(z.dtype),
        "device": str(z.device),
        "latents": "posterior sample" if source == "sample" else "posterior mean",
        "latents_flip": flip,
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def item_sources(dataset: Dataset) -> list[tuple[int, int | None]]:
    """(file index, first frame) of each item: clips of ``VideoClips`` come from their video, other items are
    their file (first frame None)."""
    if isinstance(dataset, VideoClips):
        return [(v, start) for v, start in dataset.index]
    return [(i, None) for i in range(len(dataset))]  # type: ignore[arg-type]


def _check_items(
    dataset: Dataset, sources: Sequence[tuple[int, int | None]], samples: Sequence[Sample], splits: Sequence[str]
) -> None:
    """Refuse what is not ``(image, volume or clip, label)`` items of the given files and splits, naming what came.

    Raises:
        AetuneError: no items, items of another shape, or items of files the samples do not list.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise AetuneError("no images to export: the dataset is empty")
    width = len(dataset[0])  # type: ignore[index]
    if width != 2:
        raise AetuneError(
            f"the latent dataset takes (image, label) items; these have {width} parts (paired LQ/GT data?): "
            "export the encoder with --export instead"
        )
    files = max(f for f, _ in sources) + 1
    if (
        len(samples) != len(splits)
        or files > len(samples)
        or (len(samples) != n and not isinstance(dataset, VideoClips))
    ):
        raise AetuneError(
            f"{n} items of {files} files for {len(samples)} files and {len(splits)} split names: the latent dataset "
            "stores one row per image or volume (per clip for videos) of the listed files"
        )


@torch.inference_mode()
def write_latent_dataset(
    folder: str | Path,
    model: Autoencoder,
    dataset: Dataset,
    samples: Sequence[Sample],
    *,
    splits: Sequence[str],
    source: str | None = None,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    seed: int = 0,
    shard_images: int = SHARD_IMAGES,
    info: dict[str, Any] | None = None,
    progress: bool = True,
) -> LatentDatasetInfo:
    """Encode every image of ``dataset`` and write shards, ``latents_stats.pt`` and ``latents_index.json``.

    Args:
        folder: an empty (or new) folder.
        model: the autoencoder; put in eval mode on ``device``.
        dataset: items ``(image (3, S, S) uint8, label)`` at the training size (``Evaluator.dataset``),
            ``(volume (1, D, H, W) float in [-1, 1], label)``, or ``VideoClips`` items ``(clip (T, 3, S, S) uint8,
            label)``: one row per clip, with its video and first frame in the index.
        samples: the file behind each item (clips: each video), in order (for the index).
        splits: the split of each file (``"train"`` / ``"val"``), in order.
        source: ``"sample"`` (LightningDiT's choice), ``"mode"`` (the posterior mean), or None: ``sample`` for
            families with a posterior, ``mode`` (their deterministic latents) for the others (RAE, tiny).
        batch_size: images per forward pass.
        device: where the model runs.
        seed: seeds the posterior samples (a re-run writes the same latents).
        shard_images: rows per shard (10,000 as LightningDiT; small in tests).
        info: provenance written into the index.
        progress: show a tqdm bar.

    Raises:
        AetuneError: unknown source, a deterministic family asked for samples, no images, items that are not
            ``(image, label)`` or not one per sample (pairs, clips).
    """
    if source is not None and source not in LATENT_SOURCES:
        raise AetuneError(f"latent source must be one of {', '.join(LATENT_SOURCES)}, got '{source}'")
    sources = item_sources(dataset)
    _check_items(dataset, sources, samples, splits)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    model.eval().to(device)
    if source is None:  # LightningDiT's posterior samples where there is a posterior, else the latents themselves
        first = model_input(dataset[0][0][None].to(device))  # type: ignore[index]
        source = DEFAULT_SOURCE if model.encode(first).latent_dist is not None else "mode"
    generator = torch.Generator(device=device).manual_seed(seed)
    acc = LatentStatsAccumulator(source)
    shards: list[Path] = []
    rows: list[dict[str, Any]] = []
    buf: tuple[list[Tensor], list[Tensor], list[Tensor]] = ([], [], [])
    buffered = 0
    loader = DataLoader(dataset, batch_size=batch_size)
    for images, y in tqdm(loader, desc="exporting latents", unit="batch", disable=not progress):
        enc = model.encode(model_input(images.to(device)))  # (B, 3, S, S) uint8 or volumes -> [-1, 1] -> latents
        post = enc.latent_dist
        if source == "sample":
            if post is None:
                raise AetuneError(f"family '{model.family}' is deterministic: export with --export_source mode")
            z, z2 = post.sample(generator), post.sample(generator)  # two independent draws, (B, C, h, w)
        else:
            z = z2 = enc.latents
        z, z2 = z.float().cpu(), z2.float().cpu()
        acc.update(z, post)  # the statistics describe exactly the stored ``latents``
        for _ in range(len(z)):
            i = len(rows)
            f, first_frame = sources[i]
            s = samples[f]
            shard, row = divmod(i, shard_images)
            rows.append({"index": i, "shard": shard_name(shard), "row": row, "relpath": s.relpath, "user": s.user,
                         "label": s.label, "split": splits[f]}
                        | ({} if first_frame is None else {"first_frame": first_frame}))  # fmt: skip
        start = 0
        while start < len(z):  # a batch may straddle two shards
            take = min(len(z) - start, shard_images - buffered)
            for part, t in zip(buf, (z, z2, y.to(torch.int64)), strict=True):
                part.append(t[start : start + take])
            buffered += take
            start += take
            if buffered == shard_images:
                shards.append(_save_shard(out / shard_name(len(shards)), *buf, source))
                buf, buffered = ([], [], []), 0
    if buffered:
        shards.append(_save_shard(out / shard_name(len(shards)), *buf, source))
    stats = acc.result()
    atomic_torch_save(stats.lightningdit_stats(), out / STATS_FILE)
    atomic_write_json(
        out / INDEX_FILE,
        {
            "format": "LightningDiT ImgLatentDataset (safetensors shards + latents_stats.pt)",
            "latents": "posterior sample" if source == "sample" else "posterior mean",
            "latents_flip": "a second posterior sample of the same unflipped image (no flip: it would reverse time)"
            if source == "sample"
            else "the posterior mean again (no flip: it would reverse time)",
            "seed": seed,
            "latent_shape": list(stats.latent_shape),
            "num_images": len(rows),
            "stats": f"{STATS_FILE}: mean, unbiased std of all stored 'latents' over (N, h, w): (1, C, 1, 1)",
            **(info or {}),
            "images": rows,
        },
    )
    log.info("latent dataset: %d images in %d shard(s), %s latents, in %s", len(rows), len(shards), source, out)
    return LatentDatasetInfo(out, shards, stats, len(rows))
