"""Step 3 and its files under bad input: a stable split without memory, near-duplicates, corrupt work
files, decompression bombs, out-of-range flags and unwritable work directories. Each bad input ends in
one ``error:`` line (exit 2) or a per-file rejection, and leaves the work directory as it was."""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import step3_prepare_dataset as step3
from aetune.cli import run_main
from aetune.data import prepare
from aetune.data.images import DECOMPRESSION_BOMB, load_rgb
from aetune.data.neardup import find_near_duplicates
from aetune.data.prepare import prepare_dataset
from aetune.data.prepared import load_prepared
from aetune.data.scan import scan_dataset
from aetune.data.split import content_score, split_records
from aetune.data.synthetic import draw_user, render_image
from aetune.errors import AetuneError
from tests.conftest import make_user_folders


def _modes_ignored() -> bool:
    """True for root with its usual capabilities (os.geteuid() == 0), which writes into 0o500 folders anyway."""
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o500)
        try:
            return os.access(d, os.W_OK)
        finally:
            os.chmod(d, 0o700)


MODES_IGNORED = _modes_ignored()


def _run(args: list[str]) -> int:
    return run_main(step3.main, step3.parse_args([*args, "--no_progress"]))


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (hidden ones too) -> its bytes (None for folders)."""
    if not folder.exists():
        return {}
    return {p.relative_to(folder).as_posix(): None if p.is_dir() else p.read_bytes() for p in folder.rglob("*")}


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def _split(work: Path) -> dict[str, Any]:
    return json.loads((work / "data" / "split.json").read_text())


# ---- split stability without memory -------------------------------------------------------------------


def test_a_fresh_work_directory_keeps_every_training_image_after_images_are_added(tmp_path: Path) -> None:
    root = make_user_folders(tmp_path / "d", {"ID_1": 12, "ID_2": 5, "ID_3": 2, "ID_4": 1})
    seed = ["--seed", "11"]  # the quota rule this replaced moved ID_1/img_004.png to validation here
    assert _run(["--data_root", str(root), "--output_dir", str(tmp_path / "w1"), *seed]) == 0
    before = _split(tmp_path / "w1")
    more = make_user_folders(tmp_path / "more", {"ID_1": 20, "ID_2": 4, "ID_3": 3}, seed=7)
    for user in ("ID_1", "ID_2", "ID_3"):
        for f in (more / user).iterdir():
            shutil.copy(f, root / user / f"new_{f.name}")
    assert _run(["--data_root", str(root), "--output_dir", str(tmp_path / "w2"), *seed]) == 0  # no split.json
    after = _split(tmp_path / "w2")
    assert set(before["train"]) <= set(after["train"])
    assert all(any(p.startswith(f"{u}/") for p in after["val"]) for u in ("ID_1", "ID_2", "ID_3"))
    # The old split.json changes nothing: the work directory that has one gets the same split.
    assert _run(["--data_root", str(root), "--output_dir", str(tmp_path / "w1"), *seed]) == 0
    assert _split(tmp_path / "w1") == after


def test_images_that_change_side_against_the_replaced_split_are_reported(prepared: tuple[Path, Path], capsys) -> None:
    root, work = prepared
    old = _split(work)
    moved = old["val"][0]
    hand = {**old, "train": [*old["train"], moved], "val": old["val"][1:]}  # as the quota rule might have
    (work / "data" / "split.json").write_text(json.dumps(hand))
    args = ["--data_root", str(root), "--output_dir", str(work), "--seed", "0", "--val_ratio", "0.3", "--name", "toy"]
    assert _run(args) == 0
    assert "1 images moved from train to val and 0 from val to train" in capsys.readouterr().out
    assert _split(work) == old


def test_no_training_image_is_an_error(tmp_path: Path, capsys) -> None:
    root = make_user_folders(tmp_path / "d", {"ID_1": 2})
    shas = [r.sha1 for r in scan_dataset(root, progress=False).accepted]
    seed = next(s for s in range(1000) if all(content_score(s, h) < 0.5 for h in shas))  # both drawn
    work = tmp_path / "w"
    assert _run(["--data_root", str(root), "--output_dir", str(work), "--val_ratio", "0.5", "--seed", str(seed)]) == 2
    assert "no training image: all 2 images fell in validation" in _one_error_line(capsys)
    assert not work.exists()


# ---- near-duplicates ----------------------------------------------------------------------------------

SHIFT = 40  # pixels of time between the two windows


@pytest.fixture
def windows(tmp_path: Path) -> Path:
    """ID_1: a window (a), the window 40 px later (b), b re-encoded as JPEG (c), 4 other recordings; ID_2: 3."""
    root = tmp_path / "d"
    (root / "ID_1").mkdir(parents=True)
    (root / "ID_2").mkdir()
    recording = render_image(draw_user(1, 42), 0, 256, 42)  # (256, 256, 3): frequency x time
    Image.fromarray(recording[:, :192]).save(root / "ID_1" / "a.png")
    Image.fromarray(recording[:, SHIFT : SHIFT + 192]).save(root / "ID_1" / "b.png")
    Image.fromarray(recording[:, SHIFT : SHIFT + 192]).save(root / "ID_1" / "c.jpg", quality=75)
    for i in range(1, 5):
        Image.fromarray(render_image(draw_user(1, 42), i, 256, 42)[:, :192]).save(root / "ID_1" / f"other_{i}.png")
    for i in range(3):
        Image.fromarray(render_image(draw_user(2, 42), i, 256, 42)[:, :192]).save(root / "ID_2" / f"w_{i}.png")
    return root


def test_a_shifted_window_is_found_with_its_shift(windows: Path) -> None:
    scan = scan_dataset(windows, progress=False)
    pairs = find_near_duplicates(scan.accepted, scan.fingerprints)
    assert [(p.a, p.b) for p in pairs] == [
        ("ID_1/a.png", "ID_1/b.png"),
        ("ID_1/a.png", "ID_1/c.jpg"),
        ("ID_1/b.png", "ID_1/c.jpg"),
    ]
    ab, ac, bc = pairs
    assert ab.shift == SHIFT and ac.shift == SHIFT and bc.shift == 0  # b starts 40 px after a
    assert ab.overlap == pytest.approx(1 - SHIFT / 192, abs=1e-3)
    assert ab.correlation > 0.99 and ac.correlation > 0.97


def test_plain_noise_has_no_near_duplicates(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(40):
        (tmp_path / f"u{i % 2}").mkdir(exist_ok=True)
        noise = rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)
        Image.fromarray(noise).save(tmp_path / f"u{i % 2}" / f"n_{i}.png")
    scan = scan_dataset(tmp_path, progress=False)
    assert find_near_duplicates(scan.accepted, scan.fingerprints) == []


def test_near_duplicates_are_reported_and_kept_on_one_side(windows: Path, tmp_path: Path) -> None:
    work = tmp_path / "w"
    assert _run(["--data_root", str(windows), "--output_dir", str(work), "--val_ratio", "0.5"]) == 0
    dataset = json.loads((work / "data" / "dataset.json").read_text())
    assert dataset["groups"] == [["ID_1/a.png", "ID_1/b.png", "ID_1/c.jpg"]]
    assert {(p["a"], p["b"], p["shift"]) for p in dataset["near_duplicates"]} == {
        ("ID_1/a.png", "ID_1/b.png", SHIFT),
        ("ID_1/a.png", "ID_1/c.jpg", SHIFT),
        ("ID_1/b.png", "ID_1/c.jpg", 0),
    }
    scan = scan_dataset(windows, progress=False)
    links = [(p["a"], p["b"]) for p in dataset["near_duplicates"]]
    sides = set()
    for seed in range(30):
        _, val = split_records(scan.accepted, 0.5, seed, links)
        in_val = {p in val for p in ("ID_1/a.png", "ID_1/b.png", "ID_1/c.jpg")}
        assert len(in_val) == 1, seed
        sides |= in_val
    assert sides == {True, False}  # the group does go to either side, as a whole


# ---- corrupt or hand-edited work files ----------------------------------------------------------------


@pytest.fixture
def prepared(tmp_path: Path) -> tuple[Path, Path]:
    """(data root, work dir) after step 3; ID_1/copy.png duplicates ID_1/img_000.png."""
    root = make_user_folders(tmp_path / "d", {"ID_1": 6, "ID_2": 4})
    shutil.copy(root / "ID_1" / "img_000.png", root / "ID_1" / "copy.png")
    work = tmp_path / "w"
    prepare_dataset(root, work, name="toy", val_ratio=0.3, seed=0, progress=False)
    return root, work


def _edit(name: str, change: Callable[[Any], Any]) -> Callable[[Path], None]:
    def apply(work: Path) -> None:
        path = work / "data" / name
        path.write_text(json.dumps(change(json.loads(path.read_text()))))

    return apply


def _raw(name: str, data: bytes | Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def apply(work: Path) -> None:
        path = work / "data" / name
        path.write_bytes(data(path.read_bytes()) if callable(data) else data)

    return apply


def _straddle(split: dict[str, Any]) -> dict[str, Any]:
    side = "train" if "ID_1/img_000.png" in split["train"] else "val"
    other = "val" if side == "train" else "train"
    split[side].remove("ID_1/copy.png")
    split[other].append("ID_1/copy.png")
    return split


def _swap_labels(labels: dict[str, int]) -> dict[str, int]:
    return {"ID_1": labels["ID_2"], "ID_2": labels["ID_1"]}


def _first_accepted(field: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def change(dataset: dict[str, Any]) -> dict[str, Any]:
        dataset["accepted"][0][field] = value
        return dataset

    return change


CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "labels empty": (_raw("labels.json", b""), "labels.json", "empty or not valid JSON"),
    "labels truncated": (_raw("labels.json", lambda b: b[: len(b) // 2]), "labels.json", "not valid JSON"),
    "labels binary": (_raw("labels.json", b"\xff\xfe\x00\x81"), "labels.json", "not valid JSON"),
    "labels a list": (_edit("labels.json", lambda _: [0, 1]), "labels.json", "mapping"),
    "labels not integers": (_edit("labels.json", lambda d: dict.fromkeys(d, "a")), "labels.json", "integer"),
    "labels gap": (_edit("labels.json", lambda d: {"ID_1": 0, "ID_2": 5}), "labels.json", "0..1"),
    "labels swapped": (_edit("labels.json", _swap_labels), "labels.json", "disagrees with dataset.json"),
    "labels user missing": (_edit("labels.json", lambda d: {"ID_1": 0}), "labels.json", "disagrees"),
    "dataset truncated": (_raw("dataset.json", lambda b: b[:100]), "dataset.json", "not valid JSON"),
    "dataset no accepted": (_edit("dataset.json", lambda d: {"name": "toy"}), "dataset.json", "accepted"),
    "dataset escaping path": (
        _edit("dataset.json", _first_accepted("relpath", "../../etc/x.png")),
        "dataset.json",
        "relative",
    ),
    "dataset label text": (_edit("dataset.json", _first_accepted("label", "0")), "dataset.json", "integer"),
    "split empty": (_raw("split.json", b"   \n"), "split.json", "empty or not valid JSON"),
    "split wrong type": (_edit("split.json", lambda d: {**d, "train": "ID_1"}), "split.json", "lists"),
    "split unknown image": (
        _edit("split.json", lambda d: {**d, "train": [*d["train"], "ID_1/nope.png"]}),
        "split.json",
        "not an accepted image",
    ),
    "split both sides": (
        _edit("split.json", lambda d: {**d, "train": [*d["train"], d["val"][0]]}),
        "split.json",
        "twice",
    ),
    "split no training": (
        _edit("split.json", lambda d: {**d, "train": [], "val": d["train"] + d["val"]}),
        "split.json",
        "empty training",
    ),
    "split duplicate straddles": (_edit("split.json", _straddle), "split.json", "both sides"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_work_files_name_the_file_and_the_fix(case: str, prepared: tuple[Path, Path]) -> None:
    _, work = prepared
    corrupt, fname, what = CORRUPTIONS[case]
    corrupt(work)
    before = _snapshot(work)
    with pytest.raises(AetuneError) as e:
        load_prepared(work)
    msg = str(e.value)
    assert "\n" not in msg and what in msg, msg
    assert str(work / "data" / fname) in msg, msg
    assert f"step3_prepare_dataset.py --output_dir {work}" in msg, msg
    assert _snapshot(work) == before


def test_the_fix_names_the_seed_and_ratio_that_rebuild_the_split(prepared: tuple[Path, Path]) -> None:
    root, work = prepared
    _edit("labels.json", _swap_labels)(work)
    fix = f"--data_root {root.resolve()} --name toy --seed 0 --val_ratio 0.3 to regenerate"
    with pytest.raises(AetuneError, match=fix):
        load_prepared(work)


def test_missing_images_are_counted(prepared: tuple[Path, Path]) -> None:
    root, work = prepared
    before = _snapshot(work)
    (root / "ID_2" / "img_001.png").unlink()
    with pytest.raises(AetuneError, match=r"^1 of the 11 images of .*split.json are missing .*first: ID_2/img_001.png"):
        load_prepared(work)
    shutil.move(root, root.with_name("moved"))
    with pytest.raises(AetuneError, match="holds none of the 11 images.*pass --data_root"):
        load_prepared(work)
    assert _snapshot(work) == before


def test_step3_regenerates_corrupt_files_exactly(prepared: tuple[Path, Path], capsys) -> None:
    root, work = prepared
    good = _snapshot(work / "data")
    for name in ("labels.json", "dataset.json", "split.json"):
        (work / "data" / name).write_text('{"truncated": ')
    args = ["--data_root", str(root), "--output_dir", str(work), "--seed", "0", "--val_ratio", "0.3", "--name", "toy"]
    assert _run(args) == 0
    assert "replacing" in capsys.readouterr().out
    assert _snapshot(work / "data") == good  # the split depends on the images only: rebuilt as it was


# ---- decompression bombs ------------------------------------------------------------------------------


def _png_header(width: int, height: int) -> bytes:
    """A ~100-byte PNG that claims ``width`` x ``height`` 1-bit pixels (its data would not even decode)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_bombs_are_rejected_per_file_and_the_scan_goes_on(tmp_path: Path) -> None:
    root = make_user_folders(tmp_path / "d", {"ID_1": 3, "ID_2": 2})
    (root / "ID_1" / "warned.png").write_bytes(_png_header(10_000, 10_000))  # 1e8 px: Pillow only warns
    (root / "ID_2" / "refused.png").write_bytes(_png_header(30_000, 30_000))  # 9e8 px: Pillow raises
    work = tmp_path / "w"
    assert _run(["--data_root", str(root), "--output_dir", str(work)]) == 0
    dataset = json.loads((work / "data" / "dataset.json").read_text())
    reasons = {r["path"]: r["reason"] for r in dataset["rejected"]}
    assert reasons["ID_1/warned.png"].startswith("refused as a possible decompression bomb")
    assert reasons["ID_2/refused.png"].startswith("refused as a possible decompression bomb")
    assert "\n" not in reasons["ID_1/warned.png"] and dataset["num_images"] == 5
    with pytest.raises(DECOMPRESSION_BOMB):  # the loader of steps 4 and 5 refuses it too
        load_rgb(root / "ID_1" / "warned.png")


def test_bomb_limit_is_pillows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for side, user in ((20, "ok"), (40, "warned"), (64, "raised")):  # 400 px; 1600 (1-2x limit); 4096 (> 2x)
        (tmp_path / user).mkdir()
        Image.fromarray(np.full((side, side, 3), 90, np.uint8)).save(tmp_path / user / "x.png")
    scan = scan_dataset(tmp_path, progress=False)
    assert [r.relpath for r in scan.accepted] == ["ok/x.png"]
    assert {r["path"] for r in scan.rejected if "decompression bomb" in r["reason"]} == {"raised/x.png", "warned/x.png"}


# ---- numeric flags ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--val_ratio", "0"),
        ("--val_ratio", "-0.1"),
        ("--val_ratio", "0.75"),
        ("--val_ratio", "nan"),
        ("--seed", "-1"),
        ("--seed", str(2**32)),
        ("--num_users", "0"),
        ("--num_users", "1000000"),
        ("--images_per_user", "0"),
        ("--image_size", "8"),
        ("--image_size", "100000"),
    ],
)
def test_numeric_flags_out_of_range(flag: str, value: str, tmp_path: Path, capsys) -> None:
    work = tmp_path / "w"
    assert _run(["--synthetic", "microdoppler", "--output_dir", str(work), flag, value]) == 2
    err = _one_error_line(capsys)
    assert err.startswith(f"error: {flag} must be in ") and value in err, err
    assert not work.exists()


@pytest.mark.parametrize("name", ["../evil", "my data", ".hidden", "a/b", "", "x" * 65])
def test_a_name_that_cannot_be_a_file_name(name: str, user_folders: Path, tmp_path: Path, capsys) -> None:
    work = tmp_path / "w"
    assert _run(["--data_root", str(user_folders), "--output_dir", str(work), "--name", name]) == 2
    assert _one_error_line(capsys).startswith(f"error: --name {name!r} cannot be part of a file name")
    assert not work.exists()


def test_a_hand_edited_name_is_refused_when_read(prepared: tuple[Path, Path]) -> None:
    _, work = prepared
    _edit("dataset.json", lambda d: {**d, "name": "../../etc"})(work)
    with pytest.raises(
        AetuneError, match=r"dataset.json field 'name' '../../etc' cannot be part of a file name.*e\.g\. etc"
    ):
        load_prepared(work)


# ---- unwritable work directories ----------------------------------------------------------------------


def test_output_dir_that_is_a_file(user_folders: Path, tmp_path: Path, capsys) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    before = _snapshot(tmp_path)
    for out in (target, target / "work"):
        assert _run(["--data_root", str(user_folders), "--output_dir", str(out)]) == 2
        assert f"{target} is a file, not a folder" in _one_error_line(capsys)
    assert _snapshot(tmp_path) == before


def test_synthetic_under_a_file_fails_before_generating(tmp_path: Path, capsys) -> None:
    (tmp_path / "f").write_text("x")
    assert _run(["--synthetic", "microdoppler", "--output_dir", str(tmp_path / "f" / "w")]) == 2
    assert "is a file" in _one_error_line(capsys)


@pytest.mark.skipif(MODES_IGNORED, reason="root ignores permission bits")
@pytest.mark.parametrize("earlier_run", [False, True])
def test_read_only_folders(earlier_run: bool, user_folders: Path, tmp_path: Path, capsys) -> None:
    """A 0o500 work directory (first run), or a 0o500 data/ holding an earlier run's files."""
    work = tmp_path / "work"
    if earlier_run:
        assert _run(["--data_root", str(user_folders), "--output_dir", str(work)]) == 0
        shutil.copy(user_folders / "ID_1" / "img_000.png", user_folders / "ID_1" / "more.png")  # a change to write
    else:
        work.mkdir()
    locked = work / "data" if earlier_run else work
    capsys.readouterr()
    before = _snapshot(work)
    locked.chmod(0o500)
    try:
        assert _run(["--data_root", str(user_folders), "--output_dir", str(work)]) == 2
        assert f"no permission to write in {locked}" in _one_error_line(capsys)
        assert _snapshot(work) == before
    finally:
        locked.chmod(0o700)


def test_unwritable_folder_is_found_before_the_scan(
    user_folders: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Root-independent half of the test above: what os.access reports is turned into one line, first."""
    monkeypatch.setattr(prepare.os, "access", lambda *_: False)
    monkeypatch.setattr(prepare, "scan_dataset", lambda *a, **k: pytest.fail("scanned before checking"))
    assert _run(["--data_root", str(user_folders), "--output_dir", str(tmp_path / "w")]) == 2
    assert f"no permission to write in {tmp_path}" in _one_error_line(capsys)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EIO])
def test_a_failed_write_leaves_the_previous_set(
    code: int, user_folders: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    work = tmp_path / "w"
    assert _run(["--data_root", str(user_folders), "--output_dir", str(work)]) == 0
    for i in range(4):  # new images: dataset.json and split.json both change
        shutil.copy(user_folders / "ID_2" / f"img_{i:03d}.png", user_folders / "ID_1" / f"copy_{i}.png")
    before = _snapshot(work)
    calls: list[Path] = []
    real = prepare.atomic_write_json

    def fail_second(path: Path, obj: Any) -> Path:
        calls.append(Path(path))
        if len(calls) == 2:
            raise OSError(code, os.strerror(code), str(path))
        return real(path, obj)

    monkeypatch.setattr(prepare, "atomic_write_json", fail_second)
    capsys.readouterr()
    assert _run(["--data_root", str(user_folders), "--output_dir", str(work)]) == 2
    _one_error_line(capsys)
    assert len(calls) == 2 and _snapshot(work) == before  # the first file written is not renamed in either
    monkeypatch.setattr(prepare, "atomic_write_json", real)
    assert _run(["--data_root", str(user_folders), "--output_dir", str(work)]) == 0
    assert _snapshot(work) != before
