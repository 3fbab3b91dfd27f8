"""What every step script shares: the work directory, config flags, logging, and error exits."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from aetune.errors import AetuneError
from aetune.paths import DEFAULT_WORK_DIR, KAGGLE_WORKING

# Only the standard library and aetune's own light modules above: a step script whose environment lacks a
# package (venv not activated) still gets here, so run_main can say which package and how to install it.

log = logging.getLogger("aetune")


def add_common_args(parser: argparse.ArgumentParser, config: bool = False) -> None:
    """Add ``--output_dir``, ``--kaggle``, ``--verbose`` and, with ``config``, ``--config``/``--set``."""
    parser.add_argument(
        "--output_dir",
        default=None,
        help=f"work directory of all steps (default {DEFAULT_WORK_DIR}; {KAGGLE_WORKING} with --kaggle)",
    )
    parser.add_argument(
        "--kaggle", action="store_true", help="Kaggle paths: work in /kaggle/working, data in /kaggle/input"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    if config:
        parser.add_argument("--config", default=None, help="preset name in configs/ (vavae, kl, demo) or a YAML path")
        parser.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="override any config key, e.g. --set loss.kl_weight=1e-6 (repeatable)",
        )


def resolve_work_dir(args: argparse.Namespace) -> Path:
    """The work directory: ``--output_dir``, else /kaggle/working with ``--kaggle``, else ./aetune_work."""
    if args.output_dir:
        return Path(args.output_dir).expanduser().resolve()
    return KAGGLE_WORKING if args.kaggle else DEFAULT_WORK_DIR.resolve()


def setup_logging(verbose: bool = False) -> None:
    """Plain ``message`` lines on stdout (notebook cells show them in order with tqdm on stderr)."""
    # Lightning 2.6 calls a torch pytree API that torch 2.14 deprecates, once per stage: noise to a user.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stdout,
        force=True,
    )


def one_line(message: str) -> str:
    """A message on one line: what a notebook cell shows as ``error: ...`` and a log grep finds whole."""
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


def os_error_message(e: OSError) -> str:
    """What went wrong with the file system, and how to fix it, in words (no traceback)."""
    where = f" {e.filename}" if e.filename else ""
    if e.errno == errno.ENOSPC:
        return f"disk full while writing{where}: free space and re-run (nothing was half-written)"
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write{where} ({e.strerror}): pick a writable --output_dir (on Kaggle: /kaggle/working)"
    if e.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return f"{where.strip()} is in the way ({e.strerror}): a file stands where a folder is needed, or the reverse"
    if e.errno == errno.ENOENT:
        return f"no such file or folder{where}"
    return f"{e.strerror or e}{':' if where else ''}{where}"


def clean_work_dir(args: argparse.Namespace) -> None:
    """Remove what killed writes left in the work directory (rank 0 of a launch only)."""
    if os.environ.get("RANK", "0") != "0" or os.environ.get("LOCAL_RANK", "0") != "0":
        return
    if not hasattr(args, "output_dir") or not hasattr(args, "kaggle"):
        return
    from aetune.io import remove_stale_temps  # imports yaml: after run_main's guard, not at import time

    for path in remove_stale_temps(resolve_work_dir(args)):
        log.info("removed %s (left by an interrupted write)", path)


def _missing_package(e: ModuleNotFoundError) -> bool:
    """True for a package missing from the environment; False for a missing module of aetune itself (a bug)."""
    return bool(e.name) and e.name.split(".")[0] != "aetune"


def _report_missing(e: ModuleNotFoundError) -> int:
    """Print the one ``error:`` line for a package the environment lacks (with its install command); exit code 2."""
    from aetune.optional import missing_module_message

    print(f"error: {one_line(missing_module_message(e))}", file=sys.stderr)
    return 2


def run_script(main: Callable[[argparse.Namespace], int], parse_args: Callable[[], argparse.Namespace]) -> int:
    """``run_main(main, parse_args())``, with a package missing while the flags are parsed (their modules are
    imported then) reported as ``run_main`` reports one missing in ``main``: one ``error:`` line, exit 2."""
    try:
        args = parse_args()
    except ModuleNotFoundError as e:
        if not _missing_package(e) or "-v" in sys.argv or "--verbose" in sys.argv:
            raise
        return _report_missing(e)
    return run_main(main, args)


def run_main(main: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a step's ``main``; user errors become one ``error:`` line on stderr and exit code 2.

    Only errors about the user's input or machine are caught (``AetuneError``, any ``OSError``: a
    missing file, a full disk, a read-only or misplaced work directory, and a ``ModuleNotFoundError`` for
    a package the environment lacks, answered with its install command); anything else is a bug in aetune
    and keeps its traceback.
    """
    setup_logging(getattr(args, "verbose", False))
    verbose = getattr(args, "verbose", False)
    try:
        clean_work_dir(args)
        return main(args)
    except ModuleNotFoundError as e:
        if verbose or not _missing_package(e):
            raise
        return _report_missing(e)
    except AetuneError as e:
        if verbose:
            raise
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:
        if verbose:
            raise
        print(f"error: {one_line(os_error_message(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume", file=sys.stderr)
        return 130
