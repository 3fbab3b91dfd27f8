"""Step 5: measure the fine-tuned autoencoder and export its encoder for a DiT.

    python step5_validate_export.py --checkpoint checkpoints/stage3/last.ckpt \\
        --data_root /kaggle/input/micro-doppler-data --all --kaggle

Writes under <work_dir>/results: metrics.json (overall, per user, thresholds, user separability),
reconstruction_results.png, latent_users.png, training_curves.png, latent_statistics.json,
latents_stats.pt (LightningDiT format), <family>_encoder_for_dit.pt and <family>_<dataset>_lightningdit.pt.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from aetune.cli import add_common_args, resolve_work_dir, run_main
from aetune.errors import AetuneError

log = logging.getLogger("aetune")
PARTS = ("metrics", "figures", "latent_stats", "export")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--checkpoint", help="stage .ckpt or *_final.pt (default: the newest checkpoints/*_final.pt)")
    p.add_argument("--data_root", help="folder holding the user folders, if it moved since step 3")
    p.add_argument("--all", action="store_true", help="run every part (the default when no part is named)")
    p.add_argument("--metrics", action="store_true", help="results/metrics.json and the printed table")
    p.add_argument("--figures", action="store_true", help="reconstructions, latents by user, training curves")
    p.add_argument("--latent_stats", action="store_true", help="latent_statistics.json and latents_stats.pt")
    p.add_argument("--export", action="store_true", help="the encoder for the DiT and a LightningDiT checkpoint")
    p.add_argument(
        "--split",
        choices=["val", "train", "all"],
        help="images for metrics and figures (default val) and for latent statistics (default train)",
    )
    p.add_argument(
        "--latent_source", choices=["mode", "sample"], default="mode", help="latents the statistics describe"
    )
    p.add_argument("--batch_size", type=int, default=16, help="images per forward pass")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--inception_weights", help="pytorch-fid Inception weights file (default: the torch hub cache)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars (logs, CI)")
    return p.parse_args(argv)


def find_checkpoint(arg: str | None, work_dir: Path) -> Path:
    """``--checkpoint`` as given or relative to the work directory; else the newest final model."""
    if arg:
        for candidate in (Path(arg).expanduser(), work_dir / arg):
            if candidate.is_file():
                return candidate.resolve()
        raise AetuneError(f"--checkpoint {arg} not found (looked in the current folder and in {work_dir})")
    finals = sorted((work_dir / "checkpoints").glob("*_final.pt"), key=lambda f: f.stat().st_mtime)
    if not finals:
        raise AetuneError(f"no *_final.pt in {work_dir / 'checkpoints'}: run step 4 first, or pass --checkpoint")
    return finals[-1]


def main(args: argparse.Namespace) -> int:
    import torch

    from aetune import figures, report
    from aetune.data.prepared import load_prepared
    from aetune.evaluate import Evaluator, check_labels, inception_features, report_lpips
    from aetune.export import dit_snippet, export_for_dit
    from aetune.hub import recorded_weight
    from aetune.io import atomic_torch_save, atomic_write_json
    from aetune.train.artifacts import load_autoencoder_checkpoint
    from aetune.train.plan import RunState

    parts = {p for p in PARTS if args.all or getattr(args, p)} or set(PARTS)
    if args.batch_size < 1:
        raise AetuneError(f"--batch_size must be at least 1, got {args.batch_size}")
    work_dir = resolve_work_dir(args)
    out = work_dir / "results"
    ckpt = find_checkpoint(args.checkpoint, work_dir)
    run_state = RunState.load(work_dir)  # a checkpoint of another family than this run's is refused
    model, meta = load_autoencoder_checkpoint(ckpt, family=run_state.family if run_state else None)
    prepared = load_prepared(work_dir, args.data_root)
    check_labels(meta, prepared.labels, ckpt)
    family, size = meta["family"], int(meta["config"]["data"]["image_size"])
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    eval_split, stats_split = args.split or "val", args.split or "train"
    log.info(
        "%s: %s model, stage %s, on %s; parts: %s", ckpt, family, meta.get("stage"), device, ", ".join(sorted(parts))
    )
    for warning in report.run_warnings(meta):
        log.warning("WARNING: %s", warning)

    lpips_model = features = lpips_reason = rfid_reason = None
    if "metrics" in parts:
        recorded_weight(work_dir, "lpips_vgg16")  # links step 2's VGG16 into the torch hub cache for lpips
        inception = args.inception_weights or recorded_weight(work_dir, "fid_inception")
        lpips_model, lpips_reason = report_lpips(meta)
        features, rfid_reason = inception_features(inception, device)
    evaluator = Evaluator(
        model, prepared, size, meta["config"]["data"]["cache"], work_dir, lpips_model=lpips_model, features=features,
        batch_size=args.batch_size, device=device, stats_source=args.latent_source,
        seed=int(meta["config"]["train"]["seed"]), progress=not args.no_progress,
    )  # fmt: skip

    # Everything is computed before the first file is written: a failure leaves the old results whole.
    files: dict[str, object] = {}
    if parts & {"metrics", "figures"}:
        evaluated = evaluator.evaluated(eval_split)
        space = report.latent_space_report(evaluator.encoded("train"), evaluator.encoded("val"), evaluated, eval_split)
    if "metrics" in parts:
        unavailable = {"lpips": lpips_reason} if lpips_reason else {}
        rfid = {"rfid": report.rfid_metric(evaluated, rfid_reason)}
        quality = report.quality_report(evaluated.per_image, evaluated.labels, prepared.labels, unavailable, rfid)
        files["metrics.json"] = report.metrics_document(quality, space, meta, ckpt, eval_split)
        log.info("%s\n%s", report.format_table(quality), report.format_latent_space(space))
    if parts & {"latent_stats", "export"}:
        encoded = evaluator.encoded(stats_split)
        if encoded is None:
            raise AetuneError(f"the {stats_split} split has no images: choose another --split")
        stats = encoded.stats
    if "latent_stats" in parts:
        files["latent_statistics.json"] = {**report.provenance(meta), "split": stats_split, **stats.to_json()}
        files["latents_stats.pt"] = stats.lightningdit_stats()

    written = [
        atomic_write_json(out / name, obj) if name.endswith(".json") else atomic_torch_save(obj, out / name)
        for name, obj in files.items()
    ]
    if "figures" in parts:
        written += figures.write_figures(evaluated, space, prepared.labels, meta, eval_split, work_dir)
    if "export" in parts:
        info = {"checkpoint": str(ckpt), "stats_split": stats_split}
        exported = export_for_dit(out, model, stats, prepared.labels, size, {**report.provenance(meta), **info})
        written += exported
    for path in written:
        log.info("wrote %s", path)
    if "export" in parts:
        log.info("\nuse it in your DiT:\n\n%s\n", dit_snippet(exported[0], size, stats.latent_shape))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main, parse_args()))
