"""Atomic writes: all or nothing, and ordinary file modes."""

from __future__ import annotations

import os
import stat

import pytest

from aetune.io import atomic_path, atomic_write_json, atomic_write_text, read_json


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path) -> None:
    target = atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_mode_follows_the_umask(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        path = atomic_write_json(tmp_path / "sub" / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert read_json(path) == {"a": 1}


def test_corrupt_json_names_the_file(tmp_path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        read_json(tmp_path / "bad.json")
