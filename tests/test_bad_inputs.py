"""Bad inputs of every data kind and family (issue 19): videos, volumes, LQ/GT pairs, Hugging Face folders,
weights of another family, non-finite config values, a flat image folder, the synthetic sets' own manifests
and a missing package. Each ends in a per-file rejection with its reason or in one ``error:`` line (exit 2)
that names the file and the fix, with nothing half-written. Tiny files in ``tmp_path``; no training."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import types
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import step3_prepare_dataset as step3
from aetune.cli import run_main
from aetune.config import load_config
from aetune.data import volumes as vol
from aetune.data.scan import SYNTHETIC_MANIFESTS, scan_dataset
from aetune.errors import AetuneError
from aetune.models.loading import describe_checkpoint, guess_family, read_state_dict
from aetune.safe_load import CheckpointError
from tests.conftest import make_user_folders, write_png

REPO = Path(__file__).resolve().parent.parent


def _step3(args: list[str]) -> int:
    return run_main(step3.main, step3.parse_args([*args, "--no_progress"]))


def _one_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The single ``error:`` line on stderr (and no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _script(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(REPO / "step3_prepare_dataset.py"), *args, "--no_progress"]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)


def _assert_one_line_exit_2(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------------- videos


def _mp4(path: Path, frames: int = 6, size: int = 32, seed: int = 0) -> Path:
    from aetune.data.synthetic.video import write_mp4

    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(path, np.random.default_rng(seed).integers(0, 256, (frames, size, size, 3), dtype=np.uint8), fps=8)
    return path


def _no_video_stream(path: Path) -> Path:
    """A mov container with a declared stream and no frame: PyAV finds no video stream (an empty video)."""
    av = pytest.importorskip("av")
    c = av.open(str(path), "w", format="mov")
    s = c.add_stream("mjpeg", rate=8)
    s.width = s.height = 32
    s.pix_fmt = "yuvj420p"
    c.start_encoding()
    c.close()
    return path


def test_bad_videos_are_rejected_each_with_its_reason(tmp_path: Path) -> None:
    from aetune.data.video import scan_videos

    pytest.importorskip("av")
    root = tmp_path / "videos"
    good = _mp4(root / "u1" / "good.mp4")
    u = root / "u1"
    (u / "text.mp4").write_text("not a video at all\n" * 10)  # a non-video file with a video name
    (u / "cut.mp4").write_bytes(good.read_bytes()[:40])  # truncated inside the header
    (u / "empty.webm").write_bytes(b"")
    _no_video_stream(u / "zero.mov")  # 0 frames
    Image.new("RGB", (32, 32)).save(u / "still.mp4", format="PNG")  # one picture named .mp4
    scan = scan_videos(root, min_frames=4, progress=False)
    assert [r.relpath for r in scan.accepted] == ["u1/good.mp4"]
    reasons = {r["path"]: r["reason"] for r in scan.rejected}
    assert reasons["u1/text.mp4"].startswith("unreadable video: corrupt, truncated or not a video")
    assert reasons["u1/cut.mp4"].startswith("unreadable video")
    assert reasons["u1/empty.webm"] == "empty file (0 bytes)"
    assert reasons["u1/zero.mov"].startswith("no video stream")
    assert reasons["u1/still.mp4"] == "too short (1 frames, minimum 4)"


def test_unsupported_codec_is_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream PyAV's FFmpeg cannot decode has no codec context: rejected, never a crash."""
    import aetune.data.video as video

    av = pytest.importorskip("av")

    class Container:
        streams = types.SimpleNamespace(video=[types.SimpleNamespace(codec_context=None, codec_tag="XYZ1")])

        def __enter__(self) -> Container:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    fake = types.SimpleNamespace(open=lambda path: Container(), error=av.error)
    monkeypatch.setattr(video, "require", lambda *a, **k: fake)
    (tmp_path / "odd.mov").write_bytes(b"x" * 100)
    record, reason = video._check_video_file(tmp_path / "odd.mov", 4)
    assert record is None and reason.startswith("unsupported video codec (XYZ1): re-encode it")
    with pytest.raises(AetuneError, match=r"odd.mov has no decodable video stream.*re-run step 3"):
        list(video.iter_frames(tmp_path / "odd.mov"))


def test_a_video_that_changed_after_step3_is_one_line_naming_it(tmp_path: Path) -> None:
    from aetune.data.video import VideoClips, decode_video

    pytest.importorskip("av")
    zero = _no_video_stream(tmp_path / "zero.mov")
    with pytest.raises(AetuneError, match=r"zero.mov has no decodable video stream.*re-run step 3"):
        decode_video(zero, (16, 16))
    (tmp_path / "text.mp4").write_text("garbage")
    with pytest.raises(AetuneError, match=r"cannot decode .*text.mp4 \(.*\): it changed since step 3; re-run step 3"):
        decode_video(tmp_path / "text.mp4", (16, 16))
    with pytest.raises(AetuneError, match=r"gone.mp4 is missing.*--data_root"):
        from aetune.data.video import cached_video

        cached_video(tmp_path / "gone.mp4", "u/gone.mp4", tmp_path / "cache", (16, 16), 1)
    broken = tmp_path / "cache" / "v.npy"
    broken.parent.mkdir()
    broken.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(AetuneError, match=r"cached video .*v.npy is damaged .*: delete .*cache and re-run"):
        VideoClips([broken], [0], 4)


def test_step3_with_no_usable_video_is_one_line_and_writes_nothing(tmp_path: Path, capsys) -> None:
    pytest.importorskip("av")
    (tmp_path / "videos" / "u1").mkdir(parents=True)
    (tmp_path / "videos" / "u1" / "a.mp4").write_text("not a video")
    (tmp_path / "videos" / "u1" / "b.webm").write_bytes(b"")
    work = tmp_path / "work"
    assert _step3(["--kind", "video", "--data_root", str(tmp_path / "videos"), "--output_dir", str(work)]) == 2
    line = _one_error(capsys)
    assert "no usable video under" in line and "unreadable video" in line and "(e.g. u1/a.mp4)" in line
    assert not (work / "data").exists()


# --------------------------------------------------------------------------------------------------- volumes


def _npy_header_only(path: Path, shape: tuple[int, ...], descr: str = "<f4") -> Path:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    path.write_bytes(buf.getvalue() + b"\0" * 64)
    return path


def _nifti(path: Path, data: np.ndarray) -> Path:
    nib = pytest.importorskip("nibabel")
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


GOOD = np.random.default_rng(0).random((12, 12, 12)).astype(np.float32)


@pytest.mark.parametrize(
    ("name", "write", "reason"),
    [
        ("complex.npy", lambda p: np.save(p, GOOD.astype(np.complex64)), "voxels of dtype complex64: expected"),
        ("bool.npy", lambda p: np.save(p, GOOD > 0.5), "voxels of dtype bool: expected"),
        (
            "object.npy",
            lambda p: np.save(p, np.empty((8, 8, 8), dtype=object), allow_pickle=True),
            "voxels of dtype pickled Python objects",
        ),
        ("text.npy", lambda p: np.save(p, np.full((8, 8, 8), "a")), "voxels of dtype <U1"),
        ("flat.npy", lambda p: np.save(p, GOOD[0]), "2-D array (12, 12): a volume needs 3 spatial axes"),
        ("five.npy", lambda p: np.save(p, GOOD[None, None]), "5-D array (1, 1, 12, 12, 12): expected 3-D"),
        ("nan.npy", lambda p: np.save(p, np.where(GOOD > 0.9, np.nan, GOOD)), "non-finite voxels"),
        ("inf.npy", lambda p: np.save(p, np.where(GOOD > 0.9, np.inf, GOOD)), "non-finite voxels"),
        ("const.npy", lambda p: np.save(p, np.full((12, 12, 12), 3.0)), "constant volume (every voxel is 3)"),
        ("corrupt.npy", lambda p: p.write_bytes(os.urandom(300)), "unreadable or truncated .npy file (ValueError"),
        ("cut.npy", lambda p: _npy_header_only(p, (64, 64, 64)), "unreadable or truncated .npy file"),
        ("corrupt.nii.gz", lambda p: p.write_bytes(os.urandom(300)), "unreadable or truncated .nii.gz file"),
        ("complex.nii.gz", lambda p: _nifti(p, GOOD.astype(np.complex64)), "voxels of dtype complex64"),
        ("huge.npy", lambda p: _npy_header_only(p, (100_000, 100_000, 100_000)), "over the limit of 268,435,456"),
    ],
)
def test_bad_volumes_are_rejected_with_their_reason(tmp_path: Path, name: str, write: Any, reason: str) -> None:
    path = tmp_path / name
    write(path)
    record, why = vol.check_volume(path)
    assert record is None and reason in why, why


def test_truncated_nifti_is_a_reason(tmp_path: Path) -> None:
    raw = _nifti(tmp_path / "good.nii.gz", GOOD).read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    record, why = vol.check_volume(tmp_path / "cut.nii.gz")
    assert record is None and why.startswith("unreadable or truncated .nii.gz file"), why


def test_a_huge_declared_shape_is_refused_before_anything_is_allocated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """npy, npz and NIfTI headers are read first; the data of a 10^15-voxel claim is never asked for."""
    nifti = _nifti(tmp_path / "x.nii", GOOD)
    header = bytearray(nifti.read_bytes())
    struct.pack_into("<8h", header, 40, 3, 30000, 30000, 30000, 1, 1, 1, 1)  # NIfTI-1 dim[0..7]
    (tmp_path / "huge.nii").write_bytes(bytes(header))
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:  # np.savez's layout: one .npy member per array
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**5,) * 3})
        z.writestr("volume.npy", buf.getvalue())
    _npy_header_only(tmp_path / "huge.npy", (10**5,) * 3)

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the voxels were read")

    monkeypatch.setattr(np, "load", never)
    monkeypatch.setattr(np, "asanyarray", never)
    for name in ("huge.npy", "huge.npz", "huge.nii"):
        record, why = vol.check_volume(tmp_path / name)
        assert record is None and "over the limit of 268,435,456 (1 GiB as float32)" in why, (name, why)
        assert "the header declares" in why and "crop or downsample it" in why


def test_a_volume_that_changed_after_step3_is_one_line_naming_it(tmp_path: Path) -> None:
    from aetune.data.kinds.volume import VolumeDataset, _load

    transform = vol.VolumeTransform()
    bad = tmp_path / "v.npy"
    np.save(bad, GOOD.astype(np.complex64))
    with pytest.raises(AetuneError, match=r"v.npy: voxels of dtype complex64.*re-run step 3"):
        _load(bad, transform, (8, 8, 8))
    with pytest.raises(AetuneError, match=r"gone.npy is missing.*--data_root"):
        _load(tmp_path / "gone.npy", transform, (8, 8, 8))
    cache = tmp_path / "cache" / "k.npy"
    cache.parent.mkdir()
    cache.write_bytes(b"broken")
    with pytest.raises(AetuneError, match=r"cached volume .*k.npy is damaged .*: delete .*cache and re-run"):
        VolumeDataset([cache], [0])[0]


# ----------------------------------------------------------------------------------------------------- pairs


def test_unpaired_and_mismatched_pairs_are_rejected_with_reasons(tmp_path: Path) -> None:
    from aetune.data.paired import scan_pairs

    root = tmp_path / "pairs" / "Blur"
    for name in ("a", "b"):
        write_png(root / "LQ" / f"{name}.png", 1)
        write_png(root / "GT" / f"{name}.png", 2)
    write_png(root / "LQ" / "lq_only.png", 3)
    write_png(root / "GT" / "gt_only.png", 4)
    write_png(root / "LQ" / "big.png", 5, size=40)
    write_png(root / "GT" / "big.png", 6, size=32)
    scan = scan_pairs(tmp_path / "pairs", progress=False)
    assert sorted(r.relpath for r in scan.accepted) == ["Blur/GT/a.png", "Blur/GT/b.png"]
    reasons = {r["path"]: r["reason"] for r in scan.rejected}
    assert reasons["Blur/LQ/lq_only.png"] == "unpaired: no GT/lq_only.* beside this LQ image"
    assert reasons["Blur/GT/gt_only.png"] == "unpaired: no LQ/gt_only.* beside this GT image"
    assert reasons["Blur/LQ/big.png"].startswith("size mismatch: LQ 40x40, GT 32x32 (pass --pair_resize")


def test_empty_lq_gt_folders_and_a_missing_val_root_are_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "pairs" / "LQ").mkdir(parents=True)
    (tmp_path / "pairs" / "GT").mkdir()
    work = tmp_path / "work"
    assert _step3(["--data_root", str(tmp_path / "pairs"), "--output_dir", str(work)]) == 2
    line = _one_error(capsys)
    assert "no usable LQ/GT pair" in line and "hold no file" in line and "same names" in line
    for name in ("a", "b", "c"):
        write_png(tmp_path / "pairs" / "LQ" / f"{name}.png", 1)
        write_png(tmp_path / "pairs" / "GT" / f"{name}.png", 2)
    missing = tmp_path / "no_such_val"
    args = ["--data_root", str(tmp_path / "pairs"), "--val_root", str(missing), "--output_dir", str(work)]
    assert _step3(args) == 2
    line = _one_error(capsys)
    assert f"--val_root {missing} does not exist" in line and "leave --val_root out" in line
    (tmp_path / "val" / "LQ").mkdir(parents=True)
    write_png(tmp_path / "val" / "LQ" / "x.png", 3)  # a validation root whose LQ has no GT
    args[3] = str(tmp_path / "val")
    assert _step3(args) == 2
    line = _one_error(capsys)
    assert "no usable validation pair (--val_root" in line and "LQ/x.png: unpaired" in line
    assert not (work / "data").exists()


# ------------------------------------------------------------------------------------- Hugging Face folders


@pytest.fixture(scope="module")
def hf_saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    datasets = pytest.importorskip("datasets")
    out = tmp_path_factory.mktemp("hf") / "saved"
    images = [Image.fromarray(np.full((32, 32, 3), 40 * i, dtype=np.uint8)) for i in range(4)]
    ds = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 0, 1]}).cast_column("image", datasets.Image())
    ds.save_to_disk(str(out))
    return out


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda p: (p / "state.json").write_text("{}"), r"KeyError.*the folder is damaged or incomplete"),
        (lambda p: (p / "state.json").write_text("{not json"), r"JSONDecodeError.*copy it again"),
        (lambda p: [f.unlink() for f in p.glob("*.arrow")], r"FileNotFoundError.*write it again with save_to_disk"),
        (lambda p: [f.write_bytes(os.urandom(200)) for f in p.glob("*.arrow")], r"the folder is damaged"),
    ],
)
def test_broken_save_to_disk_folders_are_one_line(hf_saved: Path, tmp_path: Path, damage: Any, expected: str) -> None:
    from aetune.data.hf_source import prepare_hf_dataset

    broken = tmp_path / "broken"
    shutil.copytree(hf_saved, broken)
    damage(broken)
    with pytest.raises(AetuneError, match=rf"cannot read .*broken as save_to_disk files \(.*{expected}") as info:
        prepare_hf_dataset(broken, tmp_path / "work", progress=False, cache_dir=str(tmp_path / "cache"))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "work" / "data").exists()


def test_parquet_without_an_image_column_names_the_columns(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    import pyarrow as pa
    import pyarrow.parquet as pq

    from aetune.data.hf_source import prepare_hf_dataset

    folder = tmp_path / "pq"
    folder.mkdir()
    pq.write_table(pa.table({"text": ["a", "b"], "score": [1, 2]}), folder / "train-00000-of-00001.parquet")
    cache = str(tmp_path / "cache")
    with pytest.raises(AetuneError, match=r"no Image column .*columns: text \(Value\), score \(Value\).*--hf_image"):
        prepare_hf_dataset(folder, tmp_path / "work", progress=False, cache_dir=cache)
    (folder / "train-00000-of-00001.parquet").write_bytes(os.urandom(400))  # unreadable: not parquet
    with pytest.raises(AetuneError, match=r"cannot read .*pq as parquet files \(ArrowInvalid.*remove that file"):
        prepare_hf_dataset(folder, tmp_path / "work", progress=False, cache_dir=cache)


# --------------------------------------------------------------------------------------------------- weights


def _ldm(linear_proj: bool = True) -> dict[str, torch.Tensor]:
    state = {
        "encoder.conv_in.weight": torch.zeros(8, 3, 3, 3),
        "encoder.down.0.block.0.conv1.weight": torch.zeros(8, 8, 3, 3),
        "post_quant_conv.weight": torch.zeros(4, 4, 1, 1),
    }
    if linear_proj:
        state["linear_proj.weight"] = torch.zeros(16, 4, 1, 1)
    return state


TAESD_ENCODER = {"0.weight": torch.zeros(4, 3, 3, 3), "1.conv.0.weight": torch.zeros(4, 4, 3, 3)}
FAMILIES = [
    (_ldm(), "a vavae (VA-VAE) checkpoint"),
    (_ldm(False), "a kl (LDM KL-VAE) checkpoint"),
    (TAESD_ENCODER, "a released TAESD encoder half"),
    ({"1.weight": torch.zeros(1), "3.conv.0.weight": torch.zeros(1)}, "a released TAESD decoder half"),
    ({"encoder.layers.0.weight": torch.zeros(1)}, "a diffusers AutoencoderTiny"),
    ({"encoder.0.weight": torch.zeros(1), "decoder.1.weight": torch.zeros(1)}, "family taesd or taehv"),
    ({"decoder_layers.0.attention.attention.query.weight": torch.zeros(1)}, "a released RAE decoder model.pt"),
    ({"decoder.decoder_layers.0.x": torch.zeros(1), "encoder.y": torch.zeros(1)}, "a diffusers AutoencoderRAE"),
    ({"embeddings.patch_embeddings.projection.weight": torch.zeros(1)}, "a ViT vision encoder"),
    ({"quant_conv_mu.conv.weight": torch.zeros(1)}, "a MONAI 3-D AutoencoderKL (family kl3d)"),
    ({"x_embedder.proj.weight": torch.zeros(1), "blocks.0.attn.qkv.weight": torch.zeros(1)}, "a DiT / LightningDiT"),
    ({"encoder.down_blocks.0.resnets.0.conv1.weight": torch.zeros(1)}, "a diffusers AutoencoderKL"),
]


@pytest.mark.parametrize(("state", "words"), FAMILIES)
def test_guess_family_names_the_layout(state: dict[str, torch.Tensor], words: str) -> None:
    assert words in (guess_family(state) or "")


def test_unknown_keys_guess_nothing() -> None:
    assert guess_family({"weight": torch.zeros(1)}) is None


def test_weights_of_another_family_name_what_they_look_like(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from aetune.families.rae.loading import detect_layout
    from aetune.families.tiny.loading import to_aetune_keys

    taesd = tmp_path / "taesd_encoder.safetensors"
    save_file(TAESD_ENCODER, str(taesd))
    vavae = tmp_path / "vavae.pt"
    torch.save({"state_dict": _ldm()}, vavae)
    rae_model = types.SimpleNamespace(
        encoder=types.SimpleNamespace(name="dinov2-b", spec=types.SimpleNamespace(file_prefix=""))
    )
    state, _ = read_state_dict(taesd)
    with pytest.raises(
        CheckpointError, match=r"taesd_encoder.safetensors is not an RAE file.*looks like a released TAESD"
    ):
        detect_layout(state, rae_model)  # type: ignore[arg-type]
    state, name = read_state_dict(vavae)
    with pytest.raises(CheckpointError, match=r"vavae.pt is not a tiny-autoencoder .*looks like a vavae \(VA-VAE\)"):
        to_aetune_keys(state, name)
    assert "looks like a released TAESD encoder half" in describe_checkpoint(TAESD_ENCODER)


def test_kl3d_refuses_another_family_and_other_shapes(tmp_path: Path) -> None:
    pytest.importorskip("monai")
    from aetune.families.kl3d.loading import load_kl3d_weights
    from aetune.models import create_autoencoder, get_family

    model = create_autoencoder("kl3d", **get_family("kl3d").tiny)
    vavae = tmp_path / "vavae.pt"
    torch.save(_ldm(), vavae)
    with pytest.raises(CheckpointError, match=r"vavae.pt is not a MONAI 3-D AutoencoderKL .*looks like a vavae"):
        load_kl3d_weights(model, vavae)
    own = tmp_path / "own.pt"
    torch.save(model.state_dict(), own)
    assert load_kl3d_weights(model, own).loaded == len(model.state_dict())
    wider = create_autoencoder("kl3d", **{**get_family("kl3d").tiny, "latent_channels": 4})
    torch.save(wider.state_dict(), tmp_path / "wider.pt")
    with pytest.raises(CheckpointError, match=r"wider.pt does not fit the model \(kl3d\(.*\)\): .* there and"):
        load_kl3d_weights(model, tmp_path / "wider.pt")


def _safetensors_parts(tmp_path: Path) -> tuple[bytes, dict[str, Any], bytes]:
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(4, 4)}, str(tmp_path / "good.safetensors"))
    raw = (tmp_path / "good.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return raw, json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _with_header(header: dict[str, Any], body: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda raw, h, body: struct.pack("<Q", 2**40) + raw[8:], "is a truncated safetensors file"),
        (lambda raw, h, body: raw[:8] + b"{" + b"x" * 40 + raw[49:], "is not a valid safetensors file"),
        (
            lambda raw, h, body: _with_header({"a": {**h["a"], "data_offsets": [0, 10**6]}}, body),
            "is not a valid safetensors file",
        ),
        (lambda raw, h, body: _with_header({"a": {**h["a"], "dtype": "Q7"}}, body), "is not a valid safetensors"),
        (lambda raw, h, body: raw[:-20], "is not a valid safetensors file"),
    ],
)
def test_corrupt_safetensors_headers_are_one_line(tmp_path: Path, damage: Any, message: str) -> None:
    raw, header, body = _safetensors_parts(tmp_path)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(damage(raw, header, body))
    with pytest.raises(CheckpointError, match=rf"bad.safetensors {message}.*: download or copy it again") as info:
        read_state_dict(bad)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.learning_rate=nan", "train.learning_rate = nan is not a finite number: give a finite number in 0.0"),
        ("train.learning_rate=.inf", "train.learning_rate = inf is not a finite number"),
        ("train.d_learning_rate=-.inf", "train.d_learning_rate = -inf is not a finite number"),
        ("train.stages.1.learning_rate=nan", "train.stages.1.learning_rate = nan"),
        ("loss.kl_weight=nan", "loss.kl_weight = nan is not a finite number: give a finite number >= 0.0"),
        ("train.stages.1.loss.kl_weight=.nan", "train.stages.1.loss.kl_weight = nan"),
        ("train.optimizer.g.betas=[0.5, .nan]", "train.optimizer.g.betas = [0.5, nan] is not a finite number"),
        ("train.max_hours=inf", "train.max_hours = inf is not a finite number"),
    ],
)
def test_non_finite_config_values_name_their_key(override: str, key: str) -> None:
    with pytest.raises(AetuneError, match="^" + key.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        load_config(None, [override])


def test_step4_learning_rate_nan_is_one_line_naming_it_and_writes_nothing(tmp_path: Path, capsys) -> None:
    import step4_train as step4

    work = tmp_path / "work"
    args = step4.parse_args(["--output_dir", str(work), "--config", "demo", "--learning_rate", "nan"])
    assert run_main(step4.main, args) == 2
    assert "train.learning_rate = nan is not a finite number" in _one_error(capsys)
    assert not work.exists()


# ---------------------------------------------------------------------------------------------- small items


def test_a_flat_image_folder_says_why_in_its_one_line(tmp_path: Path, capsys) -> None:
    for i in range(3):
        write_png(tmp_path / "flat" / f"img_{i}.png", i)
    work = tmp_path / "work"
    assert _step3(["--data_root", str(tmp_path / "flat"), "--output_dir", str(work)]) == 2
    line = _one_error(capsys)
    assert "the 3 images lie directly in" in line and "(e.g. img_0.png)" in line and "one sub-folder" in line
    (tmp_path / "flat" / "u1").mkdir()
    (tmp_path / "flat" / "u1" / "bad.png").write_bytes(b"\x89PNG broken")
    assert _step3(["--data_root", str(tmp_path / "flat"), "--output_dir", str(work)]) == 2
    line = _one_error(capsys)  # with a user folder: the commonest reasons, counted, with an example each
    assert "3 x file outside any user folder (e.g. img_0.png)" in line and "1 x " in line and "u1/bad.png" in line
    assert not (work / "data").exists()


def test_the_synthetic_sets_own_manifest_is_not_a_rejected_file(tmp_path: Path) -> None:
    from aetune.data.synthetic.generate import MANIFEST as IMAGES
    from aetune.data.synthetic.paired import PAIRED_MANIFEST
    from aetune.data.synthetic.phantoms import MANIFEST as PHANTOMS
    from aetune.data.synthetic.video import MANIFEST as VIDEOS

    assert {IMAGES, PAIRED_MANIFEST, PHANTOMS, VIDEOS} == SYNTHETIC_MANIFESTS
    root = make_user_folders(tmp_path / "set", {"ID_1": 2, "ID_2": 2})
    (root / IMAGES).write_text(json.dumps({"parameters": {}, "complete": True}))
    (root / PHANTOMS).write_text("a user's file that only shares the name")  # not a manifest: still rejected
    scan = scan_dataset(root, progress=False)
    assert scan.rejected == [{"path": PHANTOMS, "reason": "file outside any user folder"}]


def test_a_missing_package_is_one_line_with_the_install_command(tmp_path: Path) -> None:
    """A step script in an environment without numpy (venv not activated): the flags' modules import it."""
    fake = tmp_path / "fake" / "numpy"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'numpy'\", name='numpy')\n")
    env = {**os.environ, "PYTHONPATH": str(fake.parent)}
    proc = _script(["--synthetic", "microdoppler", "--output_dir", str(tmp_path / "w")], env)
    line = _assert_one_line_exit_2(proc)
    assert "'numpy' is not installed" in line and "python -m pip install -r requirements.txt" in line
    assert not (tmp_path / "w").exists()


def test_run_main_names_the_family_requirements_and_keeps_aetune_bugs(capsys) -> None:
    def needs(name: str) -> Any:
        def main(args: object) -> int:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

        return main

    args = step3.parse_args(["--no_progress"])
    assert run_main(needs("nibabel"), args) == 2
    line = _one_error(capsys)
    assert "'nibabel' is not installed" in line and "python -m pip install -r requirements/kl3d.txt" in line
    with pytest.raises(ModuleNotFoundError):  # a module of aetune itself: a bug, with its traceback
        run_main(needs("aetune.no_such_module"), args)


def test_precision_reasons_nest_no_parentheses() -> None:
    from aetune.setup.env import GpuFact, advise_precision

    for capability, name in (((7, 5), "Tesla T4"), ((8, 0), "A100"), ((6, 0), "P100")):
        gpu = GpuFact(index=0, name=name, capability=capability, memory_gb=16.0)
        _, reason = advise_precision([gpu])
        shown = f"precision 16-mixed ({reason})"  # how step 4 prints it
        assert "((" not in shown and "))" not in shown and reason.count("(") == reason.count(")") == 0, reason
