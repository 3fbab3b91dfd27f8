"""Step 1 end to end on fake machines: environment.json contents, messages and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import step1_setup_environment as step1
from aetune import env
from aetune.cli import run_main
from aetune.env import GpuFact

KAGGLE_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]
T4_0, T4_1 = GpuFact(0, "Tesla T4", (7, 5), 14.74), GpuFact(1, "Tesla T4", (7, 5), 14.74)


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """A fake machine: no GPU, internet up, pip never really runs. Tests set ``gpus`` and ``pip``."""
    state = {"gpus": [], "pip_calls": [], "pip_result": (0, "ok")}
    monkeypatch.setattr(env, "gpu_facts", lambda: state["gpus"])
    monkeypatch.setattr(env, "_arch_list", lambda: KAGGLE_ARCHS)
    monkeypatch.setattr(env, "_probe_cuda", lambda i: None)
    monkeypatch.setattr(env, "_nvidia_smi_gpus", lambda: [g.name for g in state["gpus"]])
    monkeypatch.setattr(env, "can_reach", lambda host, **kw: True)
    monkeypatch.setattr(env, "detect_platform", lambda: "local")

    def fake_pip(args):
        state["pip_calls"].append(args)
        return state["pip_result"]

    monkeypatch.setattr(env, "_run_pip", fake_pip)
    req = tmp_path / "requirements.txt"
    req.write_text("torch>=1.0\nnumpy>=1.0\n")
    state["req"] = req
    return state


def run(tmp_path: Path, machine: dict, *flags: str) -> tuple[int, dict]:
    args = step1.parse_args(
        ["--output_dir", str(tmp_path / "work"), "--requirements", str(machine["req"]), "--min_free_gb", "0", *flags]
    )
    rc = run_main(step1.main, args)
    path = tmp_path / "work" / env.ENVIRONMENT_FILE
    return rc, json.loads(path.read_text()) if path.exists() else {}


@pytest.mark.parametrize(
    ("gpus", "flags", "rc", "precision", "batch", "error"),
    [
        ([GpuFact(0, "Tesla P100-PCIE-16GB", (6, 0), 15.89)], [], 2, "32", 8, "torch==2.14.* torchvision==0.29.*"),
        ([T4_0], ["--kaggle_t4"], 2, "16-mixed", 8, "expects two T4 GPUs but found 1"),
        ([T4_0, T4_1], ["--kaggle_t4"], 0, "16-mixed", 8, None),
        ([GpuFact(0, "NVIDIA A100-SXM4-80GB", (8, 0), 79.25)], [], 0, "bf16-mixed", 32, None),
        ([GpuFact(0, "NVIDIA H100 80GB HBM3", (9, 0), 79.19)], [], 0, "bf16-mixed", 32, None),
        ([], [], 0, "32", 2, None),
    ],
    ids=["p100-no-sm60", "t4x1-kaggle_t4", "t4x2", "a100", "h100", "cpu"],
)
def test_machines(tmp_path, machine, capsys, gpus, flags, rc, precision, batch, error):
    machine["gpus"] = gpus
    code, data = run(tmp_path, machine, *flags)
    assert code == rc
    assert data["precision"]["advice"] == precision
    assert data["batch_size_advice"] == batch
    assert [g["name"] for g in data["gpus"]] == [g.name for g in gpus]
    assert [tuple(g["capability"]) for g in data["gpus"]] == [g.capability for g in gpus]
    assert data["torch"]["arch_list"] == KAGGLE_ARCHS
    assert data["packages"]["torch"] == env._version("torch")
    assert {r["requirement"] for r in data["requirements"]} == {"torch>=1.0", "numpy>=1.0"}
    err = capsys.readouterr().err
    if error:
        assert any(error in e for e in data["errors"])
        assert f"error: {data['errors'][0]}" in err
    else:
        assert data["errors"] == [] and "error:" not in err


def test_two_gpus_without_flag_warns(tmp_path, machine):
    machine["gpus"] = [T4_0, T4_1]
    code, data = run(tmp_path, machine)
    assert code == 0
    assert any("--devices 0,1" in w for w in data["warnings"])


def test_cuda_visible_but_unusable(tmp_path, machine, monkeypatch):
    machine["gpus"] = [T4_0]
    monkeypatch.setattr(env, "_probe_cuda", lambda i: "CUDA error: no kernel image is available")
    code, data = run(tmp_path, machine)
    assert code == 2 and "cannot use it: CUDA error" in data["errors"][0]


def test_driver_sees_gpu_torch_does_not(tmp_path, machine, monkeypatch):
    monkeypatch.setattr(env, "_nvidia_smi_gpus", lambda: ["Tesla T4"])
    code, data = run(tmp_path, machine)
    assert code == 2 and "nvidia-smi sees 1 GPU(s)" in data["errors"][0]


def test_installs_missing_with_torch_pinned(tmp_path, machine):
    machine["req"].write_text("torch>=1.0\naetune-not-a-real-package>=1.0\n")
    code, data = run(tmp_path, machine)
    (args,) = machine["pip_calls"]
    assert args[-1] == "aetune-not-a-real-package>=1.0" and "-c" in args
    # the fake pip installed nothing, so the re-check still reports it missing: no silent success
    row = next(r for r in data["requirements"] if r["requirement"].startswith("aetune-not"))
    assert row["satisfied"] is False


def test_check_only_installs_nothing(tmp_path, machine):
    machine["req"].write_text("torch>=1.0\naetune-not-a-real-package>=1.0\n")
    code, data = run(tmp_path, machine, "--check_only")
    assert machine["pip_calls"] == []
    assert code == 2 and "missing or outdated: aetune-not-a-real-package>=1.0" in data["errors"][0]


def test_no_internet(tmp_path, machine, capsys):
    machine["req"].write_text("torch>=1.0\naetune-not-a-real-package>=1.0\n")
    machine["pip_result"] = (1, "ERROR: Could not fetch URL https://pypi.org/simple/: Name or service not known")
    code, data = run(tmp_path, machine)
    assert code == 2
    assert data["errors"][0].startswith("no internet: attach a Kaggle dataset with the wheels")
    assert "error: no internet" in capsys.readouterr().err


def test_too_little_disk(tmp_path, machine):
    args = ["--output_dir", str(tmp_path / "work"), "--requirements", str(machine["req"]), "--min_free_gb", "1e9"]
    assert run_main(step1.main, step1.parse_args(args)) == 2
    data = json.loads((tmp_path / "work" / env.ENVIRONMENT_FILE).read_text())
    assert "GB free" in data["errors"][0] and data["disk"]["free_gb"] > 0


def test_missing_torch_is_fatal(tmp_path, machine, monkeypatch, capsys):
    real = env._version
    monkeypatch.setattr(env, "_version", lambda name: None if name == "torch" else real(name))
    code, data = run(tmp_path, machine)
    assert code == 2 and data == {}
    assert "error: torch not installed" in capsys.readouterr().err
    assert machine["pip_calls"] == []
