"""The experiment record: appending keeps the user's text, a broken file is refused, the data fingerprint."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import yaml

from aetune.errors import AetuneError
from aetune.train.experiments import (
    EXPERIMENTS_FILE,
    append_experiment,
    data_fingerprint,
    experiment_record,
    read_experiments,
)

CONFIG = {"preset": "demo", "model": {"family": "kl", "args": {}}, "train": {"batch_size": 4, "learning_rate": 1e-4}}


def record(note: str | None = None, psnr: float = 27.5) -> dict:
    return experiment_record(
        config=CONFIG, fingerprint="0123456789abcdef", start_weights="models/kl/diffusion_pytorch_model.bin",
        stages=["1", 2], best={"1": {"psnr": psnr}, 2: {"psnr": 28, "rfid": 3.25}}, wall_seconds=120.04,
        images=6000, note=note, started=0.0,
    )  # fmt: skip


def test_record_fields() -> None:
    r = record("first try: lower LR")
    assert r == {
        "started": "1970-01-01 00:00:00 UTC",
        "family": "kl",
        "preset": "demo",
        "notes": "first try: lower LR",
        "stages": ["1", "2"],
        "best": {"1": {"psnr": 27.5}, "2": {"psnr": 28.0, "rfid": 3.25}},
        "start_weights": "models/kl/diffusion_pytorch_model.bin",
        "data_fingerprint": "0123456789abcdef",
        "wall_time_s": 120.0,
        "images": 6000,
        "images_per_s": 49.98,  # 6000 / 120.04
        "config": CONFIG,
    }
    assert record()["notes"] == ""
    no_time = experiment_record(
        config={}, fingerprint="x", start_weights=None, stages=[], best={}, wall_seconds=0.0, images=0, note=None,
        started=0.0,
    )  # fmt: skip
    assert no_time["images_per_s"] is None and no_time["family"] is None


def test_append_creates_then_keeps_earlier_entries_and_the_users_edits(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / EXPERIMENTS_FILE
    append_experiment(path, record())
    assert read_experiments(path) == [record()]
    # the user fills in the notes and adds a comment
    edited = path.read_text(encoding="utf-8").replace("notes: ''", "notes: 'blurry: LPIPS too low, try 1.5 — ü'")
    edited = "# my runs on the radar set\n" + edited
    path.write_text(edited, encoding="utf-8")
    append_experiment(path, record("second", psnr=float("nan")))
    text = path.read_text(encoding="utf-8")
    assert text.startswith(edited)  # byte for byte
    entries = read_experiments(path)
    assert [e["notes"] for e in entries] == ["blurry: LPIPS too low, try 1.5 — ü", "second"]
    assert entries[0]["config"] == CONFIG and math.isnan(entries[1]["best"]["1"]["psnr"])
    append_experiment(path, record("third"))  # a nan in an earlier entry does not force a rewrite
    assert path.read_text(encoding="utf-8").startswith(text)
    assert len(read_experiments(path)) == 3


@pytest.mark.parametrize("start", ["", "# nothing yet\n", "[]\n", "[]"])
def test_empty_or_flow_style_files_take_an_entry(tmp_path: Path, start: str) -> None:
    path = tmp_path / EXPERIMENTS_FILE
    path.write_text(start, encoding="utf-8")
    append_experiment(path, record())
    assert read_experiments(path) == [record()]


@pytest.mark.parametrize(
    "broken",
    ["- started: 2026\n  notes: 'unclosed\n", "started: 2026\n", "- just a string\n", "- a: 1\n---\n- b: 2\n"],
)
def test_hand_broken_file_is_refused_and_left_untouched(tmp_path: Path, broken: str) -> None:
    path = tmp_path / EXPERIMENTS_FILE
    path.write_text(broken, encoding="utf-8")
    with pytest.raises(AetuneError, match=f"{path}.*fix it by hand or move it away") as e:
        append_experiment(path, record())
    assert "\n" not in str(e.value)
    assert path.read_text(encoding="utf-8") == broken


def test_data_fingerprint() -> None:
    pairs = [("ID_1/a.png", "aa11"), ("ID_2/b.png", "bb22")]
    expected = hashlib.sha256(b"ID_1/a.png\taa11\nID_2/b.png\tbb22\n").hexdigest()[:16]
    assert data_fingerprint(pairs) == expected == data_fingerprint(pairs[::-1])
    assert len(expected) == 16
    assert data_fingerprint([("ID_1/a.png", "aa12"), pairs[1]]) != expected  # an edited image
    assert data_fingerprint(pairs[:1]) != expected  # a removed one


def test_written_file_is_a_plain_yaml_list(tmp_path: Path) -> None:
    path = tmp_path / EXPERIMENTS_FILE
    append_experiment(path, record())
    append_experiment(path, record("b"))
    assert yaml.safe_load(path.read_text(encoding="utf-8")) == [record(), record("b")]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic: no temporary file left
