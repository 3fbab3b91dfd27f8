"""Paired LQ/GT data: pairing by name, every rejection reason, per-type split, --val_root, the synthetic set."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aetune.data.images import load_rgb
from aetune.data.paired import (
    FLAT_TYPE,
    VAL_PREFIX,
    load_paired,
    per_type_subset,
    prepare_paired_dataset,
    scan_pairs,
)
from aetune.data.prepared import PreparedData, data_dir
from aetune.data.synthetic.paired import DEGRADATIONS, generate_paired_dataset, render_pair
from aetune.errors import AetuneError
from aetune.io import read_json
from tests.conftest import write_png


def _pairs(folder: Path, n: int, seed: int, size: int = 32, lq_ext: str = ".png") -> None:
    """``folder/{LQ,GT}/p_<i>`` : n pairs, GT random, LQ a different random image of one size."""
    for i in range(n):
        write_png(folder / "GT" / f"p_{i:02d}.png", seed=seed * 1000 + i, size=size)
        write_png(folder / "LQ" / f"p_{i:02d}{lq_ext}", seed=seed * 1000 + 500 + i, size=size)


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """Two types (Blur: 6 good pairs, Noise: 4 with a jpg LQ) plus one of every defect."""
    root = tmp_path / "wrapper" / "restore"
    _pairs(root / "Blur", 6, seed=1)
    _pairs(root / "Noise", 4, seed=2, lq_ext=".jpg")
    b = root / "Blur"
    write_png(b / "LQ" / "lonely_lq.png", seed=90)
    write_png(b / "GT" / "lonely_gt.png", seed=91)
    write_png(b / "LQ" / "twice.png", seed=92)
    write_png(b / "LQ" / "twice.jpg", seed=93)
    write_png(b / "GT" / "twice.png", seed=94)
    write_png(b / "LQ" / "sizes.png", seed=95, size=16)
    write_png(b / "GT" / "sizes.png", seed=96, size=32)
    write_png(b / "LQ" / "broken.png", seed=97)
    (b / "GT" / "broken.png").write_bytes(b"not a png")
    shutil.copy(b / "GT" / "p_00.png", b / "LQ" / "same.png")
    shutil.copy(b / "GT" / "p_00.png", b / "GT" / "same.png")  # also a second pair with p_00's GT
    (b / "LQ" / "notes.txt").write_text("x")
    (b / "GT" / ".DS_Store").write_bytes(b"\0")
    (b / "readme.md").write_text("x")
    (root / "Empty").mkdir()
    (root / "OnlyLQ" / "LQ").mkdir(parents=True)
    write_png(root / "OnlyLQ" / "LQ" / "a.png", seed=98)
    (root / "top.png").write_bytes(b"x")
    return tmp_path / "wrapper"


def test_every_defect_has_its_reason(messy: Path) -> None:
    scan = scan_pairs(messy, progress=False)
    assert scan.root.name == "restore" and scan.layout == "types"  # through the wrapper folder
    reasons = {r["path"]: r["reason"] for r in scan.rejected}
    assert reasons["Blur/LQ/lonely_lq.png"].startswith("unpaired: no GT/lonely_lq.*")
    assert reasons["Blur/GT/lonely_gt.png"].startswith("unpaired: no LQ/lonely_gt.*")
    for p in ("Blur/LQ/twice.png", "Blur/LQ/twice.jpg", "Blur/GT/twice.png"):
        assert reasons[p].startswith("ambiguous name 'twice'")
    assert reasons["Blur/LQ/sizes.png"].startswith("size mismatch: LQ 16x16, GT 32x32")
    assert reasons["Blur/GT/sizes.png"] == reasons["Blur/LQ/sizes.png"]
    assert reasons["Blur/GT/broken.png"].startswith("not a decodable image")
    assert reasons["Blur/LQ/broken.png"].startswith("its GT partner was rejected (not a decodable image")
    assert reasons["Blur/LQ/notes.txt"].startswith("not an image extension")
    assert reasons["Blur/GT/.DS_Store"].startswith("hidden")
    assert reasons["Blur/readme.md"] == "outside LQ/ and GT/"
    assert reasons["Empty"].startswith("folder without LQ/ or GT/")
    assert reasons["OnlyLQ/LQ/a.png"].startswith("unpaired: no GT/a.*")
    assert reasons["top.png"] == "file outside any degradation folder"
    assert scan.types == ["Blur", "Noise"]
    accepted = {r.relpath: r for r in scan.accepted}
    assert len(accepted) == 6 + 1 + 4  # the good pairs and 'same'
    assert accepted["Noise/GT/p_03.png"].lq == "Noise/LQ/p_03.jpg"  # any extension on either side
    assert accepted["Blur/GT/p_02.png"].user == "Blur"
    assert scan.notes == [{"path": "Blur/GT/same.png", "reason": "LQ identical to GT: nothing to restore"}]


def test_resize_option_accepts_mismatched_sizes(messy: Path) -> None:
    scan = scan_pairs(messy, resize_mismatched=True, progress=False)
    r = next(r for r in scan.accepted if r.relpath == "Blur/GT/sizes.png")
    assert (r.width, r.height, r.lq_width, r.lq_height) == (32, 32, 16, 16)


def test_flat_layout_and_no_pairs(tmp_path: Path) -> None:
    _pairs(tmp_path / "flat", 3, seed=4)
    scan = scan_pairs(tmp_path / "flat", progress=False)
    assert scan.layout == "flat" and scan.types == [FLAT_TYPE]
    assert [r.relpath for r in scan.accepted] == ["GT/p_00.png", "GT/p_01.png", "GT/p_02.png"]
    (tmp_path / "none" / "LQ").mkdir(parents=True)
    write_png(tmp_path / "none" / "LQ" / "a.png", seed=1)
    with pytest.raises(AetuneError, match="no usable LQ/GT pair.*LQ/a.png: unpaired"):
        scan_pairs(tmp_path / "none", progress=False)
    with pytest.raises(AetuneError, match="val_ratio must be in"):
        prepare_paired_dataset(tmp_path / "flat", tmp_path / "w", val_ratio=0.7, progress=False)
    _pairs(tmp_path / "one", 1, seed=5)
    with pytest.raises(AetuneError, match="no validation pair \\(1 train, 0 val\\)"):
        prepare_paired_dataset(tmp_path / "one", tmp_path / "w", progress=False)
    assert not (tmp_path / "w" / "data").exists()
    (tmp_path / "plain" / "ID_1").mkdir(parents=True)
    with pytest.raises(AetuneError, match="no LQ/ and GT/ folders"):
        scan_pairs(tmp_path / "plain", progress=False)


def test_split_per_type_duplicates_and_stability(messy: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    summary = prepare_paired_dataset(messy, work, val_ratio=0.34, seed=3, progress=False)
    split = read_json(data_dir(work) / "split.json")
    dataset = read_json(data_dir(work) / "dataset.json")
    labels = read_json(data_dir(work) / "labels.json")
    assert labels == {"Blur": 0, "Noise": 1} and dataset["kind"] == "paired"
    val_types = [p.split("/")[0] for p in split["val"]]
    assert val_types.count("Blur") >= 1 and val_types.count("Noise") >= 1  # every type validated
    assert set(split["train"]) | set(split["val"]) == {a["relpath"] for a in dataset["accepted"]}
    side = {p: "train" for p in split["train"]} | {p: "val" for p in split["val"]}
    assert side["Blur/GT/p_00.png"] == side["Blur/GT/same.png"]  # one clean image: one side
    assert dataset["duplicates"] == [
        {"pairs": ["Blur/GT/p_00.png", "Blur/GT/same.png"], "reason": "identical GT pixels, different LQ"}
    ]
    record = next(a for a in dataset["accepted"] if a["relpath"] == "Noise/GT/p_01.png")
    assert record["lq"] == "Noise/LQ/p_01.jpg" and record["label"] == 1 and record["user"] == "Noise"
    rows = {r[0]: r for r in summary.rows}
    assert rows["Blur"][2] + rows["Blur"][3] == 7 and rows["Noise"][2] + rows["Noise"][3] == 4
    assert rows["Blur"][4] == 12 and summary.duplicates == 1 and summary.changed

    again = prepare_paired_dataset(messy, work, val_ratio=0.34, seed=3, progress=False)
    assert not again.changed  # same input: files untouched
    for i in range(5):  # new Noise pairs
        write_png(messy / "restore" / "Noise" / "GT" / f"q_{i}.png", seed=700 + i)
        write_png(messy / "restore" / "Noise" / "LQ" / f"q_{i}.png", seed=800 + i)
    shutil.rmtree(work)  # a fresh work directory: the split is a function of the content alone
    grown = prepare_paired_dataset(messy, work, val_ratio=0.34, seed=3, progress=False)
    new_split = read_json(data_dir(work) / "split.json")
    new_side = {p: "train" for p in new_split["train"]} | {p: "val" for p in new_split["val"]}
    assert grown.changed
    assert all(new_side[p] == side[p] for p in side if p.startswith("Blur/"))  # Blur did not change
    assert len([p for p in new_side if p.startswith("Noise/")]) == 9
    assert all(new_side[p] == "train" for p in side if p.startswith("Noise/") and side[p] == "train")


def test_val_root_used_as_given_and_loaded_back(messy: Path, tmp_path: Path) -> None:
    val_root = tmp_path / "val"
    _pairs(val_root / "Blur", 2, seed=7)
    _pairs(val_root / "Rain", 2, seed=8)
    shutil.copy(messy / "restore" / "Blur" / "GT" / "p_01.png", val_root / "Blur" / "GT" / "p_01.png")  # a leak
    work = tmp_path / "work"
    prepare_paired_dataset(messy, work, val_root=val_root, progress=False)
    split = read_json(data_dir(work) / "split.json")
    dataset = read_json(data_dir(work) / "dataset.json")
    assert split["val"] == [f"{VAL_PREFIX}Blur/GT/p_00.png", f"{VAL_PREFIX}Blur/GT/p_01.png"] + [
        f"{VAL_PREFIX}Rain/GT/p_00.png",
        f"{VAL_PREFIX}Rain/GT/p_01.png",
    ]
    assert len(split["train"]) == 11 and split["val_ratio"] is None
    assert read_json(data_dir(work) / "labels.json") == {"Blur": 0, "Noise": 1, "Rain": 2}
    reasons = {n["path"]: n["reason"] for n in dataset["notes"]}
    assert reasons[f"{VAL_PREFIX}Blur/GT/p_01.png"].startswith("its GT is also a training GT")
    assert reasons["Rain"].startswith("degradation type only in val_root")

    data = load_paired(work)
    assert data.types == ["Blur", "Noise", "Rain"]
    v = data.val[0]
    assert isinstance(data, PreparedData) and data.path(v) == data.gt_path(v)  # what load_prepared serves
    assert data.gt_path(v) == val_root.resolve() / "Blur" / "GT" / "p_00.png"
    assert data.lq_path(v) == val_root.resolve() / "Blur" / "LQ" / "p_00.png"
    t = next(s for s in data.train if s.user == "Noise")
    assert data.lq_path(t).suffix == ".jpg" and load_rgb(data.gt_path(t)).shape == (32, 32, 3)
    assert [s.relpath for s in per_type_subset(data.val, 1)] == [split["val"][0], split["val"][2]]
    assert per_type_subset(data.val, None) == data.val
    moved = tmp_path / "moved_val"
    shutil.move(val_root, moved)
    with pytest.raises(AetuneError, match="missing.*--val_root"):
        load_paired(work)
    assert load_paired(work, val_root=moved).gt_path(v).is_file()


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_synthetic_paired_set_is_deterministic_and_degraded(tmp_path: Path) -> None:
    a = generate_paired_dataset(tmp_path / "a", pairs_per_type=3, image_size=32, num_users=2, progress=False)
    b = generate_paired_dataset(tmp_path / "b", pairs_per_type=3, image_size=32, num_users=2, progress=False)
    assert _digest(a) == _digest(b) and len(list(a.rglob("*.png"))) == 4 * 3 * 2
    lq, gt = render_pair("Blur", 1, 32, 2, 42)  # pair 1 does not depend on how many pairs were asked for
    assert np.array_equal(np.asarray(Image.open(a / "Blur" / "LQ" / "img_0001.png")), lq)
    gts = {k: load_rgb(a / k / "GT" / "img_0000.png").astype(float) for k in DEGRADATIONS}
    lqs = {k: load_rgb(a / k / "LQ" / "img_0000.png").astype(float) for k in DEGRADATIONS}
    assert len({g.tobytes() for g in gts.values()}) == 4  # each type has its own clean images

    def roughness(x: np.ndarray) -> float:
        return float(np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean())

    assert roughness(lqs["Blur"]) < 0.7 * roughness(gts["Blur"])
    assert np.std(lqs["Noise"] - gts["Noise"]) > 5
    assert lqs["LowLight"].mean() < 0.7 * gts["LowLight"].mean()
    occluded = (lqs["Occlusion"] == 0).all(axis=2) & (gts["Occlusion"] != 0).any(axis=2)
    assert occluded.sum() >= 0.01 * 32 * 32
    with pytest.raises(AetuneError, match="other parameters \\(pairs_per_type differ\\)"):
        generate_paired_dataset(a, pairs_per_type=4, image_size=32, num_users=2, progress=False)

    work = tmp_path / "work"
    summary = prepare_paired_dataset(a, work, val_ratio=0.34, progress=False)
    assert [r[0] for r in summary.rows] == sorted(DEGRADATIONS)
    assert all(r[3] == 1 and r[2] == 2 and r[4] == 0 for r in summary.rows)


def test_step3_prepares_pairs_from_the_command_line(messy: Path, tmp_path: Path, capsys) -> None:
    import step3_prepare_dataset as step3
    from aetune.cli import run_main

    def run(*args: str) -> int:
        return run_main(step3.main, step3.parse_args([*args, "--no_progress"]))

    work = tmp_path / "synthetic"
    assert run("--synthetic", "paired", "--pairs_per_type", "3", "--image_size", "32", "--output_dir", str(work)) == 0
    dataset = read_json(data_dir(work) / "dataset.json")
    assert dataset["kind"] == "paired" and dataset["num_users"] == 4 and dataset["num_images"] == 12
    out = capsys.readouterr().out
    assert "LowLight" in out and "total" in out
    val_root = tmp_path / "val"
    _pairs(val_root / "Blur", 2, seed=7)
    assert run("--data_root", str(messy), "--val_root", str(val_root), "--output_dir", str(tmp_path / "w")) == 0
    split = read_json(data_dir(tmp_path / "w") / "split.json")
    assert split["val"] == [f"{VAL_PREFIX}Blur/GT/p_00.png", f"{VAL_PREFIX}Blur/GT/p_01.png"]
    assert run("--val_root", str(val_root), "--output_dir", str(tmp_path / "x")) == 2
    assert "error: --val_root needs --data_root" in capsys.readouterr().err
