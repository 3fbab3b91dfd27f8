"""The disk a training run needs: what step 4 writes for the requested stages, against the space left.

Kaggle keeps at most 20 GB of ``/kaggle/working``; a run that fills it dies at a checkpoint save hours in.
So steps 1 and 4 project the total first and stop early when it cannot fit. Sizes, in fp32 (4 bytes a
number), from what step 4 writes (``aetune.train.runner``):

- ``last.ckpt`` (to resume): the autoencoder and discriminator weights, plus Adam's two moments
  (``exp_avg``, ``exp_avg_sq``) for every trained number: 4 (A + D) + 8 (T + D) bytes, about 3x the weights.
- ``best-*.ckpt`` (top-k by PSNR, ``save_weights_only``): 4 (A + D) bytes each.
- ``<family>_<dataset>_final.pt``: 4 (A + D) bytes, once.
- a save writes the new file beside the old one and renames it (atomic), so the peak holds one extra
  ``last.ckpt``.
- plus the weights in ``models/`` (step 2) and the decoded-image cache (``data.cache: file``).

Frozen networks (teacher, LPIPS) are never checkpointed. Everything here is pure arithmetic; only
:func:`model_size` looks at a model, and it works without torch (from the family's registered ``full_size``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aetune.config import Config, family_schema
from aetune.errors import AetuneError
from aetune.setup.env import GIB
from aetune.setup.weights_registry import REGISTRY, weights_for_config

BYTES_PER_NUMBER = 4  # fp32 weights and optimizer moments (mixed precision keeps fp32 masters)
ADAM_MOMENTS = 2  # exp_avg and exp_avg_sq per trained number
FILE_OVERHEAD = 1 << 20  # Lightning's metadata, BatchNorm buffers, the resolved config: well under 1 MiB
BEST_CHECKPOINTS = 2  # step 4's ModelCheckpoint save_top_k
PRUNED_STAGE_FILES = BEST_CHECKPOINTS + 1
"""A finished stage once the next one runs: its best checkpoints and its ``last.ckpt`` stripped of the
optimizer states (``aetune.train.artifacts.strip_training_state``): all weights-only."""


@dataclass(frozen=True)
class ModelSize:
    """Numbers (parameters) of what a stage checkpoints.

    Attributes:
        autoencoder: every autoencoder parameter (incl. ``linear_proj``).
        discriminator: every discriminator parameter.
        trainable: the autoencoder parameters Adam trains (frozen encoder levels excluded); None = all.
    """

    autoencoder: int
    discriminator: int
    trainable: int | None = None

    @property
    def weights_bytes(self) -> int:
        """One weights-only file (best checkpoint, final model)."""
        return BYTES_PER_NUMBER * (self.autoencoder + self.discriminator) + FILE_OVERHEAD

    @property
    def resume_bytes(self) -> int:
        """``last.ckpt``: the weights plus both optimizers' Adam moments."""
        trained = (self.autoencoder if self.trainable is None else self.trainable) + self.discriminator
        return self.weights_bytes + ADAM_MOMENTS * BYTES_PER_NUMBER * trained


@dataclass(frozen=True)
class BudgetItem:
    """One thing the run puts on disk.

    Attributes:
        what: words for the report (``stage 2 last.ckpt (resume)``).
        bytes: its size.
        exists: already on disk (e.g. weights step 2 fetched): part of the total, not of what is still needed.
    """

    what: str
    bytes: int
    exists: bool = False


@dataclass(frozen=True)
class DiskBudget:
    """The projected files of a run; :meth:`check` compares what is still to be written with the space left."""

    items: tuple[BudgetItem, ...]

    @property
    def total(self) -> int:
        """Bytes of everything, present or to come."""
        return sum(i.bytes for i in self.items)

    @property
    def needed(self) -> int:
        """Bytes still to be written."""
        return sum(i.bytes for i in self.items if not i.exists)

    def lines(self) -> list[str]:
        """One line per item and a total, for a log."""
        out = [f"  {gb(i.bytes):>9}  {i.what}{' (on disk)' if i.exists else ''}" for i in self.items]
        return [*out, f"  {gb(self.total):>9}  total, {gb(self.needed)} still to be written"]

    def to_dict(self) -> dict:
        """JSON-ready: the items with their bytes, the total and what is still to be written."""
        items = [{"what": i.what, "bytes": i.bytes, "exists": i.exists} for i in self.items]
        return {"items": items, "total_bytes": self.total, "needed_bytes": self.needed}

    def problem(self, free_bytes: int, where: str | Path) -> str | None:
        """None when what is still to be written fits in ``free_bytes``; else one line with both numbers,
        the largest items and the ways out."""
        if self.needed <= free_bytes:
            return None
        biggest = sorted((i for i in self.items if not i.exists), key=lambda i: -i.bytes)[:3]
        return (
            f"the run needs {gb(self.needed)} more in {where} but {gb(free_bytes)} are free (largest: "
            f"{', '.join(f'{i.what} {gb(i.bytes)}' for i in biggest)}): keep the weights out of it (step 2 "
            "--models_dir /tmp/aetune_models, fetched again each session), run fewer stages per session "
            "(--stages 1, then --stages 2 in the next), or delete the checkpoints of finished stages"
        )

    def check(self, free_bytes: int, where: str | Path) -> None:
        """Raise when what is still to be written does not fit in ``free_bytes``.

        Raises:
            DiskBudgetError: the :meth:`problem`.
        """
        problem = self.problem(free_bytes, where)
        if problem is not None:
            raise DiskBudgetError(problem)


class DiskBudgetError(AetuneError):
    """The projected files of a run do not fit in the space left."""


def gb(n: int) -> str:
    """Bytes as GB (GiB, as ``aetune.setup.env`` reports free space): ``1.62 GB``."""
    return f"{n / GIB:.2f} GB"


def image_cache_bytes(n_images: int, image_size: int) -> int:
    """The decoded-image cache (``data.cache: file``): (N, S, S, 3) uint8 in ``cache/``."""
    return n_images * image_size * image_size * 3


def project_run(
    size: ModelSize,
    stages: Sequence[str],
    weights: Iterable[BudgetItem] = (),
    cache_bytes: int = 0,
    top_k: int = BEST_CHECKPOINTS,
    finished_stage_files: int | None = None,
) -> DiskBudget:
    """What a step-4 run writes for ``stages`` (in order), at its peak: the end of the last stage.

    Args:
        size: parameter counts (:func:`model_size`).
        stages: the stages this run trains (those still to do).
        weights: the weight files (``models/``) as items: from the registry before step 2
            (:func:`weight_items`), or from the manifest (``exists=True``) after it.
        cache_bytes: rebuildable caches written in the budgeted folder (:func:`image_cache_bytes`).
        top_k: best checkpoints kept per stage.
        finished_stage_files: None: a finished stage keeps its ``last.ckpt`` and ``top_k`` best files;
            k: once the next stage runs, it is pruned to k weights-only files.

    Returns:
        The items: per stage ``last.ckpt`` and best checkpoints, the final model, the transient copy of a
        save, the weights and the cache.
    """
    items = []
    for n, stage in enumerate(stages):
        if finished_stage_files is not None and n < len(stages) - 1:
            items.append(BudgetItem(f"stage {stage}: {finished_stage_files} weights-only files (pruned)",
                                    finished_stage_files * size.weights_bytes))  # fmt: skip
            continue
        items.append(BudgetItem(f"stage {stage}: last.ckpt (weights + Adam state, to resume)", size.resume_bytes))
        items.append(BudgetItem(f"stage {stage}: {top_k} best checkpoints (weights only)", top_k * size.weights_bytes))
    if stages:
        items.append(BudgetItem("final model (*_final.pt)", size.weights_bytes))
        items.append(BudgetItem("a checkpoint being saved (written beside the old one)", size.resume_bytes))
    items += list(weights)
    if cache_bytes:
        items.append(BudgetItem("decoded-image cache (cache/, rebuildable)", cache_bytes))
    return DiskBudget(tuple(items))


def weight_items(cfg: Config, models_dir: Path) -> list[BudgetItem]:
    """The weights ``cfg``'s run needs (step 2), sized from the registry; those in ``models_dir`` exist."""
    specs = {s.name: s for s in REGISTRY}
    out = []
    for name in weights_for_config(cfg):
        spec = specs[name]
        size = spec.bytes or int(spec.approx_gb * 1e9)
        out.append(BudgetItem(f"weights {name} (models/)", size, (Path(models_dir) / spec.filename).is_file()))
    return out


def project_config(
    cfg: Config,
    stages: Sequence[str],
    models_dir: Path,
    weights: Iterable[BudgetItem] | None = None,
    n_images: int | None = None,
) -> DiskBudget:
    """:func:`project_run` for ``cfg``, with finished stages pruned as step 4 prunes them.

    Args:
        cfg: the resolved config (model, discriminator, weights it needs, ``data.cache``).
        stages: the stages this run trains.
        models_dir: where step 2 puts weights (default :func:`weight_items`: those already there exist).
        weights: the weight items instead (step 4: from the manifest, ``exists=True``; [] when the weights
            live outside the budgeted folder).
        n_images: images of the dataset (step 3); with ``data.cache: file`` their cache is counted.
    """
    cache = image_cache_bytes(n_images, cfg.data.image_size) if n_images and cfg.data.cache == "file" else 0
    return project_run(
        model_size(cfg),
        stages,
        weight_items(cfg, models_dir) if weights is None else weights,
        cache_bytes=cache,
        finished_stage_files=PRUNED_STAGE_FILES,
    )


def model_size(cfg: Config) -> ModelSize:
    """Parameter counts of ``cfg``'s autoencoder and discriminator.

    Exact when torch is installed (the model is built on the meta device: no memory, any family and
    options, frozen encoder levels excluded from the trained count); else the full-size table, which
    counts every parameter as trained.

    Raises:
        AetuneError: no torch and a family or options the table does not cover.
    """
    if importlib.util.find_spec("torch") is not None:
        return _counted(cfg)
    family, disc = cfg.model.family, cfg.sections.get("discriminator")
    full = full_size(family)
    if full is None or cfg.model.args or (disc is not None and disc != type(disc)()):
        raise AetuneError(
            f"cannot size the '{family}' model with these options without torch: install torch first (step 1 says how)"
        )
    return full


def full_size(family: str) -> ModelSize | None:
    """The family's full-size parameter counts at its default options (``full_size`` in its schema), if given."""
    counts = family_schema(family).full_size
    return None if counts is None else ModelSize(autoencoder=counts[0], discriminator=counts[1])


def _counted(cfg: Config) -> ModelSize:
    import torch

    from aetune.models import create_autoencoder
    from aetune.recipes import get_recipe  # the family's recipe knows its discriminator (torch is there)

    try:
        with torch.device("meta"):
            model = create_autoencoder(cfg.model.family, **cfg.model.args)
            model.freeze_encoder_levels(cfg.model.freeze_encoder_levels)
            recipe = get_recipe(cfg.model.family)(cfg, next(iter(cfg.train.stages)))
            d = recipe.build_discriminator()
            disc = [] if d is None else list(d.parameters())
    except ValueError as e:  # a bad option of the config (ModelConfigError is one), not a bug
        raise AetuneError(f"model options of the config: {e}") from e
    return ModelSize(
        autoencoder=sum(p.numel() for p in model.parameters()),
        discriminator=sum(p.numel() for p in disc),
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
    )


def disk_plan(
    cfg: Config, stages: list[str], label: str, models_dir: Path, work_dir: Path, free_gb: float
) -> tuple[dict, list[str]]:
    """Step 1's report of what step 4 will write for ``cfg``'s ``stages`` (named ``label``) in ``work_dir``.

    Weights kept in a ``models_dir`` outside ``work_dir`` do not use its space and are not counted.

    Returns:
        (a JSON-ready record with the report lines under ``report``, the error lines: [] when it fits).
    """
    counted = models_dir.is_relative_to(work_dir)
    budget = project_config(cfg, stages, models_dir, weights=None if counted else [])
    free = int(free_gb * 2**30)
    problem = budget.problem(free, work_dir)
    lines = [f"disk plan  {label}, stages {','.join(stages)}, in {work_dir}:", *budget.lines()]
    if cfg.data.cache == "file":
        lines.append(f"  + {gb(image_cache_bytes(1000, cfg.data.image_size))} per 1,000 images (data.cache: file)")
    lines.append(f"  {gb(free)} free: {'does not fit (see the error)' if problem else 'fits'}")
    record = {**budget.to_dict(), "stages": stages, "free_bytes": free, "weights_counted": counted, "report": lines}
    return record, [problem] if problem else []
