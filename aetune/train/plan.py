"""The stage plan and ``checkpoints/run_state.json``: which stages are done, where each stage starts from.

``run_state.json`` is the only place later stages and later sessions learn what earlier ones did. Paths in
it are relative to ``checkpoints/``, so a work directory copied elsewhere (``--resume_from``) still works.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aetune.config import Config
from aetune.errors import AetuneError
from aetune.io import atomic_write_json, read_json

CHECKPOINTS_SUBDIR = "checkpoints"
RUN_STATE_FILE = "run_state.json"
LAST_CKPT = "last.ckpt"


def checkpoints_dir(work_dir: str | Path) -> Path:
    """``<work>/checkpoints``."""
    return Path(work_dir) / CHECKPOINTS_SUBDIR


def stage_dir(work_dir: str | Path, stage: str) -> Path:
    """``<work>/checkpoints/stage<N>``."""
    return checkpoints_dir(work_dir) / f"stage{stage}"


def now() -> str:
    """Local time as ``YYYY-MM-DD HH:MM:SS`` (what run_state.json records)."""
    return time.strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class StageRecord:
    """What one stage did (``run_state.json`` -> ``stages[<name>]``)."""

    status: str = "running"  # "running" | "done"
    init: str = ""  # what its weights started from, in words
    planned_batches: int = 0  # batches its schedule asks for (epochs x batches per epoch, or max_steps)
    batches: int = 0  # batches trained so far
    early_stopped: bool = False
    last: str | None = None  # last.ckpt, relative to checkpoints/
    best: str | None = None  # the best checkpoint by validation PSNR, relative to checkpoints/
    best_psnr: float | None = None
    finished: str | None = None  # when it was marked done


@dataclass
class RunState:
    """The contents of ``checkpoints/run_state.json``."""

    family: str
    preset: str | None
    dataset: str
    random_teacher: bool
    origin: str = "scratch"  # "pretrained" | "scratch": picks the default learning rate of every stage
    stages_done: list[str] = field(default_factory=list)
    current_stage: str | None = None
    last_good_checkpoint: str | None = None  # relative to checkpoints/
    final_model: str | None = None  # relative to checkpoints/
    sessions: list[dict[str, Any]] = field(default_factory=list)  # {started, ended, stages, exit}
    stages: dict[str, StageRecord] = field(default_factory=dict)

    @classmethod
    def load(cls, work_dir: str | Path) -> RunState | None:
        """Read ``<work_dir>/checkpoints/run_state.json``; None when this work directory has no run yet."""
        path = checkpoints_dir(work_dir) / RUN_STATE_FILE
        return cls.read(path) if path.is_file() else None

    @classmethod
    def read(cls, path: Path) -> RunState:
        """Read a ``run_state.json`` file."""
        data = read_json(path)
        try:
            stages = {k: StageRecord(**v) for k, v in data.pop("stages", {}).items()}
            return cls(**data, stages=stages)
        except TypeError as e:
            raise AetuneError(f"{path} is not a run state aetune wrote ({e}); move it away to start afresh") from e

    def save(self, work_dir: str | Path) -> Path:
        """Write ``run_state.json`` atomically (rank 0 only: callers guard)."""
        return atomic_write_json(checkpoints_dir(work_dir) / RUN_STATE_FILE, asdict(self))

    def check_matches(self, cfg: Config, dataset: str) -> None:
        """Refuse to mix runs: another family or dataset in this work directory is an error."""
        if self.family != cfg.model.family or self.dataset != dataset:
            raise AetuneError(
                f"this work directory holds a {self.family} run on '{self.dataset}' (checkpoints/{RUN_STATE_FILE}); "
                f"asked for {cfg.model.family} on '{dataset}': use another --output_dir"
            )

    def record(self, stage: str) -> StageRecord:
        """The record of ``stage``, created on first use."""
        return self.stages.setdefault(stage, StageRecord())


def parse_stages(text: str | None, cfg: Config) -> list[str]:
    """``--stages 1,2,3`` -> the requested stages in plan order; None = the whole plan.

    Raises:
        AetuneError: a stage that is not in the preset's plan.
    """
    plan = list(cfg.train.stages)
    if not text:
        return plan
    asked = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in asked if s not in plan]
    if unknown or not asked:
        raise AetuneError(f"--stages {text}: stage(s) {', '.join(unknown) or '?'} not in the plan ({', '.join(plan)})")
    return [s for s in plan if s in asked]


def previous_stage(stage: str, cfg: Config) -> str | None:
    """The stage before ``stage`` in the plan, None for the first."""
    plan = list(cfg.train.stages)
    i = plan.index(stage)
    return plan[i - 1] if i > 0 else None


def check_order(requested: list[str], state: RunState | None, cfg: Config, allow_gap: bool) -> None:
    """Every requested stage must follow a finished (or also requested) stage of the plan.

    Raises:
        AetuneError: e.g. ``--stages 3`` while stage 2 never finished, unless ``allow_gap``.
    """
    done = set(state.stages_done if state else [])
    for stage in requested:
        prev = previous_stage(stage, cfg)
        if prev is None or prev in done or prev in requested or stage in done or allow_gap:
            continue
        chain = [prev]  # every unfinished stage before it, so the suggested command is the one to run
        while (before := previous_stage(chain[0], cfg)) is not None and before not in done:
            chain.insert(0, before)
        suggested = ",".join(chain + [s for s in requested if s not in chain])
        raise AetuneError(
            f"stage {stage} starts from stage {prev}'s final weights, but stage {prev} has not finished "
            f"(done: {', '.join(sorted(done)) or 'none'}; checkpoints/{RUN_STATE_FILE}): run --stages {suggested}, "
            f"or pass --allow_stage_gap to start stage {stage} from the latest weights there are"
        )


def init_source(stage: str, state: RunState, cfg: Config, work_dir: Path) -> Path | None:
    """The checkpoint a fresh ``stage`` starts from: the previous stage's last checkpoint, or None.

    None means the run's origin (``--pretrained_path`` or random weights). With a stage gap allowed, the
    nearest earlier stage that has a checkpoint is used.
    """
    prev = previous_stage(stage, cfg)
    while prev is not None:
        record = state.stages.get(prev)
        if record is not None and record.last and (checkpoints_dir(work_dir) / record.last).is_file():
            return checkpoints_dir(work_dir) / record.last
        prev = previous_stage(prev, cfg)
    return None


def relative(path: Path, work_dir: Path) -> str:
    """``path`` relative to ``checkpoints/`` (as run_state.json stores it)."""
    return str(Path(path).resolve().relative_to(checkpoints_dir(work_dir).resolve()))


def import_session(source: str | Path, work_dir: str | Path) -> bool:
    """``--resume_from``: copy a previous session's ``checkpoints/`` (and ``data/``) into ``work_dir``.

    ``source`` is the previous work directory (e.g. a notebook output attached under ``/kaggle/input``) or
    its ``checkpoints/`` folder; it is only read. Copies go to a temporary folder renamed into place, so
    an interrupted copy leaves nothing half-imported. Importing again into the run it started is a no-op.

    Returns:
        True if files were copied, False if the work directory already continues that run.

    Raises:
        AetuneError: no run state in ``source``, or the work directory holds another run.
    """
    src = Path(source).expanduser().resolve()
    src_ckpt = src if (src / RUN_STATE_FILE).is_file() else checkpoints_dir(src)
    if not (src_ckpt / RUN_STATE_FILE).is_file():
        raise AetuneError(
            f"--resume_from {source}: no {RUN_STATE_FILE} in it or in its {CHECKPOINTS_SUBDIR}/; give the folder "
            "that holds the previous session's checkpoints/ (its whole output)"
        )
    dst = checkpoints_dir(work_dir)
    theirs = RunState.read(src_ckpt / RUN_STATE_FILE)
    if dst.exists():
        mine = RunState.load(work_dir)
        started = [s["started"] for s in theirs.sessions]
        if mine is not None and [s["started"] for s in mine.sessions][: len(started)] == started:
            return False
        raise AetuneError(
            f"--resume_from {source}: {dst} already holds {'another run' if mine else 'files'}; "
            "use an empty --output_dir, or drop --resume_from to continue the run there"
        )
    _copy_tree(src_ckpt, dst)
    data_src = src_ckpt.parent / "data"
    if data_src.is_dir() and not (Path(work_dir) / "data").exists():
        _copy_tree(data_src, Path(work_dir) / "data")
    return True


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy ``src`` to a temporary sibling of ``dst``, then rename it to ``dst``."""
    tmp = dst.with_name(f".{dst.name}.importing")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    os.replace(tmp, dst)


def config_changes(old: dict[str, Any], new: dict[str, Any], where: str = "") -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs between two ``Config.to_dict()`` trees."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b, name = old.get(key), new.get(key), f"{where}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{name}.")
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out
