"""Step 5: measure the autoencoder (fine-tuned, or the released one) and export it for a DiT.

    python step5_validate_export.py --checkpoint checkpoints/stage3/last.ckpt \\
        --data_root /kaggle/input/micro-doppler-data --all --kaggle
    python step5_validate_export.py --checkpoint pretrained --metrics --kaggle   # before any training

Writes <work_dir>/results as one set (built beside it, then swapped in): metrics.json (overall, per user,
thresholds, constant-image baselines, user separability, advice for the released model), reconstruction_results.png,
latent_users.png, training_curves.png, latent_statistics.json, latents_stats.pt (LightningDiT format),
<family>_encoder_for_dit.pt, <family>_<dataset>_lightningdit.pt (kl, vavae) and latents/ (LightningDiT's latent
dataset; a row per image, volume or clip). --all runs the parts that apply to the run, naming each it skips.
"""

from __future__ import annotations

import argparse
import logging

from aetune.cli import add_common_args, resolve_work_dir, run_script
from aetune.errors import AetuneError

log = logging.getLogger("aetune")
SPLITS = ("val", "train", "all")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, config=True)
    p.add_argument("--checkpoint", help="stage .ckpt, *_final.pt, or 'pretrained' (default: newest *_final.pt)")
    p.add_argument("--data_root", help="folder holding the user folders, if it moved since step 3")
    p.add_argument("--all", action="store_true", help="run every part (the default when no part is named)")
    p.add_argument("--metrics", action="store_true", help="results/metrics.json and the printed table")
    p.add_argument("--figures", action="store_true", help="reconstructions, latents by user, training curves")
    p.add_argument("--latent_stats", action="store_true", help="latent_statistics.json, latents_stats.pt, rae: stat.pt")
    p.add_argument("--export", action="store_true", help="the encoder for the DiT and a LightningDiT checkpoint")
    p.add_argument("--export_latents", action="store_true", help="results/latents/: LightningDiT's latent dataset")
    p.add_argument("--split", choices=SPLITS, default="val", help="images for metrics and figures (default val)")
    p.add_argument("--stats_split", choices=SPLITS, default="train", help="images for latent statistics")
    p.add_argument(
        "--latent_source", choices=["mode", "sample"], default="mode", help="latents the statistics describe"
    )
    p.add_argument(
        "--export_source",
        choices=["sample", "mode"],
        help="latents stored by --export_latents (default: sample, or mode without a posterior)",
    )
    p.add_argument("--batch_size", type=int, default=16, help="images per forward pass")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--inception_weights", help="pytorch-fid Inception weights file (default: the torch hub cache)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars (logs, CI)")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    from aetune.config import load_config
    from aetune.data.kinds.video import bind_clips
    from aetune.data.prepared import load_prepared
    from aetune.data.sources import prepared_kind
    from aetune.evaluate import figures, report
    from aetune.evaluate.evaluator import Evaluator, quality_models, resolve_device
    from aetune.evaluate.export import dit_snippet, export_for_dit
    from aetune.evaluate.latent_dataset import LATENTS_DIR, STEP5_PARTS, step5_parts, write_latent_dataset
    from aetune.evaluate.model_source import load_model
    from aetune.evaluate.result_set import recover, staged_folder
    from aetune.models.registry import family_exports

    if args.batch_size < 1:
        raise AetuneError(f"--batch_size must be at least 1, got {args.batch_size}")
    device = resolve_device(args.device)
    work_dir = resolve_work_dir(args)
    out = work_dir / "results"
    recover(out)  # a file in the way is an error before any work; a killed run's leftovers go
    prepared = load_prepared(work_dir, args.data_root)
    config = load_config(args.config, args.overrides) if args.config or args.overrides else None
    kind = prepared_kind(work_dir)
    model, meta, ckpt = load_model(args.checkpoint, config, work_dir, prepared)
    named = {p for p in STEP5_PARTS if getattr(args, p)}
    parts, skipped = step5_parts(named, args.all, kind, meta["family"])
    size, seed = int(meta["config"]["data"]["image_size"]), int(meta["config"]["train"]["seed"])
    log.info("%s: %s model, stage %s, on %s; parts: %s", ckpt, meta["family"], meta["stage"], device, ", ".join(parts))
    for part, why in skipped.items():
        log.info("skipped %s: %s", part, why)
    for warning in report.run_warnings(meta):
        log.warning("WARNING: %s", warning)

    lpips_model = features = lpips_reason = rfid_reason = None
    if "metrics" in parts:
        lpips_model, lpips_reason, features, rfid_reason = quality_models(
            meta, work_dir, args.inception_weights, device
        )
    if kind == "video":  # clips as the run trained on them (the kind API carries only the image size)
        bind_clips(meta["config"])
    evaluator = Evaluator(
        model, prepared, size, meta["config"]["data"]["cache"], work_dir, lpips_model=lpips_model, features=features,
        batch_size=args.batch_size, device=device, stats_source=args.latent_source, seed=seed,
        progress=not args.no_progress, kind=kind,
    )  # fmt: skip
    info = {**report.provenance(meta), "checkpoint": str(ckpt), "stats_split": args.stats_split}
    notes = []
    with staged_folder(out) as staged:  # results/ changes only if every part below succeeds
        res = staged.path
        written = []
        if parts & {"metrics", "figures"}:
            evaluated = evaluator.evaluated(args.split)
            space = report.latent_space_report(
                evaluator.encoded("train"), evaluator.encoded("val"), evaluated, args.split
            )
        if "metrics" in parts:
            unavailable = {"lpips": lpips_reason, "rfid": rfid_reason}
            path, tables = report.write_metrics(
                res, evaluated, space, prepared.labels, meta, ckpt, args.split, unavailable
            )
            written.append(path)
            notes += tables
        if "figures" in parts:
            written += figures.write_figures(evaluated, space, prepared.labels, meta, args.split, work_dir, res)
        if parts & {"latent_stats", "export"}:
            encoded = evaluator.encoded(args.stats_split)
            if encoded is None:
                raise AetuneError(f"the {args.stats_split} split has no images: choose another --stats_split")
            stats = encoded.stats
        if "latent_stats" in parts:
            written += report.write_latent_statistics(res, model, encoded, meta, args.stats_split)
        if "export" in parts:
            exports = export_for_dit(res, model, stats, prepared.labels, size, info)
            written += exports
            for family_export in family_exports(model.family):  # e.g. a distilled tiny decoder for DiT previews
                written += family_export(res, model, meta, size, device)
        if "export_latents" in parts:
            splits = ["train"] * len(prepared.train) + ["val"] * len(prepared.val)
            exported = write_latent_dataset(
                staged.fresh(LATENTS_DIR), model, evaluator.dataset("all"), prepared.split("all"), splits=splits,
                source=args.export_source, batch_size=args.batch_size, device=device, seed=seed,
                info={**info, "image_size": size}, progress=not args.no_progress,
            )  # fmt: skip
            written += [*exported.shards, exported.folder / "latents_stats.pt"]
    if "export" in parts:  # the closing hint names what this run wrote, with this data kind's shapes
        hint = dit_snippet(
            out / exports[0].name, size, stats.latent_shape, kind=kind,
            time_downscale=getattr(model, "time_downscale", 1),
            lightningdit=out / exports[1].name if len(exports) > 1 else None,
            latents=out / LATENTS_DIR if "export_latents" in parts else None,
        )  # fmt: skip
        notes.append(f"use it in your DiT:\n\n{hint}")
    report.log_written(out, res, written, staged.kept, notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main, parse_args))
