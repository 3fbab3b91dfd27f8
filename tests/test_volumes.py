"""Volume data: scan and validation with reasons, reading, intensity normalisation, resampling, phantoms."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

nib = pytest.importorskip("nibabel")

from aetune.data.scan import natural_key  # noqa: E402
from aetune.data.split import content_score, split_records  # noqa: E402
from aetune.data.synthetic.phantoms import (  # noqa: E402
    generate_phantoms,
    phantom_path,
    render_phantom,
)
from aetune.data.volumes import (  # noqa: E402
    FLAT_GROUP,
    VolumeTransform,
    crop_or_pad,
    load_volume,
    normalize_intensity,
    resample_to_spacing,
    scan_volumes,
)
from aetune.errors import AetuneError, InvalidArgument  # noqa: E402


def blob(shape: tuple[int, ...] = (16, 16, 12), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(100.0, 20.0, shape).astype(np.float32)


def save_nifti(path: Path, data: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([*spacing, 1.0])), str(path))
    return path


def save_npy(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, data)
    return path


def test_scan_accepts_good_volumes_and_rejects_bad_ones_with_reasons(tmp_path: Path) -> None:
    root = tmp_path / "data"
    save_nifti(root / "healthy" / "a.nii.gz", blob(seed=1), spacing=(0.8, 0.8, 2.5))
    save_nifti(root / "healthy" / "b_4d.nii", blob(seed=2)[..., None])  # NIfTI (X, Y, Z, 1)
    save_npy(root / "healthy" / "c_first.npy", blob(seed=3)[None])  # torch order (1, D, H, W)
    (root / "lesion").mkdir()
    np.savez(root / "lesion" / "d.npz", volume=blob(seed=4), spacing=[2, 2, 3])
    save_nifti(root / "lesion" / "two_channels.nii.gz", np.stack([blob(seed=5), blob(seed=6)], axis=-1))
    save_npy(root / "lesion" / "two_channels.npy", np.stack([blob(seed=5), blob(seed=6)]))
    save_npy(root / "lesion" / "constant.npy", np.full((16, 16, 12), 7.0, np.float32))
    nan = blob(seed=7)
    nan[3, 4, 5] = np.nan
    save_nifti(root / "lesion" / "nan.nii.gz", nan)
    (root / "lesion" / "garbage.nii.gz").write_bytes(gzip.compress(b"not a nifti header" * 20))
    good = save_npy(root / "lesion" / "truncated.npy", blob(seed=8))
    good.write_bytes(good.read_bytes()[:300])
    save_npy(root / "lesion" / "small.npy", blob((16, 4, 16)))
    save_npy(root / "lesion" / "flat.npy", blob((16, 16)))
    np.savez(root / "lesion" / "two_arrays.npz", a=blob(), b=blob())
    (root / "lesion" / "notes.txt").write_text("scan protocol")
    (root / "lesion" / ".hidden.npy").write_bytes(b"")

    scan = scan_volumes(root, progress=False)
    assert scan.users == ["healthy", "lesion"]
    by_rel = {r.relpath: r for r in scan.accepted}
    assert sorted(by_rel) == ["healthy/a.nii.gz", "healthy/b_4d.nii", "healthy/c_first.npy", "lesion/d.npz"]
    a = by_rel["healthy/a.nii.gz"]
    assert a.shape == [16, 16, 12] and a.format == "nifti" and a.dtype == "float32" and a.user == "healthy"
    np.testing.assert_allclose(a.spacing, [0.8, 0.8, 2.5], rtol=1e-6)
    assert a.intensity_min == pytest.approx(float(blob(seed=1).min())) and a.intensity_max > a.intensity_min
    assert by_rel["lesion/d.npz"].spacing == [2.0, 2.0, 3.0] and by_rel["healthy/c_first.npy"].spacing == [1, 1, 1]
    reasons = {r["path"]: r["reason"] for r in scan.rejected}
    assert reasons["lesion/two_channels.nii.gz"].startswith("4-D volume (16, 16, 12, 2) with 2 channels")
    assert reasons["lesion/two_channels.npy"].startswith("4-D volume (2, 16, 16, 12) with 2 channels")
    assert reasons["lesion/constant.npy"] == "constant volume (every voxel is 7)"
    assert reasons["lesion/nan.nii.gz"].startswith("1 non-finite voxels")
    assert reasons["lesion/garbage.nii.gz"].startswith("unreadable or truncated .nii.gz file")
    assert reasons["lesion/truncated.npy"].startswith("unreadable or truncated .npy file")
    assert reasons["lesion/small.npy"] == "too small (16x4x16, minimum side 8 voxels)"
    assert reasons["lesion/flat.npy"] == "2-D array (16, 16): a volume needs 3 spatial axes"
    assert reasons["lesion/two_arrays.npz"].startswith("npz with 2 arrays (a, b)")
    assert reasons["lesion/notes.txt"].startswith("not a volume extension (.txt")
    assert reasons["lesion/.hidden.npy"] == "hidden (.hidden.npy)"


def test_the_hash_is_the_voxels_whatever_the_format(tmp_path: Path) -> None:
    data = blob(seed=9)
    save_nifti(tmp_path / "g" / "v.nii.gz", data, spacing=(3.0, 1.0, 1.0))
    save_npy(tmp_path / "g" / "v.npy", data)
    save_npy(tmp_path / "g" / "w.npy", blob(seed=10))
    hashes = {r.relpath: r.sha1 for r in scan_volumes(tmp_path, progress=False).accepted}
    assert hashes["g/v.nii.gz"] == hashes["g/v.npy"] != hashes["g/w.npy"]


def test_flat_folder_is_one_group_and_splits_like_images(tmp_path: Path) -> None:
    for i in range(10):
        save_npy(tmp_path / f"vol_{i}.npy", blob(seed=i))
    (tmp_path / "docs").mkdir()
    scan = scan_volumes(tmp_path, progress=False)
    assert scan.users == [FLAT_GROUP] and len(scan.accepted) == 10
    assert {r.user for r in scan.accepted} == {FLAT_GROUP} and scan.accepted[0].relpath == "vol_0.npy"
    assert scan.rejected == [{"path": "docs", "reason": "folder without volume files"}]
    train, val = split_records(scan.accepted, val_ratio=0.2, seed=3)
    drawn = sorted((r.relpath for r in scan.accepted if content_score(3, r.sha1) < 0.2), key=natural_key)
    assert val == (drawn or [min(scan.accepted, key=lambda r: content_score(3, r.sha1)).relpath])
    assert sorted(train + val) == sorted(r.relpath for r in scan.accepted)
    assert split_records(list(reversed(scan.accepted)), val_ratio=0.2, seed=3) == (train, val)


def test_no_usable_volume_is_one_error(tmp_path: Path) -> None:
    save_npy(tmp_path / "g" / "constant.npy", np.zeros((16, 16, 16), np.float32))
    with pytest.raises(AetuneError, match=r"no usable volume under .* \(1 files rejected\)"):
        scan_volumes(tmp_path, progress=False)
    with pytest.raises(AetuneError, match="does not exist"):
        scan_volumes(tmp_path / "missing", progress=False)


def test_normalize_intensity_clips_percentiles_to_minus_one_one() -> None:
    data = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    data[0, 0, 0] = 1e6  # one hot voxel must not squash the rest
    out = normalize_intensity(data, (1.0, 99.0))
    lo, hi = np.percentile(data, [1.0, 99.0])
    assert out.dtype == np.float32 and out.min() == -1.0 and out.max() == 1.0
    assert out[5, 0, 0] == pytest.approx((500 - lo) / (hi - lo) * 2 - 1, abs=1e-6)
    assert out[0, 0, 0] == 1.0 and out[0, 0, 1] == -1.0
    sparse = np.zeros((10, 10, 10), np.float32)
    sparse[4:6, 4:6, 4:6] = 5.0  # 0.8 % of voxels: both percentiles are 0, so min-max is used
    assert normalize_intensity(sparse)[5, 5, 5] == 1.0 and normalize_intensity(sparse)[0, 0, 0] == -1.0
    with pytest.raises(ValueError, match="0 <= low < high <= 100"):
        normalize_intensity(data, (50.0, 10.0))


def test_unclipped_intensity_is_monai_tutorials_mapping(tmp_path: Path) -> None:
    """``clip=False`` with (0, 99.5): MONAI's ScaleIntensityRangePercentilesd(0, 99.5, 0, 1) without clipping,
    mapped to [-1, 1]: the minimum is -1, the 99.5th percentile 1, brighter voxels above 1; served as such."""
    data = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    out = normalize_intensity(data, (0.0, 99.5), clip=False)
    hi = np.percentile(data, 99.5)
    assert out.dtype == np.float32 and out.min() == -1.0
    assert out[9, 9, 9] == pytest.approx(999 / hi * 2 - 1, abs=1e-6) and out[9, 9, 9] > 1.0
    np.testing.assert_allclose(out, data / hi * 2 - 1, atol=1e-5)
    from aetune.data.kinds.volume import _load
    from aetune.data.volumes import transform_from_args

    args = type("Args", (), {"volume_percentiles": "0,99.5", "volume_clip": "off", "volume_spacing": None,
                             "volume_shape": None})()  # fmt: skip
    transform = transform_from_args(args)
    assert transform == VolumeTransform((0.0, 99.5), None, None, clip=False)
    served = _load(save_npy(tmp_path / "v.npy", data), transform, (10, 10, 10))
    assert served.dtype == np.float16 and float(served.max()) > 1.0  # not clipped on the way to the batch


def test_resample_and_crop_or_pad() -> None:
    data = blob((20, 16, 10))
    assert resample_to_spacing(data, (1.0, 1.0, 3.0), (2.0, 2.0, 1.5)).shape == (10, 8, 20)
    same = resample_to_spacing(data, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(same, data)
    ramp = np.arange(6, dtype=np.float32)[:, None, None] * np.ones((6, 4, 4), np.float32)
    out = crop_or_pad(ramp, (4, 6, 4))
    assert out.shape == (4, 6, 4)
    np.testing.assert_array_equal(out[:, 2, 0], [1, 2, 3, 4])  # centre crop along D
    np.testing.assert_array_equal(out[0, :, 0], [-1, 1, 1, 1, 1, -1])  # centre pad along H with -1


def test_volume_transform_end_to_end(tmp_path: Path) -> None:
    path = save_nifti(tmp_path / "v.nii.gz", blob((20, 20, 10)), spacing=(1.0, 1.0, 2.0))
    out = VolumeTransform(spacing=(1.0, 1.0, 1.0), shape=(16, 16, 16))(load_volume(path))
    assert out.shape == (16, 16, 16) and out.dtype == np.float32
    assert out.min() >= -1.0 and out.max() <= 1.0 and out.max() == 1.0


def test_phantoms_are_deterministic_and_classes_differ(tmp_path: Path) -> None:
    a = generate_phantoms(tmp_path / "a", num_classes=3, volumes_per_class=2, shape=(24, 24, 16), progress=False)
    b = generate_phantoms(tmp_path / "b", num_classes=3, volumes_per_class=2, shape=(24, 24, 16), progress=False)
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*.nii.gz"))
    assert len(files) == 6 and files[0] == "class_0/phantom_0000.nii.gz"
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    np.testing.assert_array_equal(render_phantom(1, 0, (24, 24, 16)), load_volume(a / files[2]).data)
    assert not np.array_equal(render_phantom(1, 0, (24, 24, 16), seed=1), render_phantom(1, 0, (24, 24, 16)))
    # Bright voxels in the central cube (inside the brain, clear of the skull) are lesions: class k has k.
    bright = [
        sum(int((render_phantom(k, i, (32, 32, 32))[11:21, 11:21, 11:21] > 0.75).sum()) for i in range(4))
        for k in range(3)
    ]
    assert bright[0] == 0 < bright[1] < bright[2]
    scan = scan_volumes(a, progress=False)
    assert scan.users == ["class_0", "class_1", "class_2"] and len(scan.accepted) == 6
    assert generate_phantoms(a, num_classes=3, volumes_per_class=2, shape=(24, 24, 16), progress=False) == a
    with pytest.raises(InvalidArgument, match=r"other parameters \(seed differ\)"):
        generate_phantoms(a, num_classes=3, volumes_per_class=2, shape=(24, 24, 16), seed=1, progress=False)


def test_phantoms_as_npy(tmp_path: Path) -> None:
    out = generate_phantoms(tmp_path, num_classes=1, volumes_per_class=1, shape=(8, 8, 8), file_format="npy")
    np.testing.assert_array_equal(np.load(phantom_path(out, 0, 0, "npy")), render_phantom(0, 0, (8, 8, 8)))
    with pytest.raises(InvalidArgument, match="file_format must be one of nii.gz, npy"):
        generate_phantoms(tmp_path / "x", file_format="mha")


def test_volume_kind_serves_the_stage_resolution_from_ram_and_file(tmp_path: Path) -> None:
    from aetune.data.kinds.volume import prepare_volume_cache, prepare_volume_dataset, stage_shape, volume_dataset
    from aetune.data.prepared import load_prepared

    root = generate_phantoms(tmp_path / "p", 2, 3, (20, 20, 12), file_format="npy", progress=False)
    work = tmp_path / "work"
    summary = prepare_volume_dataset(root, work, "ph", 0.3, transform=VolumeTransform(shape=(16, 16, 8)))
    assert [r[0] for r in summary.rows] == ["class_0", "class_1"] and summary.rejected == 0  # not phantoms.json
    doc = json.loads((work / "data" / "dataset.json").read_text())
    assert doc["kind"] == "volume" and doc["volume"]["shape"] == [16, 16, 8]
    want = {"percentiles": [0.5, 99.5], "spacing": None, "shape": [16, 16, 8], "clip": True}
    assert doc["volume"]["transform"] == want
    prepared = load_prepared(work)
    assert stage_shape((256, 256, 64), 128) == (128, 128, 32)
    ram = volume_dataset(prepared, "train", 16, "ram", work, False)
    x, label = ram[0]
    assert x.shape == (1, 16, 16, 8) and x.dtype == torch.float16 and label == prepared.train[0].label
    assert volume_dataset(prepared, "train", 8, "ram", work, False)[0][0].shape == (1, 8, 8, 4)
    with pytest.raises(AetuneError, match="cached volumes are missing"):
        volume_dataset(prepared, "train", 16, "file", work, False)
    prepare_volume_cache(prepared, "train", 16, work, False)
    cached = volume_dataset(prepared, "train", 16, "file", work, False)
    assert all(torch.equal(cached[i][0], ram[i][0]) for i in range(len(ram)))


def test_volumes_of_several_shapes_need_a_target_shape(tmp_path: Path) -> None:
    from aetune.data.kinds.volume import prepare_volume_dataset

    save_npy(tmp_path / "d" / "g" / "a.npy", blob((16, 16, 12)))
    save_npy(tmp_path / "d" / "g" / "b.npy", blob((16, 16, 10), seed=1))
    with pytest.raises(AetuneError, match=r"2 shapes after resampling .* pass --volume_shape D,H,W"):
        prepare_volume_dataset(tmp_path / "d", tmp_path / "w", "x", 0.3, progress=False)
    assert not (tmp_path / "w" / "data").exists()


def test_step3_synthetic_phantoms(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, str(root / "step3_prepare_dataset.py"), "--synthetic", "phantoms", "--output_dir",
           str(tmp_path), "--phantom_shape", "16,16,8", "--phantoms_per_class", "3", "--volume_spacing", "1,1,0.5",
           "--name", "ph", "--val_ratio", "0.3", "--no_progress"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads((tmp_path / "data" / "dataset.json").read_text())
    assert doc["volume"]["shape"] == [16, 16, 16] and doc["num_images"] == 6  # 8 slices of 1 -> 16 of 0.5
    bad = subprocess.run([*cmd, "--volume_percentiles", "99,1"], capture_output=True, text=True, cwd=root, timeout=300)
    assert bad.returncode == 2 and "error: --volume_percentiles takes LOW,HIGH" in bad.stderr
