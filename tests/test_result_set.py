"""A results folder written as a set: built beside the old one, swapped in whole, never left half-written."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from aetune.errors import AetuneError
from aetune.evaluate import result_set
from aetune.io import atomic_write_text


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def _siblings(final: Path) -> list[str]:
    return sorted(p.name for p in final.parent.iterdir() if p.name != final.name)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    final = tmp_path / "work" / "results"
    atomic_write_text(final / "metrics.json", "old metrics")
    atomic_write_text(final / "latents" / "latents_rank00_shard001.safetensors", "old shard 1")
    return final


def test_success_swaps_in_and_keeps_the_other_parts(results: Path) -> None:
    old_inode = os.stat(results / "metrics.json").st_ino
    with result_set.staged_folder(results) as staged:
        assert staged.path.parent == results.parent and staged.path != results
        assert sorted(staged.kept) == ["latents/latents_rank00_shard001.safetensors", "metrics.json"]
        assert os.stat(staged.path / "metrics.json").st_ino == old_inode  # a hard link: no copy of big files
        atomic_write_text(staged.path / "latent_statistics.json", "new stats")
        assert _tree(results) == {
            "metrics.json": "old metrics",
            "latents/latents_rank00_shard001.safetensors": "old shard 1",
        }
    assert _tree(results) == {
        "metrics.json": "old metrics",
        "latents/latents_rank00_shard001.safetensors": "old shard 1",
        "latent_statistics.json": "new stats",
    }
    assert _siblings(results) == []


def test_fresh_subfolder_drops_the_previous_files(results: Path) -> None:
    with result_set.staged_folder(results) as staged:
        sub = staged.fresh("latents")
        atomic_write_text(sub / "latents_rank00_shard000.safetensors", "new shard 0")
        assert staged.kept == ["metrics.json"]
    assert _tree(results) == {
        "metrics.json": "old metrics",
        "latents/latents_rank00_shard000.safetensors": "new shard 0",
    }


def test_disk_full_half_way_leaves_the_previous_set(results: Path) -> None:
    before = _tree(results)
    with pytest.raises(OSError) as e, result_set.staged_folder(results) as staged:
        atomic_write_text(staged.path / "metrics.json", "new metrics")
        raise OSError(errno.ENOSPC, "No space left on device", str(staged.path / "latents_stats.pt"))
    assert e.value.errno == errno.ENOSPC
    assert _tree(results) == before and _siblings(results) == []


def test_stale_folders_of_a_killed_run_are_cleaned_or_restored(results: Path) -> None:
    parent = results.parent
    (parent / ".results.staging-dead").mkdir()
    (parent / ".results.staging-dead" / "metrics.json").write_text("half")
    (results / ".metrics.json.k1ll3d.tmp").write_text("half-written by a killed atomic write")
    with result_set.staged_folder(results) as staged:
        assert ".results.staging-dead" not in _siblings(results)
        assert ".metrics.json.k1ll3d.tmp" not in staged.kept
    assert not (results / ".metrics.json.k1ll3d.tmp").exists()
    # Killed between the two renames of the swap: no results/, the previous set beside it.
    os.replace(results, parent / ".results.previous-dead")
    result_set.recover(results)
    assert _tree(results)["metrics.json"] == "old metrics" and _siblings(results) == []


def test_results_that_is_a_file_or_unwritable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    final = tmp_path / "results"
    final.write_text("not a folder")
    with pytest.raises(AetuneError, match="is a file, not a folder"), result_set.staged_folder(final):
        pass
    assert final.read_text() == "not a folder"

    def read_only(*args: object, **kwargs: object) -> str:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(result_set.tempfile, "mkdtemp", read_only)
    unwritable = pytest.raises(AetuneError, match=r"cannot write .*other \(Read-only file system\)")
    with unwritable, result_set.staged_folder(tmp_path / "other"):
        pass
