"""Step 3: scan and validate a folder-per-user dataset, split it per user, save labels.

    python step3_prepare_dataset.py --data_root /kaggle/input/micro-doppler-data --output_dir ./
    python step3_prepare_dataset.py --synthetic microdoppler --output_dir ./aetune_work

Writes data/labels.json, data/dataset.json and data/split.json in the work directory.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from aetune.cli import add_common_args, resolve_work_dir, run_script
from aetune.data.sources import add_source_args, prepare_other_source
from aetune.errors import AetuneError
from aetune.paths import KAGGLE_INPUT

# numpy, yaml and the rest are imported inside the functions, under run_script's guard: a missing package
# (venv not activated) is then one error line naming it and the install command, not an import traceback.

log = logging.getLogger("aetune")

SYNTHETIC_DIRNAME = "synthetic_microdoppler"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from aetune.data.prepared import DEFAULT_NAME
    from aetune.data.volumes import add_volume_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--data_root", help="folder with one sub-folder of images per user")
    p.add_argument("--val_ratio", type=float, default=0.1, help="fraction of each user's images for validation")
    p.add_argument("--seed", type=int, default=42, help="seed of the content hash that assigns the split (0..2^32-1)")
    p.add_argument("--name", default=DEFAULT_NAME, help="dataset name used in output file names ([A-Za-z0-9._-])")
    g = p.add_argument_group("built-in synthetic dataset")
    g.add_argument(
        "--synthetic",
        choices=["microdoppler", "microdoppler_video", "phantoms", "paired"],
        help="generate a synthetic set (images, videos, volumes, LQ/GT pairs), then prepare it",
    )
    g.add_argument("--num_users", type=int, default=31)
    g.add_argument("--images_per_user", type=int, default=150)
    g.add_argument("--image_size", type=int, default=256)
    g.add_argument("--no_progress", action="store_true", help="no progress bars (logs, CI)")
    add_source_args(p)
    v = p.add_argument_group("videos (--family taehv; docs/tiny.md)")
    v.add_argument(
        "--kind", choices=["image", "video", "volume"], default="image", help="video files / frame folders, volumes"
    )
    v.add_argument("--min_frames", type=int, default=12, help="shortest accepted video, in frames")
    add_volume_args(p)
    return p.parse_args(argv)


SEED_MAX = 2**32 - 1
"""numpy seeds the synthetic generator from an unsigned 32-bit range; the split accepts the same."""
SYNTHETIC_LIMITS = {"num_users": (1, 1000), "images_per_user": (1, 10_000), "image_size": (16, 2048)}
"""Sane ranges for the generator: at the maxima it already writes ~40 GB of PNGs."""


def check_args(args: argparse.Namespace) -> None:
    """Every numeric flag in range and a file-safe ``--name``, before anything is read or written.

    Raises:
        AetuneError: one line naming the flag and its valid range.
    """
    from aetune.data.prepared import check_dataset_name
    from aetune.data.split import check_val_ratio

    check_val_ratio(args.val_ratio, "--val_ratio")
    check_dataset_name(args.name)
    if not 0 <= args.seed <= SEED_MAX:
        raise AetuneError(f"--seed must be in [0, {SEED_MAX}], got {args.seed}")
    for flag, (lo, hi) in SYNTHETIC_LIMITS.items():
        value = getattr(args, flag)
        if not lo <= value <= hi:
            raise AetuneError(f"--{flag} must be in [{lo}, {hi}], got {value}")


def _data_root(args: argparse.Namespace, work_dir: Path) -> Path:
    if args.synthetic and args.data_root:
        raise AetuneError("pass either --synthetic or --data_root, not both")
    if args.synthetic:
        from aetune.data.synthetic import generate_microdoppler_dataset

        out = work_dir / SYNTHETIC_DIRNAME
        log.info("generating the synthetic micro-Doppler dataset in %s", out)
        return generate_microdoppler_dataset(
            out,
            args.num_users,
            args.images_per_user,
            args.image_size,
            args.seed,
            progress=not args.no_progress,
        )
    if args.data_root:
        return Path(args.data_root)
    if args.kaggle:
        from aetune.data.scan import discover_kaggle_input

        return discover_kaggle_input(KAGGLE_INPUT)
    raise AetuneError("no dataset: pass --data_root DIR (one folder per user), --synthetic microdoppler, or --kaggle")


def main(args: argparse.Namespace) -> int:
    from aetune.data.prepare import check_output_dir, log_summary, prepare_dataset

    check_args(args)
    work_dir = resolve_work_dir(args)
    check_output_dir(work_dir)
    if args.kind == "video" or args.synthetic == "microdoppler_video":
        from aetune.data.video import prepare_video_source

        synthetic = args.synthetic == "microdoppler_video"
        prepare_video_source(
            work_dir, args.data_root, synthetic, args.name, args.val_ratio, args.seed, args.min_frames,
            args.num_users, image_size=args.image_size, progress=not args.no_progress,
        )  # fmt: skip
        return 0
    if args.kind == "volume" or args.synthetic == "phantoms":
        from aetune.data.kinds.volume import prepare_volume_source

        prepare_volume_source(args, work_dir)
        return 0
    if prepare_other_source(args, work_dir):  # paired LQ/GT folders, Hugging Face dataset folders
        return 0
    root = _data_root(args, work_dir)
    summary = prepare_dataset(root, work_dir, args.name, args.val_ratio, args.seed, progress=not args.no_progress)
    log_summary(summary, work_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main, parse_args))
