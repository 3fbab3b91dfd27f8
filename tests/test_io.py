"""Atomic writes: all or nothing, and ordinary file modes."""

from __future__ import annotations

import os
import stat

import pytest

from aetune.errors import AetuneError
from aetune.io import atomic_path, atomic_write_json, atomic_write_text, read_json, remove_stale_temps


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


def test_mode_follows_the_umask_when_the_writer_recreates_the_file(tmp_path) -> None:
    """safetensors (the latent shards) writes a fresh file at the temporary path: it must not stay 0600."""
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "shard.bin") as tmp:
            tmp.unlink()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "shard.bin").stat().st_mode) == 0o644


def test_corrupt_json_names_the_file(tmp_path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        read_json(tmp_path / "bad.json")


def test_stale_temps_of_killed_writes_are_removed_and_nothing_else(tmp_path) -> None:
    keep = atomic_write_text(tmp_path / "data" / "split.json", "{}")
    (tmp_path / "data" / ".notes.txt").write_text("a user's hidden file")
    stale_file = tmp_path / "data" / ".split.json.ab12_x9z.tmp"
    stale_file.write_text("half")
    stale_dir = tmp_path / ".results.building"
    (stale_dir / "sub").mkdir(parents=True)
    removed = remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == [".results.building", ".split.json.ab12_x9z.tmp"]
    assert keep.read_text() == "{}"
    assert (tmp_path / "data" / ".notes.txt").exists()
    assert not stale_file.exists() and not stale_dir.exists()


@pytest.mark.parametrize(
    ("content", "what"), [(b"", "is empty"), (b'{"a": ', "is not valid JSON"), (b"\xff\xfe", "JSON")]
)
def test_unreadable_json_is_one_line_naming_the_file(tmp_path, content, what) -> None:
    (tmp_path / "x.json").write_bytes(content)
    with pytest.raises(AetuneError, match=what) as info:
        read_json(tmp_path / "x.json")
    assert "x.json" in str(info.value) and "\n" not in str(info.value)
