"""What every step script shares: the work directory, config flags, logging, and error exits."""

from __future__ import annotations

import argparse
import errno
import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from aetune.errors import AetuneError
from aetune.paths import DEFAULT_WORK_DIR, KAGGLE_WORKING

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


def run_main(main: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a step's ``main``; user errors become one ``error:`` line on stderr and exit code 2.

    Only errors about the user's input or machine are caught (``AetuneError``, missing files, a full
    disk); anything else is a bug in aetune and keeps its traceback.
    """
    setup_logging(getattr(args, "verbose", False))
    try:
        return main(args)
    except (AetuneError, FileNotFoundError, PermissionError) as e:
        if getattr(args, "verbose", False):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        print(
            f"error: disk full while writing {e.filename or 'output'}: "
            "free space and re-run (nothing was half-written)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume", file=sys.stderr)
        return 130
