"""Hugging Face dataset folders as step 3 input: save_to_disk and parquet, bad rows, both split modes, row reader."""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aetune.data.hf_source import (
    HFRows,
    _row_file,
    hf_format,
    parse_row_relpath,
    prepare_hf_dataset,
    row_relpath,
    scan_hf_dataset,
)
from aetune.data.prepared import data_dir
from aetune.data.synthetic import draw_user, render_image
from aetune.errors import AetuneError
from aetune.io import read_json

datasets = pytest.importorskip("datasets")

USERS = ["ID_1", "ID_2", "ID_10"]


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _synthetic(n_per_user: int, first: int) -> tuple[list[dict], list[int], list[np.ndarray]]:
    """Image cells, ClassLabel indices and pixels of synthetic spectrograms (32 px), images first.."""
    cells, labels, pixels = [], [], []
    for u in range(len(USERS)):
        user = draw_user(u + 1, 42)
        for i in range(first, first + n_per_user):
            rgb = render_image(user, i, 32, 42)
            cells.append({"bytes": _png(rgb), "path": None})
            labels.append(u)
            pixels.append(rgb)
    return cells, labels, pixels


def _bad_rows() -> tuple[list, list]:
    """One row of every defect (the label of the last is missing)."""
    tiny = _png(np.zeros((8, 8, 3), dtype=np.uint8))
    good = _png(np.full((32, 32, 3), 7, dtype=np.uint8))
    cells = [
        None,
        {"bytes": b"garbage", "path": None},
        {"bytes": b"", "path": None},
        {"bytes": tiny, "path": None},
        {"bytes": good, "path": None},
    ]
    return cells, [0, 1, 2, 0, None]


def _features(image: str = "image", label: str | None = "label") -> datasets.Features:
    f = {image: datasets.Image()}
    if label:
        f[label] = datasets.ClassLabel(names=USERS)
    return datasets.Features(f)


@pytest.fixture(scope="module")
def hf_dict(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray], list[np.ndarray]]:
    """A DatasetDict on disk: train (4 per user + 5 bad rows), validation (2 per user)."""
    root = tmp_path_factory.mktemp("hf") / "dict"
    tr_cells, tr_labels, tr_pixels = _synthetic(4, 0)
    bad_cells, bad_labels = _bad_rows()
    va_cells, va_labels, va_pixels = _synthetic(2, 100)
    train = datasets.Dataset.from_dict(
        {"image": tr_cells + bad_cells, "label": tr_labels + bad_labels}, features=_features()
    )
    val = datasets.Dataset.from_dict({"image": va_cells, "label": va_labels}, features=_features())
    datasets.DatasetDict({"train": train, "validation": val}).save_to_disk(str(root))
    return root, tr_pixels, va_pixels


def test_row_cells_with_paths(tmp_path: Path) -> None:
    """Cells that name a file instead of holding bytes (save_to_disk embeds files, other writers may not)."""
    (tmp_path / "img.png").write_bytes(b"x")
    assert _row_file({"bytes": None, "path": "img.png"}, tmp_path) == (tmp_path / "img.png", "")
    gone = _row_file({"bytes": None, "path": "/nonexistent/x.png"}, tmp_path)
    assert gone == (None, "the row names an image file that does not exist (/nonexistent/x.png)")
    assert _row_file({"bytes": None, "path": None}, tmp_path)[1] == "no image in this row (neither bytes nor a path)"


def test_row_references() -> None:
    assert row_relpath("train", 12) == "hf://train/12"
    assert parse_row_relpath("hf://my/split/7") == ("my/split", 7)
    with pytest.raises(AetuneError, match="not a dataset row reference"):
        parse_row_relpath("ID_1/img.png")


def test_save_to_disk_with_validation_split(hf_dict, tmp_path: Path) -> None:
    root, tr_pixels, va_pixels = hf_dict
    assert hf_format(root) == "save_to_disk"
    summary = prepare_hf_dataset(root, tmp_path / "w", progress=False)
    d = data_dir(tmp_path / "w")
    labels, dataset, split = (read_json(d / f) for f in ("labels.json", "dataset.json", "split.json"))
    assert labels == {"ID_1": 0, "ID_2": 1, "ID_10": 2}  # the ClassLabel order
    assert split["train"] == [f"hf://train/{i}" for i in range(12)]
    assert split["val"] == [f"hf://validation/{i}" for i in range(6)]
    assert split["note"] == "train: all of split 'train'; val: all of split 'validation'"
    reasons = {r["path"]: r["reason"] for r in dataset["rejected"]}
    assert reasons["hf://train/12"] == "no image in this row (empty cell)"
    assert reasons["hf://train/13"].startswith("not a decodable image")
    assert reasons["hf://train/14"] == "empty file (0 bytes)"
    assert reasons["hf://train/15"].startswith("too small (8x8")
    assert reasons["hf://train/16"] == "no label in column label (empty cell)"
    assert dataset["kind"] == "hf" and dataset["hf"]["image_column"] == "image"
    assert dataset["hf"]["splits"] == {"train": 17, "validation": 6}
    record = next(a for a in dataset["accepted"] if a["relpath"] == "hf://train/5")
    assert (record["user"], record["label"], record["width"], record["format"]) == ("ID_2", 1, 32, "PNG")
    assert [r[2:4] for r in summary.rows] == [(4, 2)] * 3 and summary.rejected == 5 and summary.changed
    assert not prepare_hf_dataset(root, tmp_path / "w", progress=False).changed  # nothing new: untouched

    rows = HFRows.from_dataset_doc(dataset)
    assert np.array_equal(rows.rgb("hf://train/5"), tr_pixels[5])
    assert np.array_equal(rows.rgb("hf://validation/3"), va_pixels[3])
    assert rows.rgb_resized("hf://train/0", 16).shape == (16, 16, 3)
    with pytest.raises(AetuneError, match="dataset changed since step 3"):
        rows.open("hf://train/99")
    with pytest.raises(AetuneError, match="no image in this row"):
        rows.open("hf://train/12")


def test_single_split_is_split_per_label_and_says_so(hf_dict, tmp_path: Path, caplog) -> None:
    src, _, _ = hf_dict
    single = tmp_path / "single"
    datasets.load_from_disk(str(src))["train"].save_to_disk(str(single))
    with caplog.at_level(logging.INFO, logger="aetune.data.hf_source"):
        prepare_hf_dataset(single, tmp_path / "a", train_split=0.75, progress=False)
    assert "no 'validation' split" in caplog.text and "25 %" in caplog.text
    split = read_json(data_dir(tmp_path / "a") / "split.json")
    assert split["val_ratio"] == 0.25 and split["note"].startswith("no 'validation' split")
    assert len(split["train"]) + len(split["val"]) == 12
    dataset = read_json(data_dir(tmp_path / "a") / "dataset.json")
    user = {a["relpath"]: a["user"] for a in dataset["accepted"]}
    assert {user[p] for p in split["val"]} == set(USERS)  # every label validated (minimum one)
    prepare_hf_dataset(single, tmp_path / "b", train_split=0.75, progress=False)
    assert read_json(data_dir(tmp_path / "b") / "split.json") == split  # a fresh work directory: same split


def test_parquet_folder_gives_the_same_records(hf_dict, tmp_path: Path) -> None:
    src, _, _ = hf_dict
    loaded = datasets.load_from_disk(str(src))
    folder = tmp_path / "pq" / "data"
    folder.mkdir(parents=True)
    loaded["train"].to_parquet(str(folder / "train-00000-of-00001.parquet"))
    loaded["validation"].to_parquet(str(folder / "validation-00000-of-00001.parquet"))
    assert hf_format(tmp_path / "pq") == "parquet"
    prepare_hf_dataset(tmp_path / "pq", tmp_path / "w_pq", progress=False, cache_dir=str(tmp_path / "cache"))
    prepare_hf_dataset(src, tmp_path / "w_disk", progress=False)
    pq, disk = (read_json(data_dir(tmp_path / w) / "dataset.json") for w in ("w_pq", "w_disk"))
    assert [(a["relpath"], a["sha1"]) for a in pq["accepted"]] == [(a["relpath"], a["sha1"]) for a in disk["accepted"]]
    assert pq["hf"]["format"] == "parquet"


def test_columns_splits_and_ratios_are_checked(hf_dict, tmp_path: Path) -> None:
    src, _, _ = hf_dict
    with pytest.raises(AetuneError, match="no such split.*did you mean 'train'"):
        scan_hf_dataset(src, ["trian"], progress=False)
    with pytest.raises(AetuneError, match="--hf_label_column lable: no such column.*did you mean 'label'"):
        scan_hf_dataset(src, ["train"], label_column="lable", progress=False)
    with pytest.raises(AetuneError, match="train_split"):
        prepare_hf_dataset(src, tmp_path / "w", hf_validation_split=None, train_split=0.3, progress=False)
    cells, _, _ = _synthetic(1, 0)
    unlabelled = tmp_path / "unlabelled"
    feats = datasets.Features({"caption": datasets.Value("string"), "pixels": datasets.Image()})
    datasets.Dataset.from_dict({"caption": ["x"] * 3, "pixels": cells}, features=feats).save_to_disk(str(unlabelled))
    scan = scan_hf_dataset(unlabelled, ["train"], progress=False)
    assert (scan.image_column, scan.label_column, scan.users) == ("pixels", None, ["all"])
    no_image = tmp_path / "no_image"
    datasets.Dataset.from_dict({"caption": ["x"]}).save_to_disk(str(no_image))
    with pytest.raises(AetuneError, match="no Image column.*caption"):
        scan_hf_dataset(no_image, ["train"], progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AetuneError, match="not a Hugging Face dataset folder"):
        scan_hf_dataset(tmp_path / "empty", ["train"], progress=False)
    shutil.copytree(unlabelled, tmp_path / "damaged")
    next((tmp_path / "damaged").glob("*.arrow")).write_bytes(b"not arrow")
    (tmp_path / "damaged" / "state.json").unlink()  # now read as a folder of .arrow files
    with pytest.raises(AetuneError, match="cannot read .*damaged as arrow files"):
        scan_hf_dataset(tmp_path / "damaged", ["train"], progress=False, cache_dir=str(tmp_path / "cache"))


def test_step3_prepares_a_hugging_face_folder(hf_dict, tmp_path: Path, capsys) -> None:
    import step3_prepare_dataset as step3
    from aetune.cli import run_main

    src, _, _ = hf_dict
    args = ["--data_root", str(src), "--output_dir", str(tmp_path / "w"), "--hf_validation_split", "none"]
    assert run_main(step3.main, step3.parse_args([*args, "--train_split", "0.8", "--no_progress"])) == 0
    split = read_json(data_dir(tmp_path / "w") / "split.json")
    assert split["val_ratio"] == 0.2 and all(p.startswith("hf://train/") for p in split["train"] + split["val"])
    out = capsys.readouterr().out
    assert "Hugging Face dataset" in out and "no 'none' split" in out and "ID_10" in out


def test_prepared_rows_feed_the_image_caches(hf_dict, tmp_path: Path) -> None:
    """What steps 4-5 read: the image kind's dataset built from rows, equal to the stored pixels."""
    from aetune.data.cache import build_file_cache, load_images
    from aetune.data.hf_source import load_hf_prepared
    from aetune.data.kinds import get_data_kind

    src, tr_pixels, va_pixels = hf_dict
    work = tmp_path / "w"
    prepare_hf_dataset(src, work, progress=False)
    prepared = load_hf_prepared(work)
    assert [s.relpath for s in prepared.val] == [f"hf://validation/{i}" for i in range(6)]
    val = load_images(prepared, "val", 32, "ram", work, progress=False)
    assert np.array_equal(val, np.stack(va_pixels))  # 32 px already: no resize
    build_file_cache(prepared, "train", 16, work, progress=False)
    train = get_data_kind("image").dataset(prepared, "train", 16, "file", work, False)
    image, label = train[5]
    assert image.shape == (3, 16, 16) and label == 1
    with pytest.raises(AetuneError, match="not a Hugging Face dataset folder"):
        load_hf_prepared(work, data_root=tmp_path)
