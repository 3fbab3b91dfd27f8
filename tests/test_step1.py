"""Step 1 end to end on fake machines: environment.json contents, messages and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import step1_setup_environment as step1
from aetune.cli import run_main
from aetune.setup import env
from aetune.setup.env import GpuFact
from tests.write_faults import disk_full, read_only, snapshot

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


def fake_extras(tmp_path, monkeypatch, files: dict[str, str]) -> None:
    """Point step 1 at a requirements folder holding ``{name}.txt`` files with these texts."""
    extras = tmp_path / "requirements"
    extras.mkdir()
    for name, text in files.items():
        (extras / f"{name}.txt").write_text(text)
    monkeypatch.setattr(step1, "FAMILY_REQUIREMENTS", extras)


def test_family_installs_its_requirements_through_the_pinned_pip(tmp_path, machine, monkeypatch):
    fake_extras(tmp_path, monkeypatch, {"fam": "# --family fam\naetune-not-a-real-extra>=1.0  # its runtime extra\n"})
    code, data = run(tmp_path, machine, "--family", "fam")
    (args,) = machine["pip_calls"]
    assert args[0] == "install" and "-c" in args and args[-1] == "aetune-not-a-real-extra>=1.0"
    assert {r["requirement"] for r in data["requirements"]} == {
        "torch>=1.0",
        "numpy>=1.0",
        "aetune-not-a-real-extra>=1.0",
    }
    assert data["families"] == ["fam"]
    machine["pip_calls"].clear()
    code, data = run(tmp_path, machine, "--family", "vavae")  # covered by requirements.txt: nothing extra
    assert code == 0 and machine["pip_calls"] == [] and len(data["requirements"]) == 2


def test_a_task_config_installs_the_tasks_requirements_too(tmp_path, machine, monkeypatch):
    fake_extras(tmp_path, monkeypatch, {"restoration": "aetune-not-a-real-task-extra>=1.0\n"})
    code, data = run(tmp_path, machine, "--config", "restoration_demo")
    (args,) = machine["pip_calls"]
    assert code == 0 and args[-1] == "aetune-not-a-real-task-extra>=1.0"
    assert "aetune-not-a-real-task-extra>=1.0" in {r["requirement"] for r in data["requirements"]}


def test_unknown_family_is_one_line_listing_the_valid_ones(tmp_path, machine, monkeypatch, capsys):
    fake_extras(tmp_path, monkeypatch, dict.fromkeys(("rae", "taesd", "kl3d", "hf"), "numpy>=1.0\n"))
    code, data = run(tmp_path, machine, "--family", "tasd")
    err = capsys.readouterr().err
    assert code == 2 and data == {} and machine["pip_calls"] == []
    assert err.count("\n") == 1 and err.startswith("error: unknown family 'tasd' (did you mean 'taesd'?)")
    assert err.rstrip().endswith("are hf, hypir, kl, kl3d, rae, taehv, taesd, vavae")
    assert not (tmp_path / "work").exists()  # nothing written before the flags are known good


def test_the_real_requirements_folder_names_real_families():
    for path in step1.FAMILY_REQUIREMENTS.glob("*.txt"):
        assert env.family_requirements(path.stem, step1.FAMILY_REQUIREMENTS) == path
        assert all(r.name for r in env.check_requirements(path))  # every line parses


def test_config_prints_the_disk_plan(tmp_path, machine, capsys):
    code, data = run(tmp_path, machine, "--config", "vavae", "--stages", "1,2")
    plan = data["disk_plan"]
    assert code == 0 and plan["stages"] == ["1", "2"]
    assert plan["needed_bytes"] == sum(i["bytes"] for i in plan["items"] if not i["exists"])
    whats = [i["what"] for i in plan["items"]]
    assert whats[:3] == [
        "stage 1: 3 weights-only files (pruned)",
        "stage 2: last.ckpt (weights + Adam state, to resume)",
        "stage 2: 2 best checkpoints (weights only)",
    ]
    assert "weights vavae (models/)" in whats and plan["weights_counted"] is True
    out = capsys.readouterr().out
    assert "disk plan  vavae, stages 1,2, in " in out and " free: fits" in out
    _, elsewhere = run(tmp_path, machine, "--config", "vavae", "--models_dir", str(tmp_path / "tmp_models"))
    assert elsewhere["disk_plan"]["weights_counted"] is False
    assert not any(i["what"].startswith("weights") for i in elsewhere["disk_plan"]["items"])


def test_a_plan_that_does_not_fit_fails_early(tmp_path, machine, monkeypatch, capsys):
    monkeypatch.setattr(env, "disk_facts", lambda *a, **k: {"path": "x", "free_gb": 2.0})
    code, data = run(tmp_path, machine, "--config", "vavae")
    err = capsys.readouterr().err
    assert code == 2
    line = next(e for e in data["errors"] if e.startswith("the run needs"))
    assert "\n" not in line and "but 2.00 GB are free" in line and "--models_dir /tmp" in line
    assert f"error: {line}\n" in err
    code, _ = run(tmp_path, machine, "--config", "demo")  # the CPU demo fits in 2 GB
    assert code == 0


def test_unknown_stage_and_bad_set_are_one_line(tmp_path, machine, capsys):
    code, data = run(tmp_path, machine, "--config", "vavae", "--stages", "7")
    assert code == 2 and data == {} and "error: --stages 7: stage(s) 7 not in the plan" in capsys.readouterr().err
    code, data = run(tmp_path, machine, "--config", "vavae", "--set", "data.image_sise=64")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "image_size" in err and data == {}


def test_flags_are_checked_without_torch(tmp_path):
    """On a machine without torch, step 1 still validates --family / --config / --stages and says what to install."""
    code = (
        "import sys; sys.modules['torch'] = None\n"  # `import torch` raises ImportError
        "import step1_setup_environment as step1\n"
        "from aetune.setup import env\n"
        "real = env._version; env._version = lambda n: None if n in ('torch', 'torchvision') else real(n)\n"
        "from aetune.cli import run_main\n"
        f"work = {str(tmp_path / 'work')!r}\n"
        "print(run_main(step1.main, step1.parse_args(['--output_dir', work, '--family', 'nope'])))\n"
        "print(run_main(step1.main, step1.parse_args(['--output_dir', work, '--config', 'vavae', '--stages', '1'])))\n"
        "from aetune.config import load_config; from aetune.train import disk_budget as db\n"
        "cfg = load_config('vavae'); cfg.model.freeze_encoder_levels = 0\n"
        "table = db.project_run(db.full_size('vavae'), ['1'], db.weight_items(cfg, step1.Path(work)))\n"
        "print(db.project_config(cfg, ['1'], step1.Path(work)).needed == table.needed > 6 * 2**30)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(step1.__file__).parent)
    assert res.stdout.split() == ["2", "2", "True"], res.stderr
    errors = res.stderr.splitlines()
    assert len(errors) == 2 and errors[0].startswith("error: unknown family 'nope'")
    assert errors[1].startswith("error: torch and torchvision not installed")


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err.strip()


def test_output_dir_that_is_a_file_or_under_one(tmp_path, machine, capsys):
    blocker = tmp_path / "work"
    blocker.write_text("not a folder")
    assert run(tmp_path, machine)[0] == 2  # run() uses tmp_path / "work"
    assert str(blocker) in _one_error_line(capsys)
    args = ["--output_dir", str(blocker / "inner"), "--requirements", str(machine["req"]), "--min_free_gb", "0"]
    assert run_main(step1.main, step1.parse_args(args)) == 2
    assert "is in the way" in _one_error_line(capsys)
    assert blocker.read_text() == "not a folder"


def test_read_only_work_dir_keeps_the_old_environment(tmp_path, machine, capsys):
    assert run(tmp_path, machine)[0] == 0
    work = tmp_path / "work"
    before = snapshot(work)
    capsys.readouterr()
    with read_only(work):
        assert run(tmp_path, machine)[0] == 2
        assert "cannot write" in _one_error_line(capsys)
    assert snapshot(work) == before


def test_disk_full_keeps_the_old_environment(tmp_path, machine, monkeypatch, capsys):
    assert run(tmp_path, machine)[0] == 0
    before = snapshot(tmp_path / "work")
    capsys.readouterr()
    disk_full(monkeypatch)
    assert run(tmp_path, machine)[0] == 2
    assert _one_error_line(capsys).startswith("error: disk full while writing")
    assert snapshot(tmp_path / "work") == before  # no half-written file, no temp file left
