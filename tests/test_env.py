"""Environment facts and advice: architecture support, precision, batch size, disk, requirements."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from aetune.errors import AetuneError
from aetune.setup import env
from aetune.setup.env import GpuFact

KAGGLE_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]
"""A current cu12.8+/cu13 build: Pascal (sm_60) dropped."""
P100 = GpuFact(0, "Tesla P100-PCIE-16GB", (6, 0), 15.89)
T4 = GpuFact(0, "Tesla T4", (7, 5), 14.74)
A100 = GpuFact(0, "NVIDIA A100-SXM4-80GB", (8, 0), 79.25)
H100 = GpuFact(0, "NVIDIA H100 80GB HBM3", (9, 0), 79.19)


@pytest.mark.parametrize(
    ("capability", "archs", "expected"),
    [
        ((6, 0), KAGGLE_ARCHS, False),  # P100 on current Kaggle torch
        ((6, 0), ["sm_50", "sm_60", "sm_70"], True),  # cu126 build
        ((7, 5), KAGGLE_ARCHS, True),
        ((8, 6), ["sm_80"], True),  # a cubin runs on later minors of its major
        ((8, 0), ["sm_86"], False),  # ... not on earlier ones
        ((9, 0), ["sm_80", "sm_86"], False),  # nor on another major
        ((9, 0), ["sm_80", "compute_80"], True),  # PTX JIT-compiles forward
        ((9, 0), ["sm_90a"], True),
        ((9, 1), ["sm_90a"], False),  # arch-specific cubins run on exactly that arch
        ((12, 0), KAGGLE_ARCHS, True),
        ((7, 5), [], False),  # CPU-only build
    ],
)
def test_arch_supported(capability, archs, expected):
    assert env.arch_supported(capability, archs) is expected


@pytest.mark.parametrize(
    ("gpus", "precision"),
    [
        ([], "32"),
        ([T4], "16-mixed"),
        ([A100], "bf16-mixed"),
        ([H100], "bf16-mixed"),
        ([P100], "32"),
        ([A100, T4], "16-mixed"),
    ],
)
def test_advise_precision(gpus, precision):
    advice, reason = env.advise_precision(gpus)
    assert advice == precision
    assert reason
    if gpus == [T4]:
        assert "bf16" in reason  # says why not bf16 even if is_bf16_supported() claims it


def test_advise_batch_size():
    assert env.advise_batch_size([T4]) == 8  # the seed: 8 at 256 px on a 16 GB T4
    assert env.advise_batch_size([T4, T4]) == 8  # per device
    assert env.advise_batch_size([A100]) == 32
    assert env.advise_batch_size([GpuFact(0, "RTX 3080", (8, 6), 9.8)]) == 4
    assert env.advise_batch_size([GpuFact(0, "A10G", (8, 6), 22.1)]) == 8
    assert env.advise_batch_size([T4], image_size=512) == 2
    assert env.advise_batch_size([T4], image_size=64) == 128
    assert env.advise_batch_size([]) == 2
    assert env.advise_batch_size([GpuFact(0, "small", (7, 5), 4.0)], image_size=1024) == 1


def test_assert_gpus_usable(monkeypatch):
    with pytest.raises(AetuneError) as err:
        env.assert_gpus_usable([P100], KAGGLE_ARCHS)
    msg = str(err.value)
    assert "\n" not in msg and "GPU 0 Tesla P100-PCIE-16GB (sm_60)" in msg and '"GPU T4 x2"' in msg
    # a build that exists: torch 2.14 + cu126 (2.15 has no CUDA 12.6 wheels), torchvision pinned with it
    assert "pip install torch==2.14.* torchvision==0.29.* --index-url https://download.pytorch.org/whl/cu126" in msg
    assert "newer builds cannot run this GPU" in msg
    future = GpuFact(0, "NVIDIA B300", (10, 3), 288.0)
    with pytest.raises(AetuneError, match=r"sm_103.*install a newer torch build with sm_103 kernels") as err:
        env.assert_gpus_usable([future], ["sm_80", "sm_90"])
    assert "torch==2.14" not in str(err.value)  # the P100 pin would not help a GPU newer than the build
    probed = []
    monkeypatch.setattr(env, "_probe_cuda", lambda i: probed.append(i))
    env.assert_gpus_usable([T4, GpuFact(1, "Tesla T4", (7, 5), 14.74)], KAGGLE_ARCHS)
    assert probed == [0, 1]
    monkeypatch.setattr(env, "_probe_cuda", lambda i: "CUDA error: unspecified launch failure")
    with pytest.raises(AetuneError, match="cannot use it: CUDA error: unspecified launch failure"):
        env.assert_gpus_usable([T4], KAGGLE_ARCHS)
    env.assert_gpus_usable([], KAGGLE_ARCHS)


def test_gpu_facts_without_cuda():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert env.gpu_facts() == []


def test_detect_platform(monkeypatch):
    for var in ("KAGGLE_KERNEL_RUN_TYPE", "COLAB_RELEASE_TAG", "COLAB_GPU"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(env, "KAGGLE_WORKING", Path("/nonexistent/kaggle/working"))
    assert env.detect_platform() == "local"
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-2025")
    assert env.detect_platform() == "colab"
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert env.detect_platform() == "kaggle"


def test_disk_facts_applies_quota(tmp_path):
    with open(tmp_path / "old.ckpt", "wb") as f:
        f.truncate(3 * env.GIB // 4)  # sparse: counts 0.75 GiB against the quota, uses no disk
    (tmp_path / "dangling.pth").symlink_to(tmp_path / "gone.pth")
    facts = env.disk_facts(tmp_path / "run" / "not_yet_created", tmp_path, quota_gb=1.0)
    assert facts["quota_used_gb"] == pytest.approx(0.75)
    assert facts["free_gb"] == pytest.approx(0.25)
    assert env.disk_facts(tmp_path)["free_gb"] > 0.25  # without the quota: the real disk


def test_can_reach_closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert env.can_reach("127.0.0.1", port, timeout=1.0) is False


@pytest.fixture
def requirements(tmp_path: Path) -> Path:
    path = tmp_path / "requirements.txt"
    path.write_text(
        "# aetune\n"
        "torch>=1.0\n"
        "numpy>=1.0  # arrays\n"
        "pyyaml>=999.0\n"
        "aetune-not-a-real-package>=1.0\n"
        "\n"
        'pywin32>=1.0; sys_platform == "win32"\n'
    )
    return path


def test_check_requirements(requirements):
    by_name = {s.name: s for s in env.check_requirements(requirements)}
    assert set(by_name) == {"torch", "numpy", "pyyaml", "aetune-not-a-real-package"}
    assert by_name["torch"].protected and by_name["torch"].satisfied
    assert by_name["numpy"].satisfied and not by_name["numpy"].protected
    assert by_name["pyyaml"].installed is not None and not by_name["pyyaml"].satisfied
    assert by_name["aetune-not-a-real-package"].installed is None


def test_check_requirements_errors(tmp_path):
    with pytest.raises(AetuneError, match="not found"):
        env.check_requirements(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("numpy>=1\n-r other.txt\n")
    with pytest.raises(AetuneError, match=r"bad.txt:2"):
        env.check_requirements(bad)


def test_install_requirements_pins_torch(monkeypatch, requirements, tmp_path):
    calls = []

    def fake_pip(args):
        constraints = Path(args[args.index("-c") + 1]).read_text()
        calls.append((args, constraints))
        return 0, "Successfully installed"

    monkeypatch.setattr(env, "_run_pip", fake_pip)
    statuses = env.check_requirements(requirements)
    installed = env.install_requirements(statuses)
    assert installed == ["pyyaml>=999.0", "aetune-not-a-real-package>=1.0"]
    (args, constraints) = calls[0]
    assert args[0] == "install" and args[-2:] == installed
    assert not any(a.startswith("torch") for a in args)  # never asks pip for torch
    assert f"torch=={env._version('torch')}" in constraints.splitlines()
    assert f"torchvision=={env._version('torchvision')}" in constraints.splitlines()
    env.install_requirements(statuses, wheels_dir=tmp_path)
    assert calls[1][0][3:6] == ["--no-index", "--find-links", str(tmp_path)]
    assert env.install_requirements([s for s in statuses if s.satisfied]) == []
    assert len(calls) == 2


def test_install_requirements_failures(monkeypatch, requirements):
    statuses = env.check_requirements(requirements)
    monkeypatch.setattr(
        env,
        "_run_pip",
        lambda args: (1, "WARNING: Retrying ... NewConnectionError: Temporary failure in name resolution"),
    )
    with pytest.raises(AetuneError, match="no internet.*attach a Kaggle dataset.*turn Internet on"):
        env.install_requirements(statuses)
    monkeypatch.setattr(env, "_run_pip", lambda args: (1, "ERROR: ResolutionImpossible\nconflict with numpy"))
    with pytest.raises(AetuneError, match="pip could not install.*conflict with numpy"):
        env.install_requirements(statuses)
