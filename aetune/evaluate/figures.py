"""Step 5's figures: reconstructions, latents by user, training curves (matplotlib, PNG, atomic)."""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on Kaggle or CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from aetune import metrics  # noqa: E402
from aetune.evaluate.evaluator import SplitResult  # noqa: E402
from aetune.evaluate.report import THRESHOLDS, figure_title, latent_title, model_task  # noqa: E402
from aetune.io import atomic_path  # noqa: E402
from aetune.recipes import get_recipe  # noqa: E402

log = logging.getLogger(__name__)


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Save ``fig`` as PNG atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def _image(chw: np.ndarray) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) for ``imshow``."""
    return np.clip(chw.transpose(1, 2, 0), 0.0, 1.0)


def plot_reconstructions(
    examples: Sequence[tuple[str, np.ndarray, np.ndarray] | tuple[str, np.ndarray, np.ndarray, np.ndarray]],
    path: str | Path,
    title: str = "",
) -> Path:
    """One row per example: original | reconstruction (PSNR in the title) | absolute error.

    Paired (restoration) examples carry the input too and are drawn input (LQ) | output | target (GT) | error.

    Args:
        examples: (user, original, reconstruction[, input]), images (3, H, W) in [0, 1].
        path: PNG to write.
        title: figure title (model, split, warnings).
    """
    if not examples:
        raise ValueError("no examples to plot")
    errors = [np.abs(e[1] - e[2]).mean(axis=0) for e in examples]  # (3, H, W) -> (H, W)
    vmax = max(float(e.max()) for e in errors) or 1.0  # one colour scale for every row: rows compare
    cols = max(len(e) for e in examples)  # 3 panels, 4 with an input
    fig, axes = plt.subplots(
        len(examples), cols, figsize=(3.2 * cols, 3.1 * len(examples)), squeeze=False, layout="constrained"
    )
    for row, (example, err) in enumerate(zip(examples, errors, strict=True)):
        user, orig, rec = example[:3]
        psnr = float(metrics.psnr(torch.from_numpy(orig)[None], torch.from_numpy(rec)[None])[0])
        panels = [
            (_image(orig), f"{user}: original", {}),
            (_image(rec), f"reconstruction, PSNR {psnr:.2f} dB", {}),
            (err, "|error| (mean over RGB)", {"cmap": "inferno", "vmin": 0.0, "vmax": vmax}),
        ]
        if len(example) == 4:
            panels = [
                (_image(example[3]), f"{user}: input (LQ)", {}),
                (_image(rec), f"output, PSNR {psnr:.2f} dB", {}),
                (_image(orig), "target (GT)", {}),
                panels[2],
            ]
        for col, (img, label, kw) in enumerate(panels):
            ax = axes[row, col]
            im = ax.imshow(img, **kw)
            ax.set_title(label, fontsize=10)
            ax.axis("off")
            if col == len(panels) - 1:
                fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


TSNE_MIN_POINTS = 30
"""Below this many images t-SNE's neighbourhoods are too small to mean anything: PCA only."""


def project_2d(x: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """(N, D) -> {"PCA": (N, 2), and "t-SNE": (N, 2) when N >= ``TSNE_MIN_POINTS``}."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    out = {"PCA": PCA(n_components=2, random_state=seed).fit_transform(x)}
    if len(x) >= TSNE_MIN_POINTS:
        # t-SNE on the top principal components: standard practice, and fast on 8192-d latents.
        reduced = PCA(n_components=min(50, *x.shape), random_state=seed).fit_transform(x)
        perplexity = min(30.0, (len(x) - 1) / 3)
        out["t-SNE"] = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)
    return out


def plot_latent_users(
    latents: np.ndarray, labels: np.ndarray, label_names: dict[str, int], path: str | Path, title: str
) -> Path:
    """Scatter of per-image latents projected to 2-D (PCA, t-SNE), coloured by user.

    Args:
        latents: (N, D) flattened latents.
        labels: (N,) user labels.
        label_names: user -> label.
        path: PNG to write.
        title: figure title (probe accuracy, silhouette).
    """
    projections = project_2d(latents)
    users = [u for u, lab in label_names.items() if (labels == lab).any()]
    cmap = plt.get_cmap("tab10" if len(users) <= 10 else "tab20" if len(users) <= 20 else "turbo")
    colours = {u: cmap(i / max(len(users) - 1, 1)) if len(users) > 20 else cmap(i) for i, u in enumerate(users)}
    size = 30 if len(labels) < 300 else 12  # large enough to see the colour, small enough not to hide others
    fig, axes = plt.subplots(
        1, len(projections), figsize=(6.2 * len(projections) + 2.2, 6.0), squeeze=False, layout="constrained"
    )
    for ax, (name, xy) in zip(axes[0], projections.items(), strict=True):
        for u in users:
            m = labels == label_names[u]
            ax.scatter(xy[m, 0], xy[m, 1], s=size, color=colours[u], label=u, alpha=0.85, edgecolors="none")
        ax.set_title(name, fontsize=11)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, -1].legend(
        loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, markerscale=1.5, ncol=1 + len(users) // 24
    )
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def read_metrics_csv(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A Lightning ``CSVLogger`` file -> column -> (steps, values), skipping empty cells.

    Rows are sparse (each logs some columns); ``step`` is the x axis. Columns that are not numbers
    are skipped.
    """
    series: dict[str, tuple[list[float], list[float]]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                step = float(row.get("step") or "nan")
            except ValueError:
                continue
            if math.isnan(step):
                continue
            for key, cell in row.items():
                if key in ("step", "epoch") or key is None or not cell:
                    continue
                try:
                    value = float(cell)
                except ValueError:
                    continue
                xs, ys = series.setdefault(key, ([], []))
                xs.append(step)
                ys.append(value)
    return {k: (np.asarray(xs), np.asarray(ys)) for k, (xs, ys) in series.items()}


def _smooth(y: np.ndarray) -> np.ndarray:
    """Centred moving average over ~2 % of the points (noisy per-batch losses)."""
    w = max(1, len(y) // 50)
    if w == 1:
        return y
    kernel = np.ones(w) / w
    padded = np.pad(y, (w // 2, w - 1 - w // 2), mode="edge")
    return np.convolve(padded, kernel, mode="valid")


def stage_metrics_files(checkpoints_dir: str | Path) -> dict[str, Path]:
    """Stage name -> ``checkpoints/stageN/metrics.csv`` for the stages that have one, in stage order."""
    dirs = [d for d in Path(checkpoints_dir).glob("stage*") if (d / "metrics.csv").is_file()]
    dirs.sort(key=lambda d: (len(d.name), d.name))  # stage10 after stage9
    return {d.name.removeprefix("stage"): d / "metrics.csv" for d in dirs}


CURVES_SKIPPED = ("lr", "grad_norm", "nonfinite", "batches")
"""Logged columns left out of the curves figure: bookkeeping, not training progress."""


def _curve_rank(name: str, first: Sequence[str]) -> tuple[int, int]:
    """Totals first, then ``train/<term>`` for the terms of ``first`` in their order, then the rest."""
    if "total" in name:
        return (0, 0)
    terms = [f"train/{t}" for t in first]
    return (1, terms.index(name)) if name in terms else (2, 0)


def curve_panels(logged: set[str], first: Sequence[str], max_panels: int) -> list[str]:
    """The columns the curves figure draws, in order: train columns (``_curve_rank``), then every ``val`` one."""
    val = sorted(k for k in logged if k.startswith("val"))
    train = sorted(logged - set(val), key=lambda k: (*_curve_rank(k, first), k))
    return train[: max(max_panels - len(val), 0)] + val


def plot_training_curves(
    stage_csvs: dict[str, Path], path: str | Path, terms: Sequence[str] = (), max_panels: int = 12
) -> Path | None:
    """Every logged series of every stage on one step axis, stage boundaries dashed.

    Args:
        stage_csvs: stage name -> its ``metrics.csv``, in stage order (``stage_metrics_files``).
        path: PNG to write.
        terms: the loss terms drawn right after the totals (the run's recipe's ``progress_keys``).
        max_panels: train columns first, then validation columns, up to this many panels.

    Returns:
        The path, or None when no stage logged anything numeric (nothing is written).
    """
    stages: list[tuple[str, float, dict[str, tuple[np.ndarray, np.ndarray]]]] = []
    starts: list[float] = []  # x of each later stage's first step: where its boundary is drawn
    end = 0.0
    for stage, csv_path in stage_csvs.items():
        data = read_metrics_csv(csv_path)
        if not data:
            continue
        first = min(float(xs.min()) for xs, _ in data.values())
        last = max(float(xs.max()) for xs, _ in data.values())
        # Each stage may restart its step counter; continuing counters are kept as they are.
        offset = max(0.0, end - first)
        if stages:
            starts.append(first + offset)
        stages.append((stage, offset, data))
        end = last + offset + 1
    if not stages:
        return None
    logged = {k for _, _, d in stages for k in d if not any(s in k for s in CURVES_SKIPPED)}
    names = curve_panels(logged, terms, max_panels)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.4 * rows), squeeze=False, layout="constrained")
    for ax, name in zip(axes.flat, names, strict=False):
        for i, (stage, offset, data) in enumerate(stages):
            if name not in data:
                continue
            xs, ys = data[name]
            colour = f"C{i % 10}"
            if name.startswith("val") or len(ys) < 10:
                ax.plot(xs + offset, ys, "o-", color=colour, ms=3, label=f"stage {stage}")
            else:
                ax.plot(xs + offset, ys, color=colour, alpha=0.25, lw=0.8)
                ax.plot(xs + offset, _smooth(ys), color=colour, lw=1.5, label=f"stage {stage}")
        for x in starts:
            ax.axvline(x, color="grey", ls="--", lw=1)
        values = np.concatenate([d[name][1] for _, _, d in stages if name in d])
        if values.min() > 0 and values.max() > 100 * values.min():  # KL and GAN terms span decades
            ax.set_yscale("log")
        if name.endswith("psnr"):
            for t in THRESHOLDS[:2]:
                ax.axhline(t.value, color="green", ls=":", lw=1)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle("training curves (dashed: stage boundaries; dotted: PSNR 25 / 30 dB)", fontsize=11)
    return save_figure(fig, path)


def write_figures(
    evaluated: SplitResult,
    space: dict[str, Any],
    labels: dict[str, int],
    meta: dict[str, Any],
    split: str,
    work_dir: str | Path,
    out_dir: str | Path,
) -> list[Path]:
    """Draw the three figures into ``out_dir`` (step 5's results being built); return the files written.

    ``training_curves.png`` (from ``<work_dir>/checkpoints``) is skipped, and said so, when no stage has
    logged numbers yet.
    """
    out = Path(out_dir)
    title = figure_title(meta, split)
    users = {label: user for user, label in labels.items()}
    examples = [(users[int(evaluated.labels[i])], *evaluated.examples[i]) for i in sorted(evaluated.examples)]
    written = [
        plot_reconstructions(examples, out / "reconstruction_results.png", title),
        plot_latent_users(
            evaluated.latents, evaluated.labels, labels, out / "latent_users.png", latent_title(space, title)
        ),
    ]
    terms = get_recipe(meta["family"], model_task(meta)).progress_keys
    curves = plot_training_curves(
        stage_metrics_files(Path(work_dir) / "checkpoints"), out / "training_curves.png", terms
    )
    if curves is None:
        log.info("no checkpoints/stage*/metrics.csv with numbers yet: training_curves.png not drawn")
    return written + ([curves] if curves else [])
