"""Built-in synthetic video set: each walker's micro-Doppler spectrogram seen through a moving time window.

A video is one simulated recording (``users.simulate_spectrogram`` with a longer duration) whose
spectrogram scrolls past a window of ``window_s`` seconds, advancing in real time (1 / fps per frame),
as a live radar display does: the gait's limb traces move right to left, one folder per user (class).
Layout: ``out_dir/ID_<u>/vid_<iiii>.mp4`` (H.264 at a constant quantiser, yuv444p, constant frame rate)
plus ``synthetic_video.json`` recording the parameters and whether the set is complete; every file is written
atomically, so an interrupted run resumes where it stopped. The same arguments give byte-identical files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from aetune.data.synthetic.generate import _check
from aetune.data.synthetic.manifest import check_output_folder
from aetune.data.synthetic.radar import DEFAULT_RADAR, RadarConfig, Spectrogram, to_image
from aetune.data.synthetic.users import UserProfile, draw_user, image_rng, simulate_spectrogram
from aetune.io import atomic_path, atomic_write_json, read_json
from aetune.optional import require

MANIFEST = "synthetic_video.json"
GENERATOR_VERSION = 1
"""Bumped whenever the rendering changes its frames, so a cached set is not silently reused."""
PIXEL_FORMAT = "yuv444p"
"""Full-resolution colour: yuv420p's halved colour planes cost a mean error of 14 / 255 on 32-px jet frames
(yuv444p at QP: 1.2). ffmpeg, PyAV and desktop players decode it; some browsers do not."""
QP = 12
"""x264 constant quantiser: near-lossless, so the codec adds little error for the autoencoder to learn. A
constant quantiser, not crf: crf's macroblock-tree rate control gave different bytes from run to run on
32-px frames (measured with PyAV 18 / x264 core 165), a constant quantiser never did."""


def video_path(out_dir: Path, user_id: int, video_index: int) -> Path:
    """``out_dir/ID_<user_id>/vid_<video_index:04d>.mp4``."""
    return out_dir / f"ID_{user_id}" / f"vid_{video_index:04d}.mp4"


def render_video(
    user: UserProfile,
    video_index: int,
    frames: int,
    size: int,
    fps: int,
    seed: int,
    window_s: float = 1.5,
    config: RadarConfig = DEFAULT_RADAR,
) -> np.ndarray:
    """Frames of video ``video_index`` of ``user``: (frames, size, size, 3) uint8 RGB, jet.

    The recording lasts ``window_s + (frames - 1) / fps`` seconds plus one STFT window; frame ``k`` shows
    the spectrogram columns of [k / fps, k / fps + window_s). The recording's random draws are those of
    image ``video_index`` of the image set (``users.image_rng``), over a longer recording.
    """
    span_s = window_s + (frames - 1) / fps
    long = dataclasses.replace(config, duration_s=span_s + config.window_s)
    spec = simulate_spectrogram(user, image_rng(seed, user.user_id, video_index), long).spectrogram
    t0 = spec.time_s[0]
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for k in range(frames):
        a, b = np.searchsorted(spec.time_s, [t0 + k / fps, t0 + k / fps + window_s])
        view = Spectrogram(spec.power_db[:, a:b], spec.velocity_mps, spec.time_s[a:b])
        out[k] = to_image(view, size, config.dynamic_range_db)
    return out


def write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    """Write (T, H, W, 3) uint8 frames as H.264 mp4 atomically; the same frames always give the same bytes."""
    av = require("av", "the synthetic video set")
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = PIXEL_FORMAT
        stream.options = {"qp": str(QP)}
        stream.codec_context.thread_count = 1
        for k, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = k  # explicit timestamps: without them x264's rate control varies from run to run
            container.mux(stream.encode(frame))
        container.mux(stream.encode())  # flush the encoder


def generate_video_dataset(
    out_dir: str | Path,
    num_users: int = 4,
    videos_per_user: int = 6,
    frames: int = 24,
    size: int = 64,
    fps: int = 8,
    seed: int = 42,
    progress: bool = True,
) -> Path:
    """Generate (or reuse) the synthetic micro-Doppler video set, one folder of mp4 files per user.

    Args:
        out_dir: destination folder; must be empty, absent, or hold a set from the same arguments.
        num_users: users (folders ID_1 .. ID_<num_users>), >= 1.
        videos_per_user: videos per user, >= 1.
        frames: frames per video, >= 1.
        size: side of the square frames in pixels, >= 16.
        fps: frame rate, >= 1; the window advances 1 / fps seconds per frame.
        seed: base seed of every user fingerprint and recording, >= 0.
        progress: show a progress bar.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        InvalidArgument: a bad number, or ``out_dir`` holds other files or a set made differently.
    """
    minimums = {"num_users": 1, "videos_per_user": 1, "frames": 1, "size": 16, "fps": 1, "seed": 0}
    values = {"num_users": num_users, "videos_per_user": videos_per_user, "frames": frames, "size": size}
    for name, value in {**values, "fps": fps, "seed": seed}.items():
        _check(name, value, minimums[name])
    out = Path(out_dir)
    params = {
        "generator_version": GENERATOR_VERSION,
        "num_users": num_users,
        "videos_per_user": videos_per_user,
        "frames": frames,
        "size": size,
        "fps": fps,
        "seed": seed,
        "radar": asdict(DEFAULT_RADAR),
    }
    manifest = check_output_folder(out, MANIFEST, params, "a synthetic video set")
    users = [draw_user(u, seed) for u in range(1, num_users + 1)]
    jobs = [(u, i) for u in users for i in range(videos_per_user) if not video_path(out, u.user_id, i).exists()]
    if not jobs and read_json(manifest).get("complete"):
        return out
    atomic_write_json(manifest, {"parameters": params, "complete": False})
    for user, i in tqdm(jobs, desc="synthetic micro-Doppler videos", unit="video", disable=not progress):
        write_mp4(video_path(out, user.user_id, i), render_video(user, i, frames, size, fps, seed), fps)
    atomic_write_json(manifest, {"parameters": params, "complete": True, "users": [asdict(u) for u in users]})
    return out
