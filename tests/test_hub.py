"""Weight registry, download, verification, offline discovery, bundle and manifest, on a fake hub."""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from aetune.errors import AetuneError
from aetune.setup import hub
from aetune.setup.weights_registry import MODELS, REGISTRY, TORCH_HUB, WeightSpec


def _blob(seed: int, n: int) -> bytes:
    return bytes((seed * 7919 + i * 104729) % 251 for i in range(n))


def _safetensors_blob(n: int) -> bytes:
    """A real (tiny) safetensors file: step 2 checks that a file without a known hash is one."""
    return safetensors.numpy.save({"w": np.arange(n, dtype=np.float32)})


class FakeRemote:
    """Stands in for the Hugging Face Hub and download.pytorch.org: serves bytes, records requests.

    Three weights: a Hub file with no known hash, a URL file with full sha256 and size that lands in
    the torch hub cache, and an optional URL file checked only by the hash prefix in its name.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        self.hf_bytes, self.net_bytes, self.aux_bytes = _safetensors_blob(700), _blob(2, 5000), _blob(3, 700)
        net_sha = hashlib.sha256(self.net_bytes).hexdigest()
        aux_sha = hashlib.sha256(self.aux_bytes).hexdigest()
        self.specs = (
            WeightSpec(
                name="hf_model",
                filename="org-model.safetensors",
                description="a Hub weight",
                licence="MIT",
                approx_gb=3e-6,
                repo_id="org/model",
                repo_file="model.safetensors",
                revision="main",
                patterns=("*org--model*/snapshots/*/model.safetensors",),
            ),
            WeightSpec(
                name="net",
                filename=f"net-{net_sha[:8]}.pth",
                description="a torch hub weight",
                licence="BSD",
                approx_gb=5e-6,
                url=f"https://weights.invalid/net-{net_sha[:8]}.pth",
                bytes=len(self.net_bytes),
                sha256=net_sha,
                target=TORCH_HUB,
            ),
            WeightSpec(
                name="aux",
                filename=f"aux-{aux_sha[:8]}.pth",
                description="optional",
                licence="BSD",
                approx_gb=7e-7,
                url=f"https://weights.invalid/aux-{aux_sha[:8]}.pth",
                default=False,
            ),
        )
        self.served = {self.specs[1].url: self.net_bytes, self.specs[2].url: self.aux_bytes}
        self.hf_calls: list[tuple[str, str]] = []
        self.ranges: list[str | None] = []
        self.honour_range = True
        monkeypatch.setattr(hub, "REGISTRY", self.specs)
        monkeypatch.setattr(hub, "hf_hub_download", self.hf_hub_download)
        monkeypatch.setattr(hub.urllib.request, "urlopen", self.urlopen)
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def hf_hub_download(self, repo_id: str, filename: str, *, revision: str, local_dir: Path) -> str:
        self.hf_calls.append((repo_id, filename))
        path = Path(local_dir) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.hf_bytes)
        return str(path)

    def urlopen(self, req, timeout: float | None = None):
        data = self.served[req.full_url]
        rng = req.get_header("Range")
        self.ranges.append(rng)
        start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1)) if rng and self.honour_range else 0
        resp = io.BytesIO(data[start:])
        resp.status = 206 if start else 200
        resp.headers = {"Content-Length": str(len(data) - start)}
        return resp


@pytest.fixture
def remote(monkeypatch, tmp_path) -> FakeRemote:
    return FakeRemote(monkeypatch, tmp_path)


def fetch(remote: FakeRemote, work: Path, manifest: dict, **kw) -> dict[str, hub.Outcome]:
    return {s.name: hub.ensure_weight(s, work, manifest, **kw) for s in remote.specs}


def test_registry_is_consistent():
    names = [s.name for s in REGISTRY]
    files = [s.filename for s in REGISTRY]
    assert len(set(names)) == len(names) and len(set(files)) == len(files)
    assert {"vavae", "vavae_latents_stats", "dinov2_vitl14", "lpips_vgg16", "lpips_alex", "fid_inception"} <= set(names)
    for s in REGISTRY:
        assert (s.repo_id is None) != (s.url is None), s.name
        assert s.target in (MODELS, TORCH_HUB) and s.licence
        prefix = hub._HASH_IN_NAME.search(s.filename)
        if s.sha256:
            assert re.fullmatch(r"[0-9a-f]{64}", s.sha256)
            assert prefix and s.sha256.startswith(prefix.group(1)), f"{s.name}: hash contradicts its file name"
    assert hub.get_spec("vavae").repo_id == "hustvl/vavae-imagenet256-f16d32-dinov2"
    assert hub.get_spec("dinov2_vitl14").repo_id == "timm/vit_large_patch14_dinov2.lvd142m"
    with pytest.raises(AetuneError, match="did you mean 'lpips_vgg16'"):
        hub.get_spec("lpips_vgg")


def test_download_verify_manifest_and_place(remote, tmp_path):
    work, manifest = tmp_path / "work", {}
    out = fetch(remote, work, manifest)
    assert {k: o.status for k, o in out.items()} == {"hf_model": "downloaded", "net": "downloaded", "aux": "downloaded"}
    on_disk = hub.read_manifest(work)
    assert on_disk == manifest
    hf, net, aux = on_disk["hf_model"], on_disk["net"], on_disk["aux"]
    assert Path(hf["path"]) == work / "models" / "org-model.safetensors"
    assert Path(hf["path"]).read_bytes() == remote.hf_bytes
    assert hf["check"] == "recorded" and hf["sha256"] == hashlib.sha256(remote.hf_bytes).hexdigest()
    assert hf["source"] == "hf://org/model/model.safetensors" and hf["revision"] == "main"
    assert net["check"] == "sha256" and net["bytes"] == 5000
    assert aux["check"] == "sha256-prefix"
    assert sorted(p.name for p in (work / "models").iterdir()) == sorted(
        ["manifest.json", *(s.filename for s in remote.specs)]
    )  # no staging folder, no .part file left
    link = hub.torch_hub_path(remote.specs[1].filename)
    assert link.is_symlink() and link.resolve() == Path(net["path"]).resolve()
    assert not hub.torch_hub_path(remote.specs[0].filename).exists()  # models target: no link

    again = fetch(remote, work, manifest)
    assert {o.status for o in again.values()} == {"ok"}
    assert len(remote.hf_calls) == 1 and len(remote.ranges) == 2  # nothing fetched twice


def test_corrupt_download_is_deleted(remote, tmp_path):
    work, manifest = tmp_path / "work", {}
    remote.served[remote.specs[1].url] = remote.net_bytes[:-1] + b"X"  # right size, wrong content
    out = hub.ensure_weight(remote.specs[1], work, manifest)
    assert out.status == "corrupt" and not out.available
    assert "expected " + remote.specs[1].sha256 in out.notes[0]
    assert not (work / "models" / remote.specs[1].filename).exists()
    assert manifest == {} and not hub.manifest_file(work).exists()


def test_truncated_download_fails_size_check(remote, tmp_path):
    remote.served[remote.specs[1].url] = remote.net_bytes[:100]
    out = hub.ensure_weight(remote.specs[1], tmp_path / "work", {})
    assert out.status == "corrupt" and "has 100 bytes, expected 5000" in out.notes[0]


@pytest.mark.parametrize("honour_range", [True, False])
def test_resume_partial_download(remote, tmp_path, honour_range):
    remote.honour_range = honour_range
    work = tmp_path / "work"
    part = work / "models" / (remote.specs[1].filename + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(remote.net_bytes[:1234])
    out = hub.ensure_weight(remote.specs[1], work, {})
    assert out.status == "downloaded"
    assert remote.ranges == ["bytes=1234-"]
    assert out.path.read_bytes() == remote.net_bytes  # appended, or restarted when Range was ignored
    assert not part.exists()


def test_network_failure_is_reported_not_raised(remote, tmp_path, monkeypatch):
    def offline(*a, **k):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(hub, "hf_hub_download", offline)
    out = hub.ensure_weight(remote.specs[0], tmp_path / "work", {})
    assert out.status == "missing" and "Name or service not known" in out.notes[0]


def test_offline_discovery_by_name_pattern_and_hash(remote, tmp_path):
    attached = tmp_path / "input"
    snap = attached / "hf-cache" / "models--org--model" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "model.safetensors").write_bytes(remote.hf_bytes)  # by Hugging Face cache pattern
    (attached / "renamed.bin").write_bytes(remote.net_bytes)  # by size + sha256
    (attached / "decoy.bin").write_bytes(b"\0" * 5000)  # same size, wrong hash: skipped
    (attached / remote.specs[2].filename).write_bytes(remote.aux_bytes)  # by name
    work, manifest = tmp_path / "work", {}
    out = fetch(remote, work, manifest, dirs=hub.WeightsDirs([attached]), online=False)
    assert {k: o.status for k, o in out.items()} == {"hf_model": "found", "net": "found", "aux": "found"}
    assert out["hf_model"].path == (snap / "model.safetensors").resolve()
    assert out["net"].path == (attached / "renamed.bin").resolve()
    assert hub.torch_hub_path(remote.specs[1].filename).resolve() == (attached / "renamed.bin").resolve()
    assert remote.hf_calls == [] and remote.ranges == []
    assert hub.resolve_weight(work, "net") == out["net"].path


def test_offline_missing_names_the_file(remote, tmp_path):
    out = hub.ensure_weight(remote.specs[1], tmp_path / "work", {}, online=False)
    assert out.status == "missing" and remote.ranges == []
    msg = hub.missing_message(remote.specs[1])
    assert remote.specs[1].filename in msg and "5,000 bytes" in msg and "--weights_dir" in msg


def test_bundle_round_trip(remote, tmp_path):
    work, manifest = tmp_path / "work", {}
    fetch(remote, work, manifest)
    bundle = tmp_path / "bundle"
    assert hub.write_bundle(manifest, bundle, list(remote.specs)) == []
    assert sorted(p.name for p in bundle.iterdir()) == sorted([hub.BUNDLE_INDEX, *(s.filename for s in remote.specs)])
    assert os.stat(bundle / "org-model.safetensors").st_ino == os.stat(manifest["hf_model"]["path"]).st_ino

    # a fresh offline session finds everything in the bundle, checking the recorded hashes
    work2, manifest2 = tmp_path / "work2", {}
    out = fetch(remote, work2, manifest2, dirs=hub.WeightsDirs([bundle]), online=False)
    assert {o.status for o in out.values()} == {"found"}
    assert manifest2["hf_model"]["check"] == "sha256"  # unknown to the registry, known to the bundle

    (bundle / "org-model.safetensors").unlink()
    (bundle / "org-model.safetensors").write_bytes(remote.hf_bytes[::-1])  # tampered copy
    out = hub.ensure_weight(remote.specs[0], tmp_path / "work3", {}, dirs=hub.WeightsDirs([bundle]), online=False)
    assert out.status == "missing" and "has sha256" in out.notes[0]


def test_bundle_lists_weights_not_downloaded(remote, tmp_path):
    assert hub.write_bundle({}, tmp_path / "bundle", list(remote.specs)) == ["hf_model", "net", "aux"]


def test_resolve_weight(remote, tmp_path):
    work = tmp_path / "work"
    with pytest.raises(hub.WeightsUnavailable, match=r"org-model.safetensors.*not in the manifest"):
        hub.resolve_weight(work, "hf_model")
    fetch(remote, work, {})
    hub.torch_hub_path(remote.specs[1].filename).unlink()
    path = hub.resolve_weight(work, "net")
    assert path.read_bytes() == remote.net_bytes
    assert hub.torch_hub_path(remote.specs[1].filename).is_symlink()  # placed again (new session)
    path.write_bytes(b"short")
    with pytest.raises(hub.WeightsUnavailable, match="gone or changed"):
        hub.resolve_weight(work, "net")
    with pytest.raises(AetuneError, match="unknown weight"):
        hub.resolve_weight(work, "nope")


def test_reverify_catches_changed_file(remote, tmp_path):
    work, manifest = tmp_path / "work", {}
    fetch(remote, work, manifest)
    path = Path(manifest["net"]["path"])
    path.write_bytes(remote.net_bytes[::-1])  # same size, so only a re-hash notices
    assert hub.ensure_weight(remote.specs[1], work, manifest, online=False).status == "ok"
    out = hub.ensure_weight(remote.specs[1], work, manifest, reverify=True)
    assert out.status == "downloaded" and path.read_bytes() == remote.net_bytes
    assert "has sha256" in out.notes[0]


def _record(work: Path, name: str, data: bytes = b"weights") -> Path:
    path = work / "models" / hub.get_spec(name).filename  # where step 2 puts it
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    manifest = hub.read_manifest(work)
    manifest[name] = {"path": str(path), "bytes": len(data), "sha256": None, "source": "test", "revision": None}
    hub.atomic_write_json(hub.manifest_file(work), manifest)
    return path


def test_recorded_weights_reach_the_run_config(tmp_path, monkeypatch):
    from aetune.config import load_config

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    work = tmp_path / "work"
    cfg = load_config("vavae")
    hub.attach_recorded_weights(cfg, work)  # nothing recorded: left to the loaders' own errors
    assert cfg.teacher.weights_path is None and hub.recorded_weight(work, "vavae") is None
    teacher = _record(work, "dinov2_vitl14")
    vgg = _record(work, "lpips_vgg16")
    hub.attach_recorded_weights(cfg, work)
    assert cfg.teacher.weights_path == str(teacher)
    assert hub.torch_hub_path("vgg16-397923af.pth").resolve() == vgg.resolve()  # where lpips looks
    demo = load_config("demo")
    hub.attach_recorded_weights(demo, work)
    assert demo.teacher.weights_path is None  # random teacher: never pointed at a file
    teacher.write_bytes(b"changed size")
    assert hub.recorded_weight(work, "dinov2_vitl14") is None


def test_step4_starts_from_the_familys_recorded_release_only_at_its_released_options(tmp_path):
    from aetune.config import load_config

    work = tmp_path / "work"
    vavae = load_config("vavae")
    assert hub.recorded_release(vavae, work, True) is None  # step 2 has not fetched it
    release = _record(work, "vavae")
    assert hub.recorded_release(vavae, work, True) == release
    assert hub.recorded_release(vavae, work, released_options=False) is None  # model.args: would not fit
    assert hub.recorded_release(load_config("kl"), work, True) is None  # kl registers no released model


def test_every_file_of_a_release_starts_the_run_and_sections_find_their_files(tmp_path, caplog):
    """Tiny's two halves start a taesd run together; RAE's decoder starts it, its encoder and DINO files reach the
    sections that load them (as the VA-VAE teacher's)."""
    from aetune.config import load_config

    work = tmp_path / "work"
    taesd = load_config("taesd")
    encoder = _record(work, "taesd_encoder")
    assert (
        hub.recorded_release(taesd, work, True) is None and "not taesd_decoder" in caplog.text
    )  # half a release: said
    decoder = _record(work, "taesd_decoder")
    assert hub.recorded_release(taesd, work, True) == Path(
        f"{encoder},{decoder}"
    )  # both, as --pretrained_path takes them

    from aetune.train.start import at_released_options as at_defaults
    from aetune.train.start import default_start

    assert not at_defaults(taesd)  # the preset's f16c32 model: the released f8c4 halves would not fit it
    rae = load_config("rae")
    assert at_defaults(rae) and not at_defaults(load_config("rae_demo"))  # the preset writes the released options out
    assert hub.recorded_release(rae, work, True) is None
    released = _record(work, "rae_decoder_dinov2_xl")
    assert hub.recorded_release(rae, work, True) == released == default_start(rae, work)
    assert default_start(taesd, work) is None  # recorded, but the preset's model does not fit it
    enc, dino = _record(work, "rae_encoder_dinov2_reg_b"), _record(work, "rae_disc_dino_vits8")
    _record(work, "rae_encoder_mae_b16")
    hub.attach_recorded_weights(rae, work)
    assert (rae.encoder.weights_path, rae.discriminator.weights_path) == (str(enc), str(dino))
    mae = load_config("rae", ["model.args.encoder=mae-b16"])
    hub.attach_recorded_weights(mae, work)
    assert mae.encoder.weights_path == str(work / "models" / "vit-mae-base.pytorch_model.bin")  # model.args' encoder
    demo = load_config("rae_demo")
    hub.attach_recorded_weights(demo, work)
    assert demo.encoder.weights_path is None and demo.discriminator.weights_path is None  # random: never a file


def test_hypir_finds_step_2s_sd2_folder(tmp_path):
    from aetune.config import load_config

    work = tmp_path / "work"
    cfg = load_config("hypir")
    for part in ("unet", "vae"):
        _record(work, f"sd21_base_{part}")
    hub.attach_recorded_weights(cfg, work)
    assert "sd2_dir" not in cfg.model.args  # the text encoder is missing: left to the loader's error
    text = _record(work, "sd21_base_text_encoder")
    hub.attach_recorded_weights(cfg, work)
    assert cfg.model.args["sd2_dir"] == str(text.parent)
    given = load_config("hypir", ["model.args.sd2_dir=/elsewhere"])
    hub.attach_recorded_weights(given, work)
    assert given.model.args["sd2_dir"] == "/elsewhere"  # a folder the user named is kept
    assert "sd2_dir" not in load_config("hypir_demo").model.args


CORRUPT_MANIFESTS = {
    "empty": (b"", "is empty"),
    "truncated": (b'{"lpips_vgg16": {"path": "/w/vgg.pth", "by', "is not valid JSON"),
    "binary": (b"\xff\xfe\x00garbage", "is not valid JSON"),
    "list": (b"[1, 2]", "holds a JSON list, not a name -> entry map"),
    "entry not an object": (b'{"lpips_vgg16": "/w/vgg.pth"}', "entry 'lpips_vgg16' that is a str"),
    "no bytes": (b'{"lpips_vgg16": {"path": "/w/vgg.pth"}}', "without a valid 'bytes' \\(found None\\)"),
    "path not a string": (b'{"lpips_vgg16": {"path": 7, "bytes": 1}}', "without a valid 'path' \\(found 7\\)"),
}


@pytest.mark.parametrize("case", CORRUPT_MANIFESTS, ids=list(CORRUPT_MANIFESTS))
def test_corrupt_manifest_is_one_line_naming_the_file_and_the_fix(tmp_path, case):
    from aetune.config import load_config

    content, problem = CORRUPT_MANIFESTS[case]
    work = tmp_path / "work"
    path = hub.manifest_file(work)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    cfg = load_config("vavae")
    readers = {
        "resolve_weight": lambda: hub.resolve_weight(work, "lpips_vgg16"),
        "recorded_weight": lambda: hub.recorded_weight(work, "lpips_vgg16"),  # optional, but never silent about this
        "attach_recorded_weights": lambda: hub.attach_recorded_weights(cfg, work),  # what steps 4 and 5 call
    }
    for name, read in readers.items():
        with pytest.raises(hub.ManifestError, match=problem) as err:
            read()
        msg = str(err.value)
        assert "\n" not in msg, name
        assert (
            msg.startswith(str(path))
            and msg.endswith("downloading nothing it finds")
            and "step2_download_models.py" in msg
        )
    assert path.read_bytes() == content  # nothing rewritten by a reader
    assert cfg.teacher.weights_path is None


def test_manifest_entry_pointing_at_a_missing_file(tmp_path):
    work = tmp_path / "work"
    _record(work, "lpips_vgg16").unlink()
    with pytest.raises(hub.WeightsUnavailable) as err:
        hub.resolve_weight(work, "lpips_vgg16")
    msg = str(err.value)
    assert "\n" not in msg and "vgg16-397923af.pth" in msg
    assert f"recorded at {work / 'models' / 'vgg16-397923af.pth'} but that file is gone or changed" in msg
    assert str(hub.manifest_file(work)) in msg
    assert hub.recorded_weight(work, "lpips_vgg16") is None


def test_a_page_saved_as_a_weight_is_not_trusted_on_first_use(remote, tmp_path):
    remote.hf_bytes = b"<!DOCTYPE html><html><body>Access to model org/model is restricted</body></html>"
    out = hub.ensure_weight(remote.specs[0], tmp_path / "work", {})
    assert out.status == "corrupt" and "is an HTML or XML page" in out.notes[0]
    assert not (tmp_path / "work" / "models" / remote.specs[0].filename).exists()


def test_damaged_bundle_index_is_one_line(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for content, problem in (
        (b"{", "is not a valid bundle index"),
        (b'{"a": {"filename": 3}}', "is not a bundle index"),
    ):
        (bundle / hub.BUNDLE_INDEX).write_bytes(content)
        with pytest.raises(hub.ManifestError, match=problem) as err:
            hub.WeightsDirs([bundle])
        assert "\n" not in str(err.value) and str(bundle / hub.BUNDLE_INDEX) in str(err.value)
        assert "--bundle" in str(err.value)
