"""Video data: the synthetic set, scan / validate with reasons, split by video, the clip cache and clips."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aetune.data import video as video_mod
from aetune.data.prepared import PreparedData, Sample
from aetune.data.split import split_records
from aetune.data.synthetic.users import draw_user
from aetune.data.synthetic.video import MANIFEST, generate_video_dataset, render_video, write_mp4
from aetune.data.video import VideoClips, build_clip_cache, decode_video, iter_frames, scan_videos
from aetune.errors import AetuneError, InvalidArgument

pytest.importorskip("av")

SMALL = {"num_users": 2, "videos_per_user": 2, "frames": 12, "size": 32, "fps": 8, "progress": False}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_video_dataset(tmp_path_factory.mktemp("synthetic") / "videos", **SMALL)


def test_synthetic_videos_are_deterministic_and_resume(synthetic: Path, tmp_path: Path) -> None:
    files = sorted(p.relative_to(synthetic) for p in synthetic.rglob("*.mp4"))
    assert [f.as_posix() for f in files] == [f"ID_{u}/vid_000{i}.mp4" for u in (1, 2) for i in (0, 1)]
    again = generate_video_dataset(tmp_path / "again", **SMALL)
    assert all((synthetic / f).read_bytes() == (again / f).read_bytes() for f in files)
    (again / files[1]).unlink()  # an interrupted run: the missing file is rendered again, identically
    generate_video_dataset(again, **SMALL)
    assert (again / files[1]).read_bytes() == (synthetic / files[1]).read_bytes()

    frames = np.stack(list(iter_frames(synthetic / files[0])))
    assert frames.shape == (12, 32, 32, 3) and frames.dtype == np.uint8
    rendered = render_video(draw_user(1), 0, frames=12, size=32, fps=8, seed=42)
    assert np.abs(frames.astype(int) - rendered).mean() < 3  # H.264 yuv444p at qp 12: close to what was rendered
    assert np.abs(np.diff(rendered.astype(int), axis=0)).mean() > 1  # the window moves: frames differ
    assert not np.array_equal(frames, np.stack(list(iter_frames(synthetic / files[2]))))  # users differ


def test_synthetic_refuses_bad_arguments_and_foreign_folders(synthetic: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="frames differ"):
        generate_video_dataset(synthetic, **{**SMALL, "frames": 13})
    with pytest.raises(InvalidArgument, match="size must be an integer >= 16"):
        generate_video_dataset(tmp_path / "small", **{**SMALL, "size": 8})
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("x")
    with pytest.raises(InvalidArgument, match=f"holds no {MANIFEST}"):
        generate_video_dataset(tmp_path / "busy", **SMALL)


def frames_folder(folder: Path, n: int, size: tuple[int, int] = (32, 32), seed: int = 0) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"f_{i}.png")


@pytest.fixture(scope="module")
def messy(synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user folder tree with every kind of good and bad entry; wrapped once, as Kaggle unpacks datasets."""
    root = tmp_path_factory.mktemp("messy") / "wrapper" / "videos"
    for user in ("ID_1", "ID_2"):
        shutil.copytree(synthetic / user, root / user)
    u1, u3 = root / "ID_1", root / "ID_3"
    shutil.copy(synthetic / "ID_1" / "vid_0000.mp4", u1 / "copy.mp4")  # an identical copy
    (u1 / "corrupt.mp4").write_bytes(os.urandom(2000))
    (u1 / "empty.webm").write_bytes(b"")
    (u1 / "truncated.mp4").write_bytes((synthetic / "ID_1" / "vid_0001.mp4").read_bytes()[:600])
    clip = render_video(draw_user(1), 5, frames=12, size=32, fps=8, seed=42)
    write_mp4(u1 / "short.mp4", clip[:3], fps=8)
    write_mp4(u1 / "fast.mp4", clip, fps=1000)
    write_mp4(u1 / "tiny.mp4", clip[:, :8, :8], fps=8)
    frames_folder(u1 / "frames_ok", 14)
    frames_folder(u1 / "frames_bad", 12, seed=1)
    (u1 / "frames_bad" / "f_5.png").write_bytes(b"\x89PNG not really")
    frames_folder(u1 / "frames_resized", 12, seed=2)
    Image.new("RGB", (40, 32)).save(u1 / "frames_resized" / "f_7.png")
    Image.new("RGB", (32, 32)).save(u1 / "loose.png")
    (u1 / "notes.txt").write_text("x")
    (u1 / ".hidden.mp4").write_bytes(b"")
    (root / "README.txt").write_text("x")
    u3.mkdir()
    (u3 / "broken.mov").write_bytes(os.urandom(500))
    return root.parent


def test_scan_accepts_good_videos_and_records_every_reject(messy: Path) -> None:
    scan = scan_videos(messy, min_frames=12, progress=False)
    assert scan.data_root == (messy / "videos").resolve()  # through the wrapper folder
    assert scan.users == ["ID_1", "ID_2"] and scan.empty_users == ["ID_3"]
    got = {r.relpath: r for r in scan.accepted}
    assert sorted(got) == sorted(
        ["ID_1/copy.mp4", "ID_1/frames_ok", "ID_1/vid_0000.mp4", "ID_1/vid_0001.mp4", "ID_2/vid_0000.mp4",
         "ID_2/vid_0001.mp4"]
    )  # fmt: skip
    v = got["ID_1/vid_0000.mp4"]
    assert (v.width, v.height, v.frames, v.fps, v.format, v.user) == (32, 32, 12, 8.0, "mp4", "ID_1")
    f = got["ID_1/frames_ok"]
    assert (f.frames, f.fps, f.format) == (14, None, "frames")
    assert got["ID_1/copy.mp4"].sha1 == v.sha1 != got["ID_1/vid_0001.mp4"].sha1
    reasons = {r["path"]: r["reason"] for r in scan.rejected}
    expected = {
        "ID_1/corrupt.mp4": "unreadable video",
        "ID_1/empty.webm": "empty file (0 bytes)",
        "ID_1/truncated.mp4": "unreadable video",
        "ID_1/short.mp4": "too short (3 frames, minimum 12)",
        "ID_1/fast.mp4": "odd frame rate (1000.0 fps; expected 1 to 240)",
        "ID_1/tiny.mp4": "too small (8x8, minimum side 16 px)",
        "ID_1/frames_bad": "frame f_5.png: ",
        "ID_1/frames_resized": "frame size changes at f_7.png (32x32 -> 40x32)",
        "ID_1/loose.png": "image outside a frame folder",
        "ID_1/notes.txt": "not a video or frame-image extension (.txt)",
        "ID_1/.hidden.mp4": "hidden file or folder",
        "ID_3/broken.mov": "unreadable video",
        "README.txt": "file outside any user folder",
    }
    assert set(reasons) == set(expected)
    for path, start in expected.items():
        assert reasons[path].startswith(start), (path, reasons[path])


def test_scan_without_any_usable_video_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "ID_1").mkdir()
    (tmp_path / "ID_1" / "a.mp4").write_bytes(b"nope")
    (tmp_path / "ID_2").mkdir()
    (tmp_path / "ID_2" / "b.mp4").write_bytes(b"nope")
    with pytest.raises(AetuneError, match=r"no usable video under .* \(2 folders, 2 rejected\)"):
        scan_videos(tmp_path, progress=False)
    with pytest.raises(AetuneError, match="does not exist"):
        scan_videos(tmp_path / "missing", progress=False)


def test_split_is_by_video_and_copies_stay_together(messy: Path) -> None:
    scan = scan_videos(messy, min_frames=12, progress=False)
    train, val = split_records(scan.accepted, val_ratio=0.5, seed=0)
    assert sorted(train + val) == sorted(r.relpath for r in scan.accepted) and not set(train) & set(val)
    assert ("ID_1/copy.mp4" in train) == ("ID_1/vid_0000.mp4" in train)  # identical pixels: one unit
    assert {p.split("/")[0] for p in val} == {"ID_1", "ID_2"}  # every user with 2+ videos validates


def prepared_for(scan_root: Path, relpaths: list[str]) -> PreparedData:
    samples = [Sample(r, r.split("/")[0], int(r.split("/")[0][-1]) - 1) for r in relpaths]
    return PreparedData(data_root=scan_root, name="videos", labels={"ID_1": 0, "ID_2": 1}, train=samples, val=[])


def test_clip_cache_decodes_each_video_once_and_clips_are_uint8(
    synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    relpaths = ["ID_1/vid_0000.mp4", "ID_2/vid_0001.mp4"]
    prepared = prepared_for(synthetic, relpaths)
    files = build_clip_cache(prepared, "train", (16, 24), 2, tmp_path, progress=False)
    assert [f.parent.name for f in files] == ["video_16x24_s2"] * 2
    arr = np.load(files[0])
    assert arr.shape == (6, 16, 24, 3) and arr.dtype == np.uint8  # 12 frames, every second one, resized
    np.testing.assert_array_equal(arr, decode_video(synthetic / relpaths[0], (16, 24), 2))

    def no_decoding(*args: object) -> None:
        raise AssertionError("a valid cache was decoded again")

    monkeypatch.setattr(video_mod, "decode_video", no_decoding)
    assert build_clip_cache(prepared, "train", (16, 24), 2, tmp_path, progress=False) == files
    src = synthetic / relpaths[1]
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))  # the video changed
    with pytest.raises(AssertionError, match="decoded again"):
        build_clip_cache(prepared, "train", (16, 24), 2, tmp_path, progress=False)
    monkeypatch.undo()
    files = build_clip_cache(prepared, "train", (16, 24), 2, tmp_path, progress=False)

    clips = VideoClips(files, [0, 1], frames=4)
    assert len(clips) == 2  # 6 cached frames per video: one clip of 4 each, the tail left out
    clip, label = clips[1]
    assert clip.shape == (4, 3, 16, 24) and clip.dtype.is_floating_point is False and label == 1
    np.testing.assert_array_equal(clip.permute(0, 2, 3, 1).numpy(), np.load(files[1])[:4])
    assert len(VideoClips(files, [0, 1], frames=3)) == 4
    with pytest.raises(AetuneError, match="no video has 7 frames"):
        VideoClips(files, [0, 1], frames=7)


def test_frame_folders_cache_like_videos(messy: Path, tmp_path: Path) -> None:
    prepared = prepared_for(messy / "videos", ["ID_1/frames_ok"])
    (file,) = build_clip_cache(prepared, "train", (32, 32), 1, tmp_path, progress=False)
    arr = np.load(file)
    assert arr.shape == (14, 32, 32, 3)
    np.testing.assert_array_equal(arr[10], np.asarray(Image.open(messy / "videos" / "ID_1" / "frames_ok" / "f_10.png")))
