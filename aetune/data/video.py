"""Videos for the ``taehv`` family: scan and validate a folder, decode frames once, sample clips from a cache.

Layout: one folder per user (class), each holding video files (``.mp4``, ``.webm``, ``.mov``; decoded with
PyAV) and/or folders of frame images (one folder = one video, frames in natural order: ``f_2`` before
``f_10``), at any depth. A video is the split unit: its ``VideoRecord`` carries ``relpath``, ``user`` and
``sha1`` like an image record, so ``aetune.data.split`` puts every frame of a video on one side.

The scan decodes every frame once (a file that opens but breaks half-way is found at step 3, not in
training) and rejects, with a reason and never a crash: empty, unreadable or stream-less files, videos
shorter than ``min_frames``, frame rates outside ``FPS_RANGE``, frames smaller than ``MIN_VIDEO_SIDE`` or
changing size, unreadable frames of a frame folder, and images lying loose in a user folder.

Training never decodes a video twice: ``build_clip_cache`` writes each video once, resized to the clip
resolution (or, for random resized crops, to a bounded short side with the aspect kept) and subsampled by the
frame stride, as a uint8 ``.npy`` (T, H, W, 3) under ``cache/video_<H>x<W>_s<stride>/`` (``video_short<S>_s<stride>``),
keyed by the file's size and modification time; ``VideoClips`` then memory-maps those files and serves
non-overlapping clips of ``frames`` frames (``aetune.data.kinds.video.RandomClips`` the training draws).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from aetune.data.cache import open_cached_array
from aetune.data.images import DECOMPRESSION_BOMB, IMAGE_SUFFIXES, load_rgb
from aetune.data.paired import write_data_documents
from aetune.data.prepare import PrepareSummary, check_output_dir
from aetune.data.prepared import DATASET_FILE, LABELS_FILE, SPLIT_FILE, PreparedData, check_dataset_name
from aetune.data.scan import (
    MIN_IMAGE_SIDE,
    OUTSIDE_USER_FOLDER,
    ScanResult,
    _is_hidden,
    descend_wrappers,
    is_synthetic_manifest,
    natural_key,
    rejection_summary,
)
from aetune.data.split import check_val_ratio, duplicate_groups, split_groups, split_records
from aetune.errors import AetuneError
from aetune.io import atomic_path, atomic_write_json, read_json
from aetune.optional import require

log = logging.getLogger(__name__)

KIND = "video"
"""``dataset.json``'s ``kind`` for a video dataset."""
VIDEO_SUFFIXES = frozenset({".mp4", ".webm", ".mov"})
"""Video file extensions step 3 accepts (lower case)."""
MIN_VIDEO_SIDE = MIN_IMAGE_SIDE
"""Smaller frames carry no usable picture (and break f16 autoencoders after resizing)."""
FPS_RANGE = (1.0, 240.0)
"""Frame rates outside it are a broken header or a slideshow, not a video to learn motion from."""
DEFAULT_MIN_FRAMES = 12
"""Shortest accepted video: one training clip of the seed's 12 frames."""
FRAMES_FORMAT = "frames"
"""``VideoRecord.format`` of a folder of frame images."""
CACHE_SUBDIR = "cache"


@dataclass
class VideoRecord:
    """One accepted video (a row of ``data/dataset.json``)."""

    relpath: str  # POSIX path of the file or frame folder relative to the data root; first part is the user
    user: str  # the user (class) folder: the label name
    width: int  # frame size in pixels, as stored
    height: int
    frames: int  # decoded frames
    fps: float | None  # average frame rate of the stream; None for a frame folder (no timing)
    format: str  # container (mp4, webm, mov) or "frames"
    sha1: str  # SHA-1 of every decoded RGB frame and its shape: equal for the same video in any container


def _frame_paths(folder: Path) -> list[Path]:
    """Visible image files directly in ``folder``, natural order."""
    files = [f for f in folder.iterdir() if f.is_file() and not _is_hidden(f.name)]
    return sorted((f for f in files if f.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: natural_key(p.name))


def _is_frame_folder(folder: Path) -> bool:
    """True when ``folder`` directly holds frame images and no video file (images beside videos are loose)."""
    return bool(_frame_paths(folder)) and not any(
        f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES for f in folder.iterdir()
    )


def _holds_videos(folder: Path) -> bool:
    """True when ``folder`` directly holds a video file or a folder of frame images."""
    for c in folder.iterdir():
        if _is_hidden(c.name):
            continue
        if (c.is_file() and c.suffix.lower() in VIDEO_SUFFIXES) or (c.is_dir() and _is_frame_folder(c)):
            return True
    return False


def find_video_root(root: str | Path) -> Path:
    """The folder holding the user folders of videos (see :func:`aetune.data.scan.descend_wrappers`)."""

    def holds(p: Path) -> bool:
        return any(_holds_videos(d) for d in p.iterdir() if d.is_dir() and not _is_hidden(d.name))

    return descend_wrappers(root, holds, "the folder that holds one folder of videos per user")


class _Digest:
    """Frame-by-frame SHA-1 and size check of a decoded video."""

    def __init__(self) -> None:
        self.sha1 = hashlib.sha1()
        self.shape: tuple[int, ...] | None = None
        self.frames = 0

    def add(self, rgb: np.ndarray, where: str) -> str:
        """Hash one (H, W, 3) frame; return a rejection reason, or "" when it fits."""
        if self.shape is None:
            self.shape = rgb.shape
            if min(rgb.shape[:2]) < MIN_VIDEO_SIDE:
                return f"too small ({rgb.shape[1]}x{rgb.shape[0]}, minimum side {MIN_VIDEO_SIDE} px)"
            self.sha1.update(f"{rgb.shape}".encode())
        elif rgb.shape != self.shape:
            h0, w0 = self.shape[:2]
            return f"frame size changes at {where} ({w0}x{h0} -> {rgb.shape[1]}x{rgb.shape[0]})"
        self.sha1.update(rgb.tobytes())
        self.frames += 1
        return ""


def _check_video_file(path: Path, min_frames: int) -> tuple[VideoRecord | None, str]:
    """Decode every frame of ``path``: (record without relpath/user, "") or (None, reason); bad data never raises."""
    av = require("av", "video data")
    if path.stat().st_size == 0:
        return None, "empty file (0 bytes)"
    digest = _Digest()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return None, "no video stream (an audio-only, empty or non-video file)"
            stream = container.streams.video[0]
            if stream.codec_context is None:  # PyAV's FFmpeg has no decoder for it
                return None, f"unsupported video codec ({stream.codec_tag or 'unknown'}): re-encode it as H.264 mp4"
            rate = stream.average_rate or stream.guessed_rate
            fmt = path.suffix.lower().lstrip(".")
            for frame in container.decode(stream):
                reason = digest.add(frame.to_ndarray(format="rgb24"), f"frame {digest.frames}")
                if reason:
                    return None, reason
    except (av.error.FFmpegError, OSError, ValueError) as e:  # PyAV's errors for corrupt or unsupported data
        return None, f"unreadable video: corrupt, truncated or not a video ({_av_reason(e, path)})"
    return _finish(digest, None if rate is None else float(Fraction(rate)), fmt, min_frames)


def _av_reason(e: BaseException, path: Path) -> str:
    """PyAV's message without the errno and the path it repeats: ``Invalid data found when processing input``."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    strerror = getattr(e, "strerror", None)
    return str(strerror) if strerror else text.replace(f": '{path}'", "")


def _check_frame_folder(folder: Path, min_frames: int) -> tuple[VideoRecord | None, str]:
    """Decode every frame image of ``folder``: (record without relpath/user, "") or (None, reason)."""
    digest = _Digest()
    for f in _frame_paths(folder):
        try:
            rgb = load_rgb(f)
        except DECOMPRESSION_BOMB as e:
            return None, f"frame {f.name}: refused as a possible decompression bomb ({e})"
        except UnidentifiedImageError:
            return None, f"frame {f.name}: not a decodable image (unknown or corrupt header)"
        except (OSError, ValueError, SyntaxError) as e:  # Pillow's errors for truncated or corrupt data
            return None, f"frame {f.name}: corrupt or truncated image ({e})"
        reason = digest.add(rgb, f.name)
        if reason:
            return None, reason
    return _finish(digest, None, FRAMES_FORMAT, min_frames)


def _finish(digest: _Digest, fps: float | None, fmt: str, min_frames: int) -> tuple[VideoRecord | None, str]:
    """The rules that need the whole video: length and frame rate."""
    if digest.frames < min_frames or digest.shape is None:
        return None, f"too short ({digest.frames} frames, minimum {min_frames})"
    if fmt != FRAMES_FORMAT and (fps is None or not math.isfinite(fps) or not FPS_RANGE[0] <= fps <= FPS_RANGE[1]):
        return None, f"odd frame rate ({fps} fps; expected {FPS_RANGE[0]:g} to {FPS_RANGE[1]:g})"
    h, w = digest.shape[:2]
    return VideoRecord("", "", w, h, digest.frames, fps, fmt, digest.sha1.hexdigest()), ""


def _candidates(user_dir: Path, root: Path, rejected: list[dict[str, str]]) -> list[Path]:
    """Video files and frame folders under ``user_dir``; everything else recorded in ``rejected``."""
    found = []
    for p in sorted(user_dir.rglob("*"), key=lambda p: natural_key(p.relative_to(user_dir).as_posix())):
        rel = p.relative_to(root).as_posix()
        hidden = next((part for part in p.relative_to(user_dir).parts if _is_hidden(part)), None)
        if hidden is not None:
            if p.is_file():
                rejected.append({"path": rel, "reason": f"hidden file or folder ({hidden})"})
        elif p.is_dir():
            if p != user_dir and _is_frame_folder(p):
                found.append(p)
        elif p.suffix.lower() in VIDEO_SUFFIXES:
            found.append(p)
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            if p.parent == user_dir or not _is_frame_folder(p.parent):
                reason = "image outside a frame folder (put the frames of each video in their own folder)"
                rejected.append({"path": rel, "reason": reason})
        else:
            rejected.append({"path": rel, "reason": f"not a video or frame-image extension ({p.suffix or 'none'})"})
    return found


def scan_videos(data_root: str | Path, min_frames: int = DEFAULT_MIN_FRAMES, progress: bool = True) -> ScanResult:
    """Decode every video under the user folders of ``data_root`` and sort it into accepted / rejected.

    Returns ``aetune.data.scan.ScanResult`` with ``VideoRecord`` items (no near-duplicate fingerprints: a
    video's unit is the whole video, identical copies are caught by ``sha1``).

    Raises:
        AetuneError: the root does not exist, ``min_frames`` < 1, or no user folder holds a usable video.
    """
    if min_frames < 1:
        raise AetuneError(f"min_frames must be >= 1, got {min_frames}")
    root = find_video_root(data_root)
    result = ScanResult(data_root=root, users=[])
    user_dirs = []
    for entry in sorted(root.iterdir(), key=lambda p: natural_key(p.name)):
        if _is_hidden(entry.name):
            result.rejected.append({"path": entry.name, "reason": "hidden file or folder (__MACOSX, dotfile)"})
        elif entry.is_dir():
            user_dirs.append(entry)
        elif not is_synthetic_manifest(entry):
            result.rejected.append({"path": entry.name, "reason": OUTSIDE_USER_FOLDER})
    jobs = [(d.name, p) for d in user_dirs for p in _candidates(d, root, result.rejected)]
    counts = {d.name: 0 for d in user_dirs}
    for user, p in tqdm(jobs, desc="checking videos", unit="video", disable=not progress):
        record, reason = _check_frame_folder(p, min_frames) if p.is_dir() else _check_video_file(p, min_frames)
        rel = p.relative_to(root).as_posix()
        if record is None:
            result.rejected.append({"path": rel, "reason": reason})
            continue
        record.relpath, record.user = rel, user
        result.accepted.append(record)  # type: ignore[arg-type]  (ScanResult holds any record with relpath/user/sha1)
        counts[user] += 1
    result.users = [d.name for d in user_dirs if counts[d.name]]
    result.empty_users = [d.name for d in user_dirs if not counts[d.name]]
    if not result.accepted:
        raise AetuneError(
            f"no usable video under {root} ({len(user_dirs)} folders, {len(result.rejected)} rejected): "
            f"{rejection_summary(result.rejected)}; expected one folder per user holding "
            f"{'/'.join(sorted(s[1:] for s in VIDEO_SUFFIXES))} files or folders of frame images, each of at least "
            f"{min_frames} frames"
        )
    return result


def prepare_video_dataset(
    data_root: str | Path,
    work_dir: str | Path,
    name: str = "videos",
    val_ratio: float = 0.1,
    seed: int = 42,
    min_frames: int = DEFAULT_MIN_FRAMES,
    progress: bool = True,
) -> PrepareSummary:
    """Step 3 for videos: scan, split by video (``aetune.data.split``), write ``data/*.json`` as a set.

    Raises:
        AetuneError: bad arguments, unwritable ``work_dir``, no usable video, or no training video (nothing
            is written then).
    """
    check_val_ratio(val_ratio)
    check_dataset_name(name)
    check_output_dir(work_dir)
    scan = scan_videos(data_root, min_frames, progress)
    labels = {user: i for i, user in enumerate(scan.users)}
    train, val = split_records(scan.accepted, val_ratio, seed)
    if not train:
        raise AetuneError(f"no training video: all {len(val)} fell in validation; add videos or lower --val_ratio")
    dataset = {
        "kind": KIND,
        "name": name,
        "data_root": str(scan.data_root),
        "num_users": len(labels),
        "num_images": len(scan.accepted),  # videos: the unit of the split
        "accepted": [{**asdict(r), "label": labels[r.user]} for r in scan.accepted],
        "rejected": scan.rejected,
        "duplicates": duplicate_groups(scan.accepted),
        "near_duplicates": [],  # not checked for videos: identical copies (sha1) are grouped
        "groups": [g for g in split_groups(scan.accepted) if len(g) > 1],
        "empty_users": scan.empty_users,
        "min_frames": min_frames,
        "conversion": "decoded with PyAV (files) or aetune.data.images.to_rgb (frame folders) to RGB uint8",
    }
    split = {"seed": seed, "val_ratio": val_ratio, "data_root": str(scan.data_root), "train": train, "val": val}
    changed = write_data_documents(work_dir, {LABELS_FILE: labels, DATASET_FILE: dataset, SPLIT_FILE: split})
    sides = {**dict.fromkeys(train, "train"), **dict.fromkeys(val, "val")}
    rows = []
    for user, label in labels.items():
        mine = [sides[r.relpath] for r in scan.accepted if r.user == user]
        rejected = sum(1 for r in scan.rejected if r["path"].split("/")[0] == user)
        rows.append((user, label, mine.count("train"), mine.count("val"), rejected))
    return PrepareSummary(
        data_root=scan.data_root,
        labels=labels,
        rows=rows,
        rejected=len(scan.rejected),
        duplicates=sum(len(g) - 1 for g in dataset["duplicates"]),
        near_duplicates=0,
        empty_users=scan.empty_users,
        changed=changed,
    )


FrameSize = tuple[int, int] | int
"""How cached frames are sized: (height, width) exactly, or an int S: the short side at most S, aspect kept (frames
random resized crops are cut from; never upscaled)."""


def frame_shape(height: int, width: int, size: FrameSize) -> tuple[int, int]:
    """The (height, width) a frame of ``height`` x ``width`` is cached at under ``size`` (see :data:`FrameSize`)."""
    if isinstance(size, tuple):
        return size
    scale = min(1.0, size / min(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resized(rgb: np.ndarray, size: FrameSize) -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width, 3) uint8 per :func:`frame_shape`, bicubic (the images' rule)."""
    height, width = frame_shape(rgb.shape[0], rgb.shape[1], size)
    if rgb.shape[:2] == (height, width):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BICUBIC))


def iter_frames(path: Path) -> Iterator[np.ndarray]:
    """The RGB uint8 (H, W, 3) frames of a video file or a frame folder, in order.

    Raises:
        AetuneError: a video that step 3 accepted can no longer be decoded (naming it).
    """
    if path.is_dir():
        for f in _frame_paths(path):
            try:
                yield load_rgb(f)
            except (OSError, ValueError, SyntaxError) as e:
                raise AetuneError(f"cannot decode {f} ({e}); re-run step 3 to re-scan the dataset") from e
        return
    av = require("av", "video data")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video or container.streams.video[0].codec_context is None:
                raise AetuneError(
                    f"{path} has no decodable video stream any more: it changed since step 3; re-run step 3 to "
                    "re-scan the dataset"
                )
            for frame in container.decode(container.streams.video[0]):
                yield frame.to_ndarray(format="rgb24")
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise AetuneError(
            f"cannot decode {path} ({_av_reason(e, path)}): it changed since step 3; re-run step 3 to re-scan the "
            "dataset"
        ) from e


def decode_video(path: Path, size: FrameSize, stride: int = 1) -> np.ndarray:
    """Every ``stride``-th frame of ``path``, resized per ``size``: (T, H, W, 3) uint8, T = ceil(frames / stride)."""
    frames = [_resized(rgb, size) for i, rgb in enumerate(iter_frames(path)) if i % stride == 0]
    if not frames:
        raise AetuneError(f"{path} has no frames; re-run step 3 to re-scan the dataset")
    return np.stack(frames)


def _size_name(size: FrameSize) -> str:
    """``16x24`` for an exact size, ``short64`` for a bounded short side."""
    return f"{size[0]}x{size[1]}" if isinstance(size, tuple) else f"short{size}"


def _source_key(path: Path, size: FrameSize, stride: int) -> str:
    """What a cached video depends on: the file (or frame files) by size and mtime, the resolution, the stride."""
    files = _frame_paths(path) if path.is_dir() else [path]
    h = hashlib.sha1(f"{_size_name(size)}/{stride}\n".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _cached_key(meta: Path) -> str | None:
    """The key recorded beside a cached video; None when the record is damaged (the video is decoded again)."""
    try:
        doc = read_json(meta)
    except (AetuneError, OSError):
        return None
    return doc.get("key") if isinstance(doc, dict) else None


def clip_cache_dir(work_dir: Path, size: FrameSize, stride: int) -> Path:
    """``<work>/cache/video_<H>x<W>_s<stride>/`` (or ``video_short<S>_...``): one ``.npy`` (+ ``.json``) per video."""
    return Path(work_dir) / CACHE_SUBDIR / f"video_{_size_name(size)}_s{stride}"


def cached_video(path: Path, relpath: str, cache_dir: Path, size: FrameSize, stride: int) -> Path:
    """The cache file of one video, decoded now unless a valid one exists (written atomically, array first)."""
    name = hashlib.sha1(relpath.encode("utf-8")).hexdigest()[:16]
    out, meta = cache_dir / f"{name}.npy", cache_dir / f"{name}.json"
    if not path.exists():
        raise AetuneError(f"{path} is missing: the data moved since step 3; pass --data_root or re-run step 3")
    key = _source_key(path, size, stride)
    if out.is_file() and meta.is_file() and _cached_key(meta) == key:
        return out
    frames = decode_video(path, size, stride)
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.save(f, frames)
    atomic_write_json(meta, {"key": key, "relpath": relpath, "frames": len(frames), "size": list(frames.shape[1:3])})
    return out


def build_clip_cache(
    prepared: PreparedData, split: str, size: FrameSize, stride: int, work_dir: Path, progress: bool = True
) -> list[Path]:
    """Cache every video of ``split`` (see the module docstring); return the files in split order.

    Args:
        prepared: step 3's data (video records).
        split: ``train``, ``val`` or ``all``.
        size: (height, width) of the clips, e.g. the seed's (480, 720); or the largest short side (:data:`FrameSize`).
        stride: keep every ``stride``-th frame (1: all).
        work_dir: the work directory.
    """
    if stride < 1 or min(size if isinstance(size, tuple) else (size,)) < 1:
        raise AetuneError(f"clip stride and size must be positive, got stride {stride}, size {size}")
    cache_dir = clip_cache_dir(work_dir, size, stride)
    samples = prepared.split(split)
    return [
        cached_video(prepared.path(s), s.relpath, cache_dir, size, stride)
        for s in tqdm(samples, desc=f"caching {split} videos", unit="video", leave=False, disable=not progress)
    ]


def _cached_frames(f: Path) -> int:
    """Frames of a cached video (its header only); one error line naming the file when it is damaged."""
    arr = open_cached_array(f, "video")
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise AetuneError(
            f"cached video {f} holds {arr.dtype} {list(arr.shape)}, not (T, H, W, 3) uint8: delete {f.parent} and "
            "re-run"
        )
    return int(arr.shape[0])


class VideoClips(Dataset):
    """Non-overlapping clips of cached videos: ``(clip (frames, 3, H, W) uint8, label)``.

    Clip ``k`` of a video of ``T`` cached frames holds frames ``k * frames .. (k + 1) * frames - 1``
    (``T // frames`` clips; the tail is left out). Clips stay uint8 until they reach the device.

    Args:
        files: cached ``.npy`` videos (``build_clip_cache``).
        labels: one label per file.
        frames: frames per clip (the seed: 12).

    Raises:
        AetuneError: no video is as long as one clip.
    """

    def __init__(self, files: list[Path], labels: list[int], frames: int) -> None:
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} videos but {len(labels)} labels")
        if frames < 1:
            raise AetuneError(f"frames per clip must be >= 1, got {frames}")
        self.files, self.labels, self.frames = files, labels, frames
        self.lengths = [_cached_frames(f) for f in files]  # cached frames per video
        self.index: list[tuple[int, int]] = []  # (video, first frame)
        short = []
        for v, (f, n) in enumerate(zip(files, self.lengths, strict=True)):
            self.index += [(v, k * frames) for k in range(n // frames)]
            if n < frames:
                short.append(f"{f.name} ({n})")
        if short:
            log.warning("%d videos are shorter than a clip of %d frames and give none: %s", len(short), frames, short)
        if not self.index:
            raise AetuneError(
                f"no video has {frames} frames after the frame stride: lower the frames per clip or the stride"
            )

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        v, start = self.index[i]
        clip = np.array(np.load(self.files[v], mmap_mode="r")[start : start + self.frames])  # copy (T, H, W, 3)
        return torch.from_numpy(clip).permute(0, 3, 1, 2), self.labels[v]  # (T, H, W, 3) -> (T, 3, H, W)


SYNTHETIC_VIDEO_DIRNAME = "synthetic_microdoppler_video"
"""Where step 3 ``--synthetic microdoppler_video`` writes the set, inside the work directory."""


def prepare_video_source(
    work_dir: Path, data_root: str | None, synthetic: bool, name: str, val_ratio: float, seed: int, min_frames: int,
    num_users: int = 4, videos_per_user: int = 6, image_size: int = 64, progress: bool = True,
) -> PrepareSummary:  # fmt: skip
    """Step 3 ``--kind video``: the user's folder of videos, or the synthetic set generated first; logs the table.

    Raises:
        AetuneError: both or neither of ``data_root`` and ``synthetic``, or what ``prepare_video_dataset`` raises.
    """
    from aetune.data.prepare import format_table
    from aetune.data.synthetic.video import generate_video_dataset

    if synthetic == (data_root is not None):
        raise AetuneError("videos: pass either --data_root DIR (one folder of videos per user) or --synthetic")
    if synthetic:
        root: str | Path = generate_video_dataset(
            Path(work_dir) / SYNTHETIC_VIDEO_DIRNAME, num_users, videos_per_user, max(24, min_frames), image_size,
            seed=seed, progress=progress,
        )  # fmt: skip
    else:
        root = data_root  # type: ignore[assignment]
    summary = prepare_video_dataset(root, work_dir, name, val_ratio, seed, min_frames, progress)
    log.info("video data root: %s", summary.data_root)
    log.info(format_table(summary))
    if summary.rejected:
        log.warning("%d files or folders rejected, with reasons, in data/dataset.json", summary.rejected)
    return summary
