"""Step 5's report: metric summaries with the seed's thresholds and the printed table.

Per-image numbers come from ``aetune.evaluate.evaluator``; here they are averaged overall and per user, checked
against the thresholds, and drawn. A metric that cannot be computed is a string ``"unavailable: ..."``
naming what is missing, never a number.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aetune import metrics
from aetune.config import RECONSTRUCTION
from aetune.evaluate.evaluator import SplitResult
from aetune.models.checkpoint import run_name
from aetune.tasks.restoration.options import TASK as RESTORATION

log = logging.getLogger(__name__)

Metric = float | str
"""A number, or ``"unavailable: <why and how to fix>"``."""


@dataclass(frozen=True)
class Threshold:
    """One of the seed's quality bars: ``metric op value`` (e.g. PSNR > 25 dB)."""

    name: str
    metric: str
    op: str  # ">" or "<"
    value: float

    def passed(self, summary: dict[str, Metric]) -> bool | None:
        """True / False, or None when the metric is unavailable."""
        v = summary.get(self.metric)
        if not isinstance(v, float):
            return None
        return v > self.value if self.op == ">" else v < self.value


PSNR_MINIMUM, PSNR_GOOD = 25.0, 30.0
"""The seed's PSNR bars (dB, RGB in [0, 1]); also the fine-tuning advice's boundaries."""

THRESHOLDS = (
    Threshold(f"PSNR > {PSNR_MINIMUM:g} dB (minimum)", "psnr", ">", PSNR_MINIMUM),
    Threshold(f"PSNR > {PSNR_GOOD:g} dB (good)", "psnr", ">", PSNR_GOOD),
    Threshold("LPIPS < 0.1 (good)", "lpips", "<", 0.1),
    Threshold("MSE < 0.01 (excellent)", "mse", "<", 0.01),
)
"""The seed's bars; PSNR is on RGB in [0, 1], MSE on [0, 1] pixels."""

DEFINITIONS = {
    "mse": "mean squared error per image on RGB in [0, 1], averaged over images",
    "psnr": "PSNR per image on RGB in [0, 1] (dB), averaged over images",
    "psnr_y": "PSNR per image on the BT.601 luma channel (dB), averaged over images",
    "ssim_y": "SSIM per image on the BT.601 luma channel (Gaussian window 11, sigma 1.5), averaged",
    "lpips": "LPIPS-VGG distance per image, averaged over images (lower is better)",
    "rfid": "Frechet distance between Inception-v3 pool features of originals and reconstructions over the "
    "split (biased upwards for a few hundred images: compare runs on the same split)",
    "rfid_num_images": "images the rFID covariances were estimated from",
    "rfid_note": "whether that is fewer than the 2048 feature dimensions (rank-deficient covariances)",
    "final_score": "PSNR + 10 * SSIM - 5 * LPIPS (the seed's single number)",
    "psnr_baseline": "constant-image baseline: PSNR (RGB, dB) of predicting each image by its own mean colour, "
    "the best flat image; averaged like psnr. A model at or below it reconstructs no structure (collapse)",
    "psnr_y_baseline": "the same constant-image baseline on the BT.601 luma channel, beside psnr_y",
}

COLUMNS = ("mse", "psnr", "psnr_baseline", "psnr_y", "psnr_y_baseline", "ssim_y", "lpips")
"""Per-image metrics shown in the table, in order (each PSNR followed by its constant-image baseline)."""
HEADERS = {"mse": "MSE", "psnr": "PSNR", "psnr_baseline": "const", "psnr_y": "PSNR-Y", "psnr_y_baseline": "const-Y",
           "ssim_y": "SSIM-Y", "lpips": "LPIPS"}  # fmt: skip
"""The table's header of each column."""

BASELINE_CHECK = "PSNR above the constant-image baseline"
"""The check that tells a collapsed model (a flat colour) from one that reconstructs: ``psnr > psnr_baseline``."""


def final_score(summary: dict[str, Metric], psnr: str = "psnr") -> Metric:
    """``PSNR + 10 SSIM - 5 LPIPS`` (SSIM on luma; PSNR the ``psnr`` key), or "unavailable" naming what is missing."""
    missing = [k for k in (psnr, "ssim_y", "lpips") if not isinstance(summary.get(k), float)]
    if missing:
        return f"unavailable: needs {', '.join(missing)}"
    return float(summary[psnr]) + 10 * float(summary["ssim_y"]) - 5 * float(summary["lpips"])  # type: ignore[arg-type]


def summarize(per_image: dict[str, np.ndarray], unavailable: dict[str, str], psnr: str = "psnr") -> dict[str, Metric]:
    """Means of the per-image metrics, the unavailable ones as their reason, and the final score.

    Args:
        per_image: name -> (N,) values (any subset of ``COLUMNS``).
        unavailable: name -> ``"unavailable: ..."`` for the metrics that could not be computed.
        psnr: the PSNR of the final score: ``psnr`` (RGB, the seed's) or ``psnr_y`` (restoration, the fork's).
    """
    out: dict[str, Metric] = {k: float(np.mean(v)) for k, v in per_image.items()}
    out.update(unavailable)
    out["final_score"] = final_score(out, psnr)
    return out


def check_thresholds(summary: dict[str, Metric]) -> dict[str, bool | None]:
    """Threshold name -> passed (None when its metric is unavailable)."""
    return {t.name: t.passed(summary) for t in THRESHOLDS}


def beats_baseline(summary: dict[str, Metric]) -> bool | None:
    """Whether the mean PSNR is above the constant-image baseline's (None when either is missing)."""
    psnr, base = summary.get("psnr"), summary.get("psnr_baseline")
    if not isinstance(psnr, float) or not isinstance(base, float):
        return None
    return psnr > base


def all_checks(summary: dict[str, Metric]) -> dict[str, bool | None]:
    """The seed's thresholds and ``BASELINE_CHECK``: name -> passed (None when a metric is unavailable)."""
    return {**check_thresholds(summary), BASELINE_CHECK: beats_baseline(summary)}


def quality_report(
    per_image: dict[str, np.ndarray],
    labels: np.ndarray,
    label_names: dict[str, int],
    unavailable: dict[str, str],
    split_level: dict[str, Metric] | None = None,
    psnr: str = "psnr",
) -> dict[str, Any]:
    """Overall and per-user summaries with threshold checks.

    Args:
        per_image: name -> (N,) per-image metric values.
        labels: (N,) user label of each image.
        label_names: user name -> label (``data/labels.json``).
        unavailable: per-image metric -> reason it could not be computed (LPIPS without weights).
        split_level: metrics of the whole split only (``rfid_report``), added to the overall summary.
        psnr: the PSNR key of the final score (``summarize``).

    Returns:
        {"overall": summary, "checks": {threshold: passed}, "per_user": {user: summary + checks}}; the checks
        include ``BASELINE_CHECK``.
    """
    overall = {**summarize(per_image, unavailable, psnr), **(split_level or {})}
    per_user: dict[str, Any] = {}
    for user, label in label_names.items():
        mask = labels == label
        if not mask.any():
            continue
        summary = summarize({k: v[mask] for k, v in per_image.items()}, unavailable, psnr)
        per_user[user] = {"label": label, "num_images": int(mask.sum()), **summary, "checks": all_checks(summary)}
    return {"overall": overall, "checks": all_checks(overall), "per_user": per_user}


def rfid_report(evaluated: SplitResult, unavailable: str | None) -> dict[str, Metric | int]:
    """rFID of an evaluated split with the number of images and whether it is below the feature dimension.

    Returns:
        ``{"rfid": value, "rfid_num_images": N, "rfid_note": ...}``, or ``{"rfid": "unavailable: ..."}``
        (``unavailable`` when no features were taken).
    """
    if evaluated.real_features is None or evaluated.fake_features is None:
        return {"rfid": unavailable or "unavailable: no Inception features were computed"}
    n, dim = evaluated.real_features.shape
    if n < 2:
        return {"rfid": "unavailable: rFID needs at least 2 images"}
    if n < dim:
        note = (
            f"{n} images, fewer than the {dim} feature dimensions: the covariances are rank-deficient (rank <= "
            f"{n - 1}), so rFID is biased upwards; compare it only between runs on these same images"
        )
    else:
        note = f"{n} images (at least the {dim} feature dimensions)"
    rfid = metrics.rfid(evaluated.real_features, evaluated.fake_features)
    return {"rfid": rfid, "rfid_num_images": n, "rfid_note": note}


FINE_TUNING_ADVICE = {
    "skip fine-tuning": (
        f"PSNR >= {PSNR_GOOD:g} dB: the released model already reconstructs these images well; use it as it is "
        "(step 5 --checkpoint pretrained --export --export_latents) and spend the GPU time on the DiT"
    ),
    "light fine-tuning": (
        f"{PSNR_MINIMUM:g} dB <= PSNR < {PSNR_GOOD:g} dB: adapt the decoder and the last encoder levels, keep the "
        "first 3 (generic low-level filters) frozen (step 4 with --set model.freeze_encoder_levels=3)"
    ),
    "deep fine-tuning": (
        f"PSNR < {PSNR_MINIMUM:g} dB: these images are far from what the model saw; train every level through "
        "all three stages (step 4 with --set model.freeze_encoder_levels=0)"
    ),
}
"""What to do after measuring the released model (the seed's decision tree; docs/dit_handoff.md says why)."""


def fine_tuning_advice(summary: dict[str, Metric]) -> dict[str, str]:
    """``{"advice": one of FINE_TUNING_ADVICE, "reason": ...}`` from the overall PSNR of the released model."""
    psnr = summary.get("psnr")
    if not isinstance(psnr, float):
        return {"advice": "unavailable", "reason": f"no PSNR: {psnr}"}
    advice = (
        "skip fine-tuning" if psnr >= PSNR_GOOD else "light fine-tuning" if psnr >= PSNR_MINIMUM else "deep fine-tuning"
    )
    return {"advice": advice, "psnr": f"{psnr:.2f} dB", "reason": FINE_TUNING_ADVICE[advice]}


def format_advice(advice: dict[str, str]) -> str:
    """One line: ``advice: light fine-tuning (PSNR 27.10 dB): <reason>``."""
    return f"advice: {advice['advice']} (PSNR {advice.get('psnr', 'n/a')}): {advice['reason']}"


def latent_space_report(
    train: SplitResult | None, val: SplitResult | None, evaluated: SplitResult, split: str
) -> dict[str, Any]:
    """User separability: a linear probe (fit on train, scored on val) and the silhouette by user.

    Args:
        train, val: the encoded splits (their flattened posterior means and labels), None when empty.
        evaluated: the evaluated split, whose latents the silhouette scores.
        split: its name.
    """
    out: dict[str, Any] = {"features": "flattened posterior means (C*h*w values per image)"}
    if train is None or val is None:
        out["linear_probe_accuracy"] = "unavailable: needs images in both the train and the val split"
    else:
        acc = metrics.linear_probe_accuracy(train.latents, train.labels, val.latents, val.labels)
        out["linear_probe_accuracy"] = acc if not math.isnan(acc) else "unavailable: fewer than 2 users in train"
        counts = np.bincount(val.labels)
        out["chance_accuracy"] = float(counts.max() / counts.sum())  # always answering the largest user
        out["probe"] = (
            f"logistic regression on standardised latents: fit on {len(train.labels)} train images, "
            f"scored on {len(val.labels)} val images"
        )
    sil = metrics.silhouette(evaluated.latents, evaluated.labels)
    out["silhouette"] = sil if not math.isnan(sil) else "unavailable: needs 2 <= users < images"
    out["silhouette_split"] = f"{split} ({len(evaluated.labels)} images)"
    return out


def format_latent_space(space: dict[str, Any]) -> str:
    """One line: probe accuracy (and chance) and silhouette."""
    probe, sil = space["linear_probe_accuracy"], space["silhouette"]
    chance = f" (chance {space['chance_accuracy']:.3f})" if "chance_accuracy" in space else ""
    probe_text = f"{probe:.3f}{chance}" if isinstance(probe, float) else probe
    sil_text = f"{sil:.3f}" if isinstance(sil, float) else sil
    return f"user separability: linear probe accuracy {probe_text}; silhouette {sil_text}"


def run_warnings(meta: dict[str, Any]) -> list[str]:
    """What the reader must know about how the model was trained (random teacher, no LPIPS)."""
    out = []
    if meta.get("random_teacher"):
        out.append(
            "RANDOM TEACHER: this run aligned its latents to a randomly initialised network (demo preset); "
            "the numbers show the pipeline works, not what a real VA-VAE fine-tune reaches"
        )
    if meta.get("lpips") is False:
        out.append("no pretrained LPIPS in training (loss.lpips_pretrained false): LPIPS is not reported")
    return out


def provenance(meta: dict[str, Any]) -> dict[str, Any]:
    """What every output records about the model: family, task, dataset, stage, and how it was trained."""
    return {
        "family": meta.get("family"),
        "task": model_task(meta),
        "dataset": meta.get("dataset"),
        "stage": meta.get("stage"),
        "random_teacher": bool(meta.get("random_teacher")),
        "pretrained_lpips": meta.get("lpips") is not False,
    }


def metrics_document(
    quality: dict[str, Any],
    space: dict[str, Any],
    meta: dict[str, Any],
    checkpoint: str | Path,
    split: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The content of ``metrics.json``: provenance, warnings, thresholds, overall and per-user, latent space."""
    return {
        "checkpoint": str(checkpoint),
        **provenance(meta),
        "split": split,
        "num_images": sum(u["num_images"] for u in quality["per_user"].values()),
        "warnings": run_warnings(meta),
        "thresholds": [{"name": t.name, "metric": t.metric, "op": t.op, "value": t.value} for t in THRESHOLDS],
        "overall": quality["overall"],
        "checks": quality["checks"],
        "latent_space": space,
        "per_user": quality["per_user"],
        "definitions": DEFINITIONS,
        **(extra or {}),
    }


def model_task(meta: dict[str, Any]) -> str:
    """The task a model file was trained for (``model.task`` of its config; ``reconstruction`` when absent)."""
    return (meta.get("config") or {}).get("model", {}).get("task", RECONSTRUCTION)


def figure_title(meta: dict[str, Any], split: str) -> str:
    """``family, dataset, stage N, split`` and a RANDOM TEACHER mark when it applies."""
    family = run_name(str(meta.get("family")), model_task(meta), sep=" ")
    title = f"{family} / {meta.get('dataset')} / stage {meta.get('stage')} / {split} split"
    return title + ("  [RANDOM TEACHER: demo]" if meta.get("random_teacher") else "")


def latent_title(space: dict[str, Any], title: str) -> str:
    """The latent figure's title: probe accuracy and silhouette under the run's title."""
    return f"{title}\n{format_latent_space(space)}"


def _cell(v: Metric | None, name: str) -> str:
    if not isinstance(v, float):
        return "n/a"
    return f"{v:.5f}" if name == "mse" else f"{v:.4f}" if name in ("ssim_y", "lpips") else f"{v:.2f}"


def _mark(passed: bool | None) -> str:
    return {True: "pass", False: "FAIL", None: "n/a"}[passed]


def format_baseline(summary: dict[str, Metric]) -> str:
    """One line: the check against the constant-image baseline, ``pass  PSNR above ...: 27.10 vs 12.30 (+14.80 dB)``."""
    psnr, base = summary.get("psnr"), summary.get("psnr_baseline")
    passed = beats_baseline(summary)
    if passed is None:
        return f" n/a  {BASELINE_CHECK}: needs reconstructions"
    margin = float(psnr) - float(base)  # type: ignore[arg-type]
    verdict = "" if passed else ": the reconstructions are no better than a flat colour (collapsed model)"
    return f"{_mark(passed):>4}  {BASELINE_CHECK}: {psnr:.2f} vs {base:.2f} dB ({margin:+.2f} dB){verdict}"


def format_table(report: dict[str, Any]) -> str:
    """The per-user table (metrics, constant-image baselines, the two PSNR bars), the overall row, then the checks."""
    headers = ["user", "n", *(HEADERS[c] for c in COLUMNS), ">25dB", ">30dB"]
    rows = []
    for user, s in report["per_user"].items():
        checks = s["checks"]
        rows.append(
            [user, str(s["num_images"]), *(_cell(s.get(c), c) for c in COLUMNS)]
            + [_mark(checks[THRESHOLDS[0].name]), _mark(checks[THRESHOLDS[1].name])]
        )
    overall = report["overall"]
    n = sum(s["num_images"] for s in report["per_user"].values())
    total = [
        "overall",
        str(n),
        *(_cell(overall.get(c), c) for c in COLUMNS),
        _mark(report["checks"][THRESHOLDS[0].name]),
        _mark(report["checks"][THRESHOLDS[1].name]),
    ]
    widths = [max(len(r[i]) for r in [headers, *rows, total]) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))

    rule = "-" * len(line(headers))
    out = [line(headers), rule, *(line(r) for r in rows), rule, line(total), ""]
    for t in THRESHOLDS:
        value = overall.get(t.metric)
        shown = _cell(value, t.metric) if isinstance(value, float) else str(value)
        out.append(f"{_mark(report['checks'][t.name]):>4}  {t.name}: {shown}")
    out.append(format_baseline(overall))
    out.append("      (const, const-Y: the PSNR of each image's own mean colour, a flat image; see metrics.json)")
    rfid = overall.get("rfid")
    note = f" ({overall['rfid_note']})" if "rfid_note" in overall else ""
    out.append(f"      rfid: {_cell(rfid, 'rfid') if isinstance(rfid, float) else rfid}{note}")
    score = overall.get("final_score")
    out.append(f"      final_score: {_cell(score, 'final_score') if isinstance(score, float) else score}")
    return "\n".join(out)


RESTORATION_FINAL_SCORE = (
    "psnr_y + 10 * ssim_y - 5 * lpips, each of the 8-bit images: the restoration task's validation score "
    "(val/Final_Score, the HYPIR fork's Final_Score)"
)
"""The definition of ``final_score`` in a restoration run's ``metrics.json``."""


def restoration_protocol(config: dict[str, Any]) -> dict[str, Any]:
    """How step 5 measured a restoration run (``metrics.json["protocol"]``) and how its training validation differed.

    Args:
        config: the run's resolved config (``Config.to_dict()``).
    """
    size = int(config["data"]["image_size"])
    val = config.get(RESTORATION) or {}
    protocol: dict[str, Any] = {
        "resolution": f"{size}x{size}: LQ and GT resized with Pillow's bilinear filter (the fork's validation)",
        "colour_space": "PSNR and SSIM on BT.601 luma Y = 16 + 65.481 R + 128.553 G + 24.966 B of the 8-bit RGB "
        "(pyiqa test_y_channel=True, color_space='ycbcr'); LPIPS-VGG on the 8-bit RGB",
        "crop_border": 0,
        "pairs": "every pair of the split",
    }
    differs = []
    if val.get("native_val"):
        differs.append("validated at the stored size (restoration.native_val)")
    if val.get("crop_border"):
        differs.append(f"cropped {val['crop_border']} px per side (restoration.crop_border)")
    if val.get("num_samples_per_type"):
        differs.append(f"used the first {val['num_samples_per_type']} pairs of each type")
    if differs:
        protocol["training_validation"] = "differs from step 5: " + "; ".join(differs)
    return protocol


def write_metrics(
    folder: Path,
    evaluated: SplitResult,
    space: dict[str, Any],
    labels: dict[str, int],
    meta: dict[str, Any],
    checkpoint: Path | str,
    split: str,
    unavailable: dict[str, str | None],
) -> tuple[Path, list[str]]:
    """Write ``metrics.json`` of one evaluated split; return it and the tables step 5 prints.

    Args:
        unavailable: ``lpips`` / ``rfid`` -> why that metric could not be computed (None: it was).
    """
    from aetune.io import atomic_write_json

    missing = {"lpips": unavailable["lpips"]} if unavailable.get("lpips") else {}
    rfid = rfid_report(evaluated, unavailable.get("rfid"))
    restoration = model_task(meta) == RESTORATION
    psnr = "psnr_y" if restoration else "psnr"  # restoration scores as its validation does (the fork's Final_Score)
    quality = quality_report(evaluated.per_image, evaluated.labels, labels, missing, rfid, psnr)
    extra: dict[str, Any] = {"advice": fine_tuning_advice(quality["overall"])} if meta["kind"] == "pretrained" else {}
    if restoration:
        definitions = {**DEFINITIONS, "final_score": RESTORATION_FINAL_SCORE}
        extra |= {"protocol": restoration_protocol(meta["config"]), "definitions": definitions}
    document = metrics_document(quality, space, meta, checkpoint, split, extra)
    tables = [format_table(quality), format_latent_space(space)]
    tables += [format_advice(extra["advice"])] if "advice" in extra else []
    return atomic_write_json(folder / "metrics.json", document), tables


def write_latent_statistics(folder: Path, model: Any, encoded: Any, meta: dict[str, Any], split: str) -> list[Path]:
    """``latent_statistics.json``, LightningDiT's ``latents_stats.pt`` and, for RAE, the reference's per-position
    ``stat.pt``, from ``encoded`` (``Evaluator.encoded``: the split's latents and their statistics)."""
    from aetune.io import atomic_torch_save, atomic_write_json

    stats = encoded.stats
    document = {**provenance(meta), "split": split, **stats.to_json()}
    written = [atomic_write_json(folder / "latent_statistics.json", document)]
    written.append(atomic_torch_save(stats.lightningdit_stats(), folder / "latents_stats.pt"))
    if hasattr(model, "per_position_stats"):  # RAE: the reference's per-(C, H, W) stat.pt for its DiT
        written.append(atomic_torch_save(model.per_position_stats(encoded.latents), folder / "stat.pt"))
    return written


def log_written(out: Path, staged: Path, written: list[Path], kept: list[str], notes: list[str]) -> None:
    """Step 5's closing lines: each file written (under ``out``, where the staged set ``staged`` lands), the
    files kept from earlier runs, then the notes (tables, the DiT snippet)."""
    names = [path.relative_to(staged).as_posix() for path in written]
    for name in names:
        log.info("wrote %s", out / name)
    kept = [k for k in kept if k not in names]
    if kept:
        log.info("kept from earlier runs (parts not asked for now): %s", ", ".join(kept))
    for note in notes:
        log.info("\n%s", note)
