"""Step 4: fine-tune the autoencoder in stages, resumably, within Kaggle's session limits.

    python step4_train.py --data_root /kaggle/input/micro-doppler-data \\
        --pretrained_path /kaggle/input/vavae-pretrained/vavae-imagenet256-f16d32-dinov2.pt \\
        --stages 1,2,3 --batch_size 8 --gradient_accumulation 2 --kaggle
    python step4_train.py ... --batch_size 16 --devices "0,1" --kaggle_t4 --kaggle     # two T4s (DDP)
    python step4_train.py --config demo --stages 1,2,3                                  # CPU demo

Re-running the same command resumes where it stopped. Writes checkpoints/run_state.json, checkpoints/stageN/
(last.ckpt, the 2 best by validation PSNR, config.yaml, metrics.csv, validation_history.json, samples/) and
checkpoints/<family>_<dataset>_final.pt. See README.md, "Step 4".
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

from aetune.cli import add_common_args, resolve_work_dir, run_script

STARTED = time.time()  # the session deadline counts from this process's start
INTERRUPTED_EXIT = 3  # non-zero: a notebook's "Run All" must not go on to step 5 with a half-trained model
log = logging.getLogger("aetune")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, config=True)
    p.add_argument("--family", help="autoencoder family when no --config is given (default vavae: its preset)")
    p.add_argument("--task", help="a task over the family, e.g. restoration (LQ -> GT pairs): its default preset")
    p.add_argument("--data_root", help="folder of user folders (optional once step 3 prepared the work dir)")
    p.add_argument(
        "--pretrained_path",
        type=Path,
        help="weights stage 1 starts from, comma-separated files (default: the family's released model step 2 "
        "fetched, else random init, said loudly)",
    )
    p.add_argument("--from_scratch", action="store_true", help="ignore step 2's released model: random init")
    p.add_argument("--stages", help="stages of the preset's plan to run, e.g. 1,2,3 (default: all)")
    p.add_argument("--epochs", help="epochs per requested stage: one number for all, or one per stage (30,15,10)")
    p.add_argument("--max_steps", help="batch limit per requested stage, same form as --epochs (smoke runs)")
    p.add_argument("--batch_size", type=int, help="images per batch and device")
    p.add_argument("--gradient_accumulation", type=int, help="batches per optimizer step")
    p.add_argument("--learning_rate", type=float, help="default 1e-5 from pretrained weights, 1e-4 from scratch")
    p.add_argument("--gradient_clip_val", type=float, help="max gradient norm (0 disables)")
    p.add_argument("--freeze_encoder_levels", type=int, help="freeze the encoder stem and its first N levels")
    p.add_argument("--precision", help="32, 16-mixed or bf16-mixed (default: step 1's advice for this GPU)")
    p.add_argument("--num_workers", type=int, help="data loader processes")
    p.add_argument("--seed", type=int, help="seed of initialisation, noise and data order")
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"], help="default: GPU if any")
    p.add_argument("--devices", help='GPU indices, e.g. "0,1" for DDP on two GPUs; on CPU a process count')
    p.add_argument("--kaggle_t4", action="store_true", help='Kaggle "GPU T4 x2": --devices "0,1", fp16 mixed')
    p.add_argument("--num_nodes", type=int, default=1, help="machines (torchrun / SLURM start the processes)")
    p.add_argument("--strategy", default="ddp", choices=["ddp", "fsdp"], help="multi-device strategy (fsdp: refused)")
    p.add_argument("--global_batch_size", type=int, help="images per optimizer step over all devices")
    p.add_argument("--max_hours", type=float, help="save and stop after H hours (--kaggle: 11.5)")
    p.add_argument("--stop_after_batches", type=int, help="save and stop this session after N batches")
    p.add_argument("--resume_from", type=Path, help="a previous session's output (read-only) to continue")
    p.add_argument("--allow_stage_gap", action="store_true", help="run a stage whose predecessor never finished")
    p.add_argument("--detect_anomaly", action="store_true", help="autograd anomaly detection (slow; NaN hunting)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars (logs, CI)")
    p.add_argument("--logger", default="csv", choices=["csv", "tensorboard", "wandb", "swanlab"], help="tracker")
    p.add_argument("--logger_online", action="store_true", help="wandb/swanlab online (default: offline files)")
    p.add_argument("--note", help="a note on this session, kept in checkpoints/experiments.yaml")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    from aetune.setup.hub import attach_recorded_weights
    from aetune.train.flags import build_config
    from aetune.train.runner import TrainRequest, is_primary, run_training
    from aetune.train.start import default_start

    if not is_primary():
        logging.getLogger().setLevel(logging.ERROR)  # DDP children would repeat the parent's messages
    cfg, stages = build_config(args)
    if args.kaggle_t4 and args.devices is None:
        args.devices = "0,1"
    work_dir = resolve_work_dir(args)
    attach_recorded_weights(cfg, work_dir)
    pretrained = args.pretrained_path
    if pretrained is None and not args.from_scratch:
        pretrained = default_start(cfg, work_dir)  # the family's release, if step 2 fetched it and it fits
        if pretrained is not None:
            log.info("--pretrained_path not given: starting from %s (step 2); --from_scratch to not", pretrained)
    req = TrainRequest(
        work_dir=work_dir,
        cfg=cfg,
        stages=stages,
        pretrained_path=pretrained,
        data_root=Path(args.data_root) if args.data_root else None,
        accelerator=args.accelerator,
        devices=args.devices,
        resume_from=args.resume_from,
        allow_stage_gap=args.allow_stage_gap,
        detect_anomaly=args.detect_anomaly,
        logger=args.logger,
        logger_offline=not args.logger_online,
        note=args.note,
        num_nodes=args.num_nodes,
        strategy=args.strategy,
        max_hours=cfg.train.max_hours,
        stop_after_batches=args.stop_after_batches,
        started=STARTED,
        progress_bar=not args.no_progress,
    )
    result = run_training(req)
    if not is_primary():
        return 0
    again = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
    if result.status == "done":
        log.info("stages done: %s; final model: %s", ", ".join(result.stages_done), result.final_model)
        log.info("next: python step5_validate_export.py --output_dir %s", shlex.quote(str(work_dir)))
        return 0
    if result.status == "interrupted":
        print(
            f"interrupted by {result.reason}: stage {result.stage} saved at batch {result.batches} of "
            f"{result.total_batches}; re-run `python {again}` to resume (step 5 needs the finished run)",
            file=sys.stderr,
        )
        return INTERRUPTED_EXIT
    log.info(
        "stopped at %s: stage %s at batch %d of %d, saved in %s. Next: re-run `python %s` here; in a new Kaggle "
        "session, attach this notebook's output and add --resume_from /kaggle/input/<that output>",
        result.reason,
        result.stage,
        result.batches,
        result.total_batches,
        work_dir / "checkpoints" / f"stage{result.stage}" / "last.ckpt",
        again,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main, parse_args))
