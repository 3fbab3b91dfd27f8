"""step3_prepare_dataset.py as a user runs it: files written, table, re-run, errors, --kaggle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import step3_prepare_dataset as step3
from aetune.cli import run_main
from tests.conftest import make_user_folders

REPO = Path(__file__).resolve().parent.parent


def _run(args: list[str]) -> int:
    return run_main(step3.main, step3.parse_args([*args, "--no_progress"]))


def test_writes_the_three_files(user_folders: Path, tmp_path: Path, capsys) -> None:
    work = tmp_path / "work"
    assert _run(["--data_root", str(user_folders), "--output_dir", str(work)]) == 0
    labels = json.loads((work / "data" / "labels.json").read_text())
    assert labels == {"ID_1": 0, "ID_2": 1, "ID_10": 2}
    dataset = json.loads((work / "data" / "dataset.json").read_text())
    assert dataset["num_images"] == 19 and dataset["name"] == "microdoppler"
    rec = dataset["accepted"][0]
    assert set(rec) >= {"relpath", "label", "user", "width", "height", "mode", "sha1"}
    split = json.loads((work / "data" / "split.json").read_text())
    assert (split["seed"], split["val_ratio"]) == (42, 0.1)
    assert len(split["train"]) + len(split["val"]) == 19 and len(split["val"]) == 3
    out = capsys.readouterr().out
    assert "ID_10" in out and "total" in out and "wrote" in out


def test_rerun_changes_nothing_and_says_so(user_folders: Path, tmp_path: Path, capsys) -> None:
    work = tmp_path / "work"
    _run(["--data_root", str(user_folders), "--output_dir", str(work)])
    mtimes = {p.name: p.stat().st_mtime_ns for p in (work / "data").iterdir()}
    capsys.readouterr()
    assert _run(["--data_root", str(user_folders), "--output_dir", str(work)]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (work / "data").iterdir()} == mtimes
    assert "up to date: nothing changed" in capsys.readouterr().out


def test_missing_root_is_one_line_and_writes_nothing(tmp_path: Path, capsys) -> None:
    work = tmp_path / "work"
    assert _run(["--data_root", str(tmp_path / "missing"), "--output_dir", str(work)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --data_root") and "\n" not in err
    assert not (work / "data").exists()


def test_no_dataset_flag(tmp_path: Path, capsys) -> None:
    assert _run(["--output_dir", str(tmp_path)]) == 2
    assert "--synthetic microdoppler" in capsys.readouterr().err


def test_kaggle_discovery(tmp_path: Path, monkeypatch, capsys) -> None:
    base = tmp_path / "input"
    make_user_folders(base / "datasets" / "me" / "micro-doppler-data", {"ID_1": 4, "ID_2": 4})
    monkeypatch.setattr(step3, "KAGGLE_INPUT", base)
    assert _run(["--kaggle", "--output_dir", str(tmp_path / "w")]) == 0
    assert "using " + str(base / "datasets" / "me" / "micro-doppler-data") in capsys.readouterr().out


def test_bad_val_ratio(user_folders: Path, tmp_path: Path) -> None:
    assert _run(["--data_root", str(user_folders), "--output_dir", str(tmp_path), "--val_ratio", "1.5"]) == 2


def test_synthetic_command_runs_as_a_script(tmp_path: Path) -> None:
    work = tmp_path / "w"
    cmd = [sys.executable, "step3_prepare_dataset.py", "--synthetic", "microdoppler", "--output_dir", str(work)]
    cmd += ["--num_users", "3", "--images_per_user", "4", "--image_size", "32", "--no_progress"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    labels = json.loads((work / "data" / "labels.json").read_text())
    assert labels == {"ID_1": 0, "ID_2": 1, "ID_3": 2}
    split = json.loads((work / "data" / "split.json").read_text())
    assert len(split["train"]) == 9 and len(split["val"]) == 3
