"""Step 1: check the machine, install missing Python packages, write environment.json.

Reports the platform (Kaggle / Colab / local), versions, GPUs, CPU, RAM and disk; catches the traps
that cost a session (a P100 without kernels, CUDA visible but unusable, one T4 where two were meant,
too little disk for the planned run); advises precision and batch size. Installs a family's extra packages
(requirements/<family>.txt). Never installs or upgrades torch or torchvision.

    python step1_setup_environment.py --kaggle --kaggle_t4 --config vavae --stages 1,2
    python step1_setup_environment.py --family kl3d           # also MONAI, nibabel, ...
    python step1_setup_environment.py --check_only            # install nothing
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from aetune.cli import add_common_args, resolve_work_dir, run_script
from aetune.config import load_config
from aetune.errors import AetuneError
from aetune.io import atomic_write_json
from aetune.setup.env import (
    ENVIRONMENT_FILE,
    MIN_FREE_DISK_GB,
    check_requirements,
    collect_environment,
    family_requirements,
    install_requirements,
    requirement_names,
)
from aetune.setup.weights_registry import MODELS
from aetune.train.disk_budget import disk_plan
from aetune.train.plan import parse_stages

log = logging.getLogger("aetune")

REQUIREMENTS = Path(__file__).resolve().parent / "requirements.txt"
FAMILY_REQUIREMENTS = Path(__file__).resolve().parent / "requirements"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, config=True)
    parser.add_argument("--family", default=None, help="also install requirements/NAME.txt (NAME[,NAME])")
    parser.add_argument("--stages", default=None, help="with --config: the stages the disk plan counts (default: all)")
    parser.add_argument(
        "--models_dir",
        type=Path,
        default=None,
        help="where step 2 puts weights (outside the work dir: not counted)",
    )
    parser.add_argument("--kaggle_t4", action="store_true", help='you will train on Kaggle\'s "GPU T4 x2" (DDP)')
    parser.add_argument("--check_only", action="store_true", help="report only: install nothing")
    parser.add_argument("--requirements", type=Path, default=REQUIREMENTS, help="requirements file to check")
    parser.add_argument(
        "--wheels_dir", type=Path, default=None, help="install offline from this folder of wheels (a Kaggle dataset)"
    )
    parser.add_argument(
        "--min_free_gb",
        type=float,
        default=MIN_FREE_DISK_GB,
        help=f"free disk below this is an error (default {MIN_FREE_DISK_GB:g} GB: weights + one stage's checkpoints)",
    )
    return parser.parse_args(argv)


def _dependencies(args: argparse.Namespace, files: list[Path]) -> tuple[list[dict], list[str], list[str]]:
    """Check (and unless --check_only, install) the requirements of ``files``: (report rows, warnings, errors)."""
    statuses = [s for f in files for s in check_requirements(f)]
    absent = [s.name for s in statuses if s.protected and s.installed is None]
    if absent:
        raise AetuneError(
            f"{' and '.join(absent)} not installed: install the build for your CUDA driver from "
            "https://pytorch.org/get-started/locally/ (step 1 never installs torch or torchvision)"
        )
    warnings = [
        f"{s.name} {s.installed} does not satisfy '{s.requirement}'; step 1 does not upgrade it"
        for s in statuses
        if s.protected and not s.satisfied
    ]
    errors = []
    missing = [s.requirement for s in statuses if not s.satisfied and not s.protected]
    if missing and args.check_only:
        errors.append(f"missing or outdated: {' '.join(missing)} (run step 1 without --check_only to install)")
    elif missing:
        try:
            log.info("installing: %s", " ".join(install_requirements(statuses, args.wheels_dir)))
        except AetuneError as e:
            errors.append(str(e))
        statuses = [s for f in files for s in check_requirements(f)]
    rows = [{"requirement": s.requirement, "installed": s.installed, "satisfied": s.satisfied} for s in statuses]
    return rows, warnings, errors


def _report(env: dict) -> None:
    t = env["torch"]
    log.info("platform   %s, Python %s, %s", env["platform"], env["python"], env["os"])
    log.info("torch      %s (CUDA %s), kernels for: %s", t["version"], t["cuda"], " ".join(t["arch_list"]) or "-")
    log.info("packages   %s", ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v and k != "torch"))
    for g in env["gpus"]:
        log.info("GPU %d      %s, compute %d.%d, %.1f GB", g["index"], g["name"], *g["capability"], g["memory_gb"])
    if not env["gpus"]:
        log.info("GPU        none")
    log.info(
        "machine    %s CPUs, %s GB RAM, %.1f GB free disk", env["cpu_count"], env["ram_gb"], env["disk"]["free_gb"]
    )
    log.info("internet   %s", ", ".join(f"{h} {'ok' if ok else 'unreachable'}" for h, ok in env["internet"].items()))
    log.info("precision  %s: %s", env["precision"]["advice"], env["precision"]["reason"])
    log.info("batch size %d per device for the default preset", env["batch_size_advice"])
    for line in env.get("disk_plan", {}).get("report", []):
        log.info("%s", line)
    for w in env["warnings"]:
        log.warning("warning: %s", w)
    for e in env["errors"]:
        print(f"error: {e}", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    work_dir = resolve_work_dir(args)
    cfg = load_config(args.config, args.overrides) if args.config or args.overrides else None
    families = [f.strip() for f in args.family.split(",") if f.strip()] if args.family else []
    families = families or (requirement_names(cfg) if cfg else [])
    extras = [p for f in families if (p := family_requirements(f, FAMILY_REQUIREMENTS)) is not None]
    stages = parse_stages(args.stages, cfg) if cfg else []
    work_dir.mkdir(parents=True, exist_ok=True)
    rows, warnings, errors = _dependencies(args, [args.requirements, *extras])
    env = collect_environment(work_dir, kaggle_t4=args.kaggle_t4, min_free_gb=args.min_free_gb)
    if cfg is not None:
        try:
            label, models_dir = args.config or cfg.model.family, (args.models_dir or work_dir / MODELS).resolve()
            env["disk_plan"], plan_errors = disk_plan(cfg, stages, label, models_dir, work_dir, env["disk"]["free_gb"])
            errors += plan_errors
        except AetuneError as e:  # e.g. a family's package that failed to install: reported, the rest still written
            warnings.append(f"no disk plan: {e}")
    env["families"] = families
    env["requirements"] = rows
    env["warnings"] = warnings + env["warnings"]
    env["errors"] = errors + env["errors"]
    atomic_write_json(work_dir / ENVIRONMENT_FILE, env)
    _report(env)
    log.info("wrote %s", work_dir / ENVIRONMENT_FILE)
    return 2 if env["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(run_script(main, parse_args))
