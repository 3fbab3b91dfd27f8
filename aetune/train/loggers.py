"""Experiment trackers of a stage (``--logger csv|tensorboard|wandb|swanlab``), the CSV log always first.

``metrics.csv`` (``StageCSVLogger``) is written whatever tracker is chosen: step 5, the resume logic and
the tests read it. The trackers write beside it in the stage folder:

- ``tensorboard``: Lightning's ``TensorBoardLogger`` -> ``<stage>/tensorboard/events.out.tfevents.*``
  (local files; ``tensorboard --logdir checkpoints``).
- ``wandb``: Lightning's ``WandbLogger`` -> ``<stage>/wandb/offline-run-*`` offline (``wandb sync`` later),
  or a cloud run (``wandb login`` first).
- ``swanlab``: ``SwanLabLogger`` below -> ``<stage>/swanlog/run-*`` offline (``swanlab sync`` later), or a
  cloud run (``swanlab login`` first). SwanLab's own ``swanlab.integration.pytorch_lightning.SwanLabLogger``
  (0.10) subclasses the ``lightning`` package's Logger and guards rank zero with that package's rank, not
  the ``pytorch_lightning`` Trainer's this project runs, so a small adapter on SwanLab's public
  ``swanlab.init``/``log``/``finish`` takes its place.
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers.logger import Logger, rank_zero_experiment
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from aetune.errors import AetuneError
from aetune.optional import require
from aetune.train.csvlog import StageCSVLogger

LOGGER_KINDS = ("csv", "tensorboard", "wandb", "swanlab")
PROJECT = "aetune"
"""The wandb / SwanLab project runs are filed under."""
TENSORBOARD_SUBDIR, SWANLAB_SUBDIR = "tensorboard", "swanlog"


class SwanLabLogger(Logger):
    """Lightning logger writing to one SwanLab run (rank 0 only; the run starts at the first log call).

    Args:
        folder: the stage folder; the run is written under ``<folder>/swanlog/run-*``.
        name: the run's name.
        project: the SwanLab project.
        offline: save locally for a later ``swanlab sync`` (no network used) instead of syncing to the cloud.
    """

    def __init__(self, folder: Path, name: str, project: str, offline: bool) -> None:
        super().__init__()
        self._dir = Path(folder) / SWANLAB_SUBDIR
        self._init = {"project": project, "name": name, "log_dir": str(self._dir)}
        self._init["mode"] = "offline" if offline else "online"
        self._run: Any = None

    @property
    def name(self) -> str:
        return "swanlab"

    @property
    def version(self) -> str | None:
        return None if self._run is None else self._run.id

    @property
    def save_dir(self) -> str:
        return str(self._dir)

    @property
    def log_dir(self) -> str:
        return str(self._dir)

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The ``swanlab`` run, started on first use."""
        if self._run is None:
            self._run = require("swanlab", "--logger swanlab").init(**self._init)
        return self._run

    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        self.experiment.config.update(vars(params) if isinstance(params, Namespace) else dict(params))

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.experiment.log(dict(metrics), step=step)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """End the run, so the next stage (a new Trainer in the same process) can start its own."""
        if self._run is not None:
            self._run.finish(state="success" if status == "success" else "crashed", error=None)
            self._run = None


def build_loggers(kind: str, folder: Path, name: str, offline: bool, project: str = PROJECT) -> list[Logger]:
    """The loggers of one stage's Trainer: ``[StageCSVLogger(folder)]`` plus the chosen tracker.

    Args:
        kind: ``--logger``: ``csv`` (only the CSV), ``tensorboard``, ``wandb`` or ``swanlab``.
        folder: the stage folder (``checkpoints/stage<N>``).
        name: the run's name in the tracker (e.g. ``vavae_stage1``).
        offline: wandb / SwanLab save their run locally for a later ``sync`` and use no network; CSV and
            TensorBoard are always local.
        project: the wandb / SwanLab project.

    Raises:
        AetuneError: an unknown ``kind``, or the tracker's package is not installed (naming it).
    """
    if kind not in LOGGER_KINDS:
        raise AetuneError(f"unknown --logger '{kind}': choose one of {', '.join(LOGGER_KINDS)}")
    folder = Path(folder)
    loggers: list[Logger] = [StageCSVLogger(folder)]
    if kind == "tensorboard":
        require("tensorboard", "--logger tensorboard")  # else Lightning's logger fails with a longer message
        from pytorch_lightning.loggers import TensorBoardLogger

        # version "": one folder across sessions (a resumed stage adds an events file TensorBoard merges)
        loggers.append(
            TensorBoardLogger(save_dir=str(folder), name=TENSORBOARD_SUBDIR, version="", default_hp_metric=False)
        )
    elif kind == "wandb":
        require("wandb", "--logger wandb")
        from pytorch_lightning.loggers import WandbLogger

        loggers.append(WandbLogger(name=name, save_dir=str(folder), project=project, offline=offline))
    elif kind == "swanlab":
        require("swanlab", "--logger swanlab")
        loggers.append(SwanLabLogger(folder, name, project, offline))
    return loggers
