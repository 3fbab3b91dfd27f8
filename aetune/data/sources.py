"""Step 3's other sources: paired LQ/GT folders and Hugging Face dataset folders (flags, detection, the run).

``step3_prepare_dataset.py`` adds these flags with :func:`add_source_args` and hands over to
:func:`prepare_other_source` before its folder-per-user path; that returns False when the input is a plain
folder of user folders, which step 3 then prepares as before.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from aetune.errors import AetuneError

log = logging.getLogger("aetune")

SYNTHETIC_PAIRED_DIRNAME = "synthetic_paired"


def add_source_args(p: argparse.ArgumentParser) -> None:
    """The flags of paired and Hugging Face inputs (docs/restoration.md)."""
    g = p.add_argument_group("paired restoration data (<root>/<Degradation>/{LQ,GT}/ or <root>/{LQ,GT}/)")
    g.add_argument("--val_root", help="validation pairs in a separate folder, used as given (no split)")
    g.add_argument("--pair_resize", action="store_true", help="accept pairs whose LQ and GT sizes differ")
    g.add_argument("--pairs_per_type", type=int, default=40, help="pairs per degradation of --synthetic paired")
    h = p.add_argument_group("Hugging Face dataset folders (save_to_disk, or .parquet / .arrow files)")
    h.add_argument("--hf_split", default="train", help="the split to train on")
    h.add_argument("--hf_validation_split", default="validation", help="validated on whole when it exists")
    h.add_argument("--train_split", type=float, default=0.9, help="training fraction of --hf_split without it")
    h.add_argument("--hf_image_column", help="image column (default: the first Image feature)")
    h.add_argument("--hf_label_column", help="label column (default: the first ClassLabel, else 'label')")


def _is_paired(root: Path) -> bool:
    from aetune.data.paired import find_paired_root

    try:
        find_paired_root(root)
    except AetuneError:  # not a paired layout: one of the other sources
        return False
    return True


def prepare_other_source(args: argparse.Namespace, work_dir: Path) -> bool:
    """Prepare a paired or Hugging Face input named by ``args``; False when the input is neither.

    Raises:
        AetuneError: a bad flag combination or input (one line).
    """
    from aetune.data.hf_source import hf_format, prepare_hf_dataset
    from aetune.data.paired import prepare_paired_dataset
    from aetune.data.prepare import format_table

    progress = not args.no_progress
    root = Path(args.data_root) if args.data_root else None
    if args.synthetic == "paired":  # blur, noise, low-light and occlusion pairs of the synthetic spectrograms
        if root is not None:
            raise AetuneError("pass either --synthetic or --data_root, not both")
        from aetune.data.synthetic.paired import generate_paired_dataset

        root = work_dir / SYNTHETIC_PAIRED_DIRNAME
        log.info("generating the synthetic paired set in %s", root)
        generate_paired_dataset(root, args.pairs_per_type, args.image_size, seed=args.seed, progress=progress)
    if root is None:
        if args.val_root:
            raise AetuneError("--val_root needs --data_root (the training pairs)")
        return False
    summary: Any
    if args.val_root or args.pair_resize or _is_paired(root):
        val_root = Path(args.val_root) if args.val_root else None
        summary = prepare_paired_dataset(
            root, work_dir, args.name, args.val_ratio, args.seed, val_root, args.pair_resize, progress
        )
        log.info(
            "paired data: %s%s", summary.data_root, f", validation: {summary.val_root}" if summary.val_root else ""
        )
        extra = f"{summary.duplicates} pairs sharing a GT, {summary.notes} notes"
    elif hf_format(root):
        summary = prepare_hf_dataset(
            root,
            work_dir,
            args.name,
            args.hf_split,
            args.hf_validation_split,
            args.train_split,
            args.seed,
            args.hf_image_column,
            args.hf_label_column,
            progress,
        )
        log.info("Hugging Face dataset: %s (%s)", summary.data_root, summary.validation)
        extra = f"{summary.duplicates} exact duplicate images"
    else:
        return False
    log.info(format_table(summary))
    if summary.rejected or summary.duplicates:
        log.warning("%d rejected (with reasons), %s: see data/dataset.json", summary.rejected, extra)
    log.info("wrote %s/data/{labels,dataset,split}.json" if summary.changed else "%s/data is up to date", work_dir)
    return True


def prepared_kind(work_dir: Path) -> str:
    """The data kind of what step 3 prepared in ``work_dir``: ``pair`` for LQ/GT pairs, ``video``, ``volume``, else
    ``image``."""
    from aetune.data.paired import KIND
    from aetune.data.prepared import DATASET_FILE, data_dir
    from aetune.data.video import KIND as VIDEO
    from aetune.io import read_json

    kinds = {KIND: "pair", VIDEO: "video", "volume": "volume"}  # dataset.json "kind" -> data kind (aetune.data.kinds)
    return kinds.get(read_json(data_dir(work_dir) / DATASET_FILE).get("kind"), "image")
