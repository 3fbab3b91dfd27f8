"""The latent-dataset export read back the way LightningDiT's ImgLatentDataset reads it."""

from __future__ import annotations

import json
import os
from glob import glob
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from aetune.data.cache import CachedImages
from aetune.data.prepared import Sample
from aetune.data.video import VideoClips
from aetune.errors import AetuneError
from aetune.evaluate.latent_dataset import INDEX_FILE, STATS_FILE, shard_name, unsupported_reason, write_latent_dataset
from aetune.models import create_autoencoder, get_family


class ImgLatentDatasetReader:
    """LightningDiT's datasets/img_latent_dataset.py reading logic, re-written from its code (not imported).

    Sorted ``*.safetensors`` of the folder; row counts from the ``labels`` slice; an item is ``latents`` or
    ``latents_flip`` (chosen at random there, by argument here) normalised with ``latents_stats.pt``.
    """

    def __init__(self, data_dir: Path) -> None:
        self.files = sorted(glob(os.path.join(data_dir, "*.safetensors")))
        self.rows: list[tuple[str, int]] = []
        for f in self.files:
            with safe_open(f, framework="pt", device="cpu") as h:
                self.rows += [(f, i) for i in range(h.get_slice("labels").get_shape()[0])]
        stats = torch.load(os.path.join(data_dir, "latents_stats.pt"))  # LightningDiT: plain torch.load
        self.mean, self.std = stats["mean"], stats["std"]

    def __len__(self) -> int:
        return len(self.rows)

    def item(self, idx: int, key: str = "latents") -> tuple[torch.Tensor, torch.Tensor]:
        f, i = self.rows[idx]
        with safe_open(f, framework="pt", device="cpu") as h:
            feature, label = h.get_slice(key)[i : i + 1], h.get_slice("labels")[i : i + 1]
        feature = (feature - self.mean) / self.std
        return feature.squeeze(0), label.squeeze(0)


def _data(n: int, size: int = 32) -> tuple[CachedImages, list[Sample], list[str]]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = [i % 3 for i in range(n)]
    samples = [Sample(f"ID_{y}/img_{i}.png", f"ID_{y}", y) for i, y in enumerate(labels)]
    return CachedImages(images, labels), samples, ["train" if i < n - 2 else "val" for i in range(n)]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_autoencoder("vavae", **get_family("vavae").tiny).eval()


@pytest.mark.parametrize("source", ["sample", "mode"])
def test_lightningdit_reader_loads_the_export(tmp_path: Path, model: torch.nn.Module, source: str) -> None:
    dataset, samples, splits = _data(7)
    info = write_latent_dataset(
        tmp_path, model, dataset, samples, splits=splits, source=source, batch_size=3, shard_images=3, progress=False
    )
    assert [p.name for p in info.shards] == [shard_name(i) for i in range(3)]  # 3 + 3 + 1 rows; batches straddle
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*(p.name for p in info.shards), STATS_FILE, INDEX_FILE]
    )

    reader = ImgLatentDatasetReader(tmp_path)
    assert len(reader) == 7
    with torch.no_grad():
        x = torch.from_numpy(dataset.images).permute(0, 3, 1, 2).float() / 127.5 - 1
        enc = model.encode(x)
    c, h, w = enc.latents.shape[1:]
    stored = torch.cat([safe_open(f, "pt").get_tensor("latents") for f in reader.files])
    flips = torch.cat([safe_open(f, "pt").get_tensor("latents_flip") for f in reader.files])
    labels = torch.cat([safe_open(f, "pt").get_tensor("labels") for f in reader.files])
    assert stored.dtype == flips.dtype == torch.float32 and labels.dtype == torch.int64
    assert labels.tolist() == [s.label for s in samples]
    for idx in (0, 4, 6):
        for key in ("latents", "latents_flip"):
            feature, label = reader.item(idx, key)
            assert feature.shape == (c, h, w) and int(label) == samples[idx].label

    # The statistics are torch's mean/std over exactly the stored latents (LightningDiT's compute_latent_stats).
    mean, std = stored.mean(dim=[0, 2, 3], keepdim=True), stored.std(dim=[0, 2, 3], keepdim=True)
    assert reader.mean.shape == reader.std.shape == (1, c, 1, 1) and reader.mean.dtype == torch.float32
    torch.testing.assert_close(reader.mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(reader.std, std, rtol=1e-5, atol=1e-6)

    if source == "mode":  # the posterior mean, and no flip: latents_flip is the same unflipped latent
        torch.testing.assert_close(stored, enc.latents, rtol=1e-5, atol=1e-5)
        assert torch.equal(flips, stored)
    else:  # two independent posterior draws of the unflipped image, around its mean
        assert not torch.equal(flips, stored)
        mirrored = model.encode(x.flip(-1)).latents
        assert (stored - enc.latents).abs().mean() < (stored - mirrored).abs().mean()
        assert (flips - enc.latents).abs().mean() < (flips - mirrored).abs().mean()

    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert index["num_images"] == 7 and [r["relpath"] for r in index["images"]] == [s.relpath for s in samples]
    assert index["images"][4] == {
        "index": 4, "shard": shard_name(1), "row": 1, "relpath": "ID_1/img_4.png", "user": "ID_1", "label": 1,
        "split": "train",
    }  # fmt: skip


def test_samples_are_seeded_and_sources_checked(tmp_path: Path, model: torch.nn.Module) -> None:
    dataset, samples, splits = _data(4)
    a = write_latent_dataset(tmp_path / "a", model, dataset, samples, splits=splits, seed=3, progress=False)
    b = write_latent_dataset(tmp_path / "b", model, dataset, samples, splits=splits, seed=3, progress=False)
    assert len(a.shards) == len(b.shards) == 1
    for key in ("latents", "latents_flip", "labels"):
        assert torch.equal(safe_open(a.shards[0], "pt").get_tensor(key), safe_open(b.shards[0], "pt").get_tensor(key))
    with pytest.raises(AetuneError, match="latent source must be one of"):
        write_latent_dataset(tmp_path / "c", model, dataset, samples, splits=splits, source="mean", progress=False)


def test_volumes_are_encoded_as_served_and_pairs_are_refused(tmp_path: Path) -> None:
    pytest.importorskip("monai")
    torch.manual_seed(0)
    kl3d = create_autoencoder("kl3d", **get_family("kl3d").tiny).eval()
    volumes = torch.rand(3, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1  # float, [-1, 1]
    items = [(v, 0) for v in volumes]
    samples = [Sample(f"ID_0/vol_{i}.npy", "ID_0", 0) for i in range(3)]
    info = write_latent_dataset(
        tmp_path / "vol", kl3d, items, samples, splits=["train"] * 3, source="mode", progress=False
    )
    with torch.no_grad():
        want = kl3d.encode(volumes).latents  # (3, C, d, h, w): the volumes as they are, not rescaled as uint8
    torch.testing.assert_close(safe_open(info.shards[0], "pt").get_tensor("latents"), want)
    pairs = [(torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(3, 8, 8, dtype=torch.uint8), 0)]
    with pytest.raises(AetuneError, match=r"\(image, label\) items; these have 3 parts"):
        write_latent_dataset(tmp_path / "pair", kl3d, pairs, samples[:1], splits=["train"], progress=False)
    assert unsupported_reason("image") is None and unsupported_reason("volume") is None
    assert "restoration" in unsupported_reason("pair") and unsupported_reason("video") is None


def test_video_latents_are_one_row_per_clip_with_its_video_and_first_frame(tmp_path: Path) -> None:
    clips_per_video = (2, 1, 3)  # cached frames 8, 4, 12 at 4 frames a clip (a tail shorter than a clip is left out)
    files = []
    rng = np.random.default_rng(2)
    for v, n in enumerate(clips_per_video):
        files.append(tmp_path / f"v{v}.npy")
        np.save(files[-1], rng.integers(0, 256, (4 * n + (v == 0), 16, 16, 3), dtype=np.uint8))
    clips = VideoClips(files, [0, 1, 0], frames=4)
    samples = [Sample(f"ID_{y}/v{v}.mp4", f"ID_{y}", y) for v, y in enumerate([0, 1, 0])]
    torch.manual_seed(0)
    taehv = create_autoencoder("taehv", **get_family("taehv").tiny).eval()
    info = write_latent_dataset(
        tmp_path / "lat", taehv, clips, samples, splits=["train", "train", "val"], progress=False
    )
    index = json.loads((tmp_path / "lat" / INDEX_FILE).read_text())
    rows = [(r["relpath"], r["first_frame"], r["split"]) for r in index["images"]]
    assert rows == [("ID_0/v0.mp4", 0, "train"), ("ID_0/v0.mp4", 4, "train"), ("ID_1/v1.mp4", 0, "train"),
                    ("ID_0/v2.mp4", 0, "val"), ("ID_0/v2.mp4", 4, "val"), ("ID_0/v2.mp4", 8, "val")]  # fmt: skip
    stored = safe_open(info.shards[0], "pt").get_tensor("latents")
    with torch.no_grad():
        want = taehv.encode(clips[4][0][None].float() / 127.5 - 1).latents[0]  # the 5th clip: v2 from frame 4
    assert stored.shape == (6, *want.shape) and want.shape[0] == 1  # (clips, latent frames, C, h, w): 4 -> 1
    torch.testing.assert_close(stored[4], want)
    assert safe_open(info.shards[0], "pt").get_tensor("labels").tolist() == [0, 0, 1, 0, 0, 0]
