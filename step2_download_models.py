"""Step 2: download, verify and record every pretrained weight; or find them offline; or bundle them.

Weights land in <work_dir>/models (torchvision/pytorch-fid files are also linked into the torch hub
cache) and are recorded in models/manifest.json. Re-running skips verified files.

    python step2_download_models.py --kaggle                                  # download what is missing
    python step2_download_models.py --kaggle --weights_dir /kaggle/input/aetune-weights   # offline
    python step2_download_models.py --bundle ./aetune-weights      # one folder to upload as a dataset
    python step2_download_models.py --list
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import constants as hf_constants

from aetune.cli import add_common_args, resolve_work_dir, run_script
from aetune.config import load_config
from aetune.errors import AetuneError
from aetune.setup.env import can_reach
from aetune.setup.hub import (
    MODELS_DIR,
    WeightsDirs,
    ensure_weight,
    get_spec,
    missing_message,
    read_manifest,
    write_bundle,
)
from aetune.setup.weights_registry import REGISTRY, WeightSpec, weights_for_config

log = logging.getLogger("aetune")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, config=True)
    names = ", ".join(s.name for s in REGISTRY)
    parser.add_argument(
        "--only", action="append", default=[], metavar="NAME", help=f"only these weights (repeatable, or a,b): {names}"
    )
    parser.add_argument("--list", action="store_true", help="list the registry and what is present, then exit")
    parser.add_argument(
        "--weights_dir",
        action="append",
        default=[],
        type=Path,
        help="folder of pre-downloaded weights (an attached Kaggle dataset), searched by name and hash (repeatable)",
    )
    parser.add_argument("--bundle", type=Path, default=None, help="also copy every weight into this folder")
    parser.add_argument("--models_dir", type=Path, default=None, help="where weights land (default <work_dir>/models)")
    parser.add_argument("--offline", action="store_true", help="never try to download")
    parser.add_argument("--verify", action="store_true", help="re-hash files verified by an earlier run")
    return parser.parse_args(argv)


def select(args: argparse.Namespace, manifest: dict) -> list[WeightSpec]:
    """``--only`` names, else what ``--config``'s run needs, else the defaults plus any in the manifest."""
    if args.only:
        return [get_spec(n.strip()) for item in args.only for n in item.split(",") if n.strip()]
    if args.config or args.overrides:
        return [get_spec(n) for n in weights_for_config(load_config(args.config, args.overrides))]
    return [s for s in REGISTRY if s.default or s.name in manifest]


def _host(spec: WeightSpec) -> str:
    return str(urlparse(hf_constants.ENDPOINT if spec.repo_id else str(spec.url)).hostname)


def _list(specs: list[WeightSpec], manifest: dict) -> None:
    for s in specs:
        entry = manifest.get(s.name)
        state = (
            f"present ({entry.get('check', 'recorded')}) {entry['path']}"
            if entry and os.path.isfile(entry["path"])
            else "missing"
        )
        size = f"{s.bytes / 1e9:.3f} GB" if s.bytes else f"~{s.approx_gb:g} GB"
        log.info("%-20s %-10s %s%s", s.name, size, state, "" if s.default else "  [optional: --only]")
        log.info("%-20s %s | %s | %s", "", s.filename, s.source, s.licence)


def main(args: argparse.Namespace) -> int:
    work_dir = resolve_work_dir(args)
    if args.bundle and args.bundle.exists() and not args.bundle.is_dir():
        raise AetuneError(f"--bundle {args.bundle} is a file, not a folder")
    manifest = read_manifest(work_dir, rebuild=True)
    specs = select(args, manifest)
    if args.list:
        _list([s for s in REGISTRY if s in specs or not args.only], manifest)
        return 0
    dirs = WeightsDirs(args.weights_dir) if args.weights_dir else None
    models_dir = args.models_dir.resolve() if args.models_dir else work_dir / MODELS_DIR
    reachable: dict[str, bool] = {}
    missing = []
    for spec in specs:
        host = _host(spec)
        if host not in reachable:
            hf_off = bool(spec.repo_id) and hf_constants.HF_HUB_OFFLINE
            reachable[host] = not args.offline and not hf_off and can_reach(host)
        out = ensure_weight(spec, work_dir, manifest, models_dir, dirs, reachable[host], args.verify)
        for note in out.notes:
            log.warning("  %s: %s", spec.name, note)
        if out.available:
            log.info("%-20s %-10s %s", spec.name, out.status, out.path)
            continue
        missing.append(spec)
        reason = "no internet" if not reachable[host] and out.status == "missing" else out.status
        log.info("%-20s %-10s (%s)", spec.name, "MISSING", reason)
    if args.bundle:
        write_bundle(manifest, args.bundle.resolve(), [s for s in specs if s not in missing])
        log.info(
            "bundle in %s: upload it as a Kaggle dataset and run step 2 with --weights_dir /kaggle/input/<dataset>",
            args.bundle,
        )
    if not specs:
        log.info("nothing to fetch: this configuration uses no pretrained weights")
    for spec in missing:
        print(f"error: {missing_message(spec)}", file=sys.stderr)
    return 2 if missing else 0


if __name__ == "__main__":
    raise SystemExit(run_script(main, parse_args))
