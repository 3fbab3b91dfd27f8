"""The error exit every step shares: one ``error:`` line and exit code 2 for the user's input or machine."""

from __future__ import annotations

import argparse
import errno

import pytest

from aetune.cli import run_main
from aetune.errors import AetuneError


def _args(tmp_path) -> argparse.Namespace:
    return argparse.Namespace(output_dir=str(tmp_path / "work"), kaggle=False, verbose=False)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "/w/ckpt"), "disk full while writing /w/ckpt"),
        (OSError(errno.EROFS, "Read-only file system", "/w"), "cannot write /w (Read-only file system)"),
        (PermissionError(errno.EACCES, "Permission denied", "/w"), "pick a writable --output_dir"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/w/f/x"), "/w/f/x is in the way"),
        (FileExistsError(errno.EEXIST, "File exists", "/w"), "/w is in the way"),
        (AetuneError("first line\nsecond line"), "first line; second line"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys, error, expected) -> None:
    def main(_: argparse.Namespace) -> int:
        raise error

    assert run_main(main, _args(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err
    assert err.count("\n") == 1


def test_bugs_keep_their_traceback(tmp_path) -> None:
    def main(_: argparse.Namespace) -> int:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_main(main, _args(tmp_path))


def test_a_step_start_removes_stale_temp_files(tmp_path) -> None:
    stale = tmp_path / "work" / "data" / ".split.json.abcdefgh.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_text("half")
    assert run_main(lambda _: 0, _args(tmp_path)) == 0
    assert not stale.exists()
