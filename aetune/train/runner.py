"""Step 4's orchestration: one session runs the requested stages in order, each with its own Trainer.

A stage resumes from its ``last.ckpt`` when there is one (weights, both optimizers, counters, RNG and
callback states), else starts from the previous stage's final weights (found through ``run_state.json``),
else from ``--pretrained_path`` or random weights. Under DDP, Lightning re-runs the whole script in each
child process when ``fit`` starts, so everything before it must be repeatable: files are written by rank 0
only, and every rank takes the same decisions from the same files.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.callbacks.early_stopping import EarlyStoppingReason
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from aetune.config import Config, dump_config
from aetune.data.datamodule import ImageDataModule, batches_per_epoch
from aetune.data.kinds import get_data_kind
from aetune.data.prepare import prepare_dataset
from aetune.data.prepared import SPLIT_FILE, PreparedData, data_dir, load_prepared
from aetune.data.sources import prepared_kind
from aetune.errors import AetuneError
from aetune.io import atomic_write_text
from aetune.models.checkpoint import run_name
from aetune.paths import KAGGLE_WORKING
from aetune.recipes import get_recipe
from aetune.setup.env import KAGGLE_QUOTA_GB, disk_facts
from aetune.setup.hub import recorded_weight
from aetune.train.amp import WindowMixedPrecision, scaler_state
from aetune.train.artifacts import (
    final_model_path,
    read_checkpoint,
    split_stage_checkpoint,
    strip_training_state,
    write_final_model,
)
from aetune.train.callbacks import (
    SIGTERM_REASON,
    AtomicCheckpointIO,
    LastCheckpoint,
    SessionLimit,
    StageLength,
    ValidationRecorder,
)
from aetune.train.disk_budget import project_config
from aetune.train.experiments import EXPERIMENTS_FILE, append_experiment, data_fingerprint, experiment_record
from aetune.train.health import HealthGate, loss_weights
from aetune.train.launch import rank_zero_first
from aetune.train.loggers import build_loggers
from aetune.train.module import AutoencoderModule
from aetune.train.plan import (
    LAST_CKPT,
    RunState,
    check_order,
    checkpoints_dir,
    config_changes,
    import_session,
    init_source,
    now,
    relative,
    stage_dir,
)
from aetune.train.precision import DevicePlan, configure_kernels, plan_devices, resolve_accelerator, training_strategy
from aetune.train.rfid import FIDTracker, build_fid_tracker
from aetune.train.rng import batch_seed
from aetune.train.summary import stage_summary

log = logging.getLogger(__name__)
EXPECTED_WARNINGS = (
    r"Found \d+ module\(s\) in eval mode",  # the frozen teacher and LPIPS, on purpose (FrozenTeacher.train)
    r"Checkpoint directory .* exists and is not empty",  # config.yaml is written first; resumed stages
    r"You're resuming from a checkpoint that ended before the epoch ended",  # StageBatchSampler resumes exactly
    r"You have overridden `on_before_batch_transfer`",  # the module's hook (host-side hashes) is the one meant
)

SESSION_KEYS = ("train.max_hours", "data.num_workers", "data.cache")
"""Config keys that may differ between sessions without changing what a stage trains."""
FINETUNE_LR, SCRATCH_LR = 1e-5, 1e-4
"""Seed defaults: fine-tuning pretrained weights vs training from random weights."""


@dataclass
class TrainRequest:
    """What step 4 was asked to do (its flags, resolved)."""

    work_dir: Path
    cfg: Config
    stages: list[str]
    pretrained_path: Path | None = None
    data_root: Path | None = None
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: str | None = None  # "0,1" (GPU indices) or "2" (CPU processes)
    resume_from: Path | None = None
    allow_stage_gap: bool = False
    detect_anomaly: bool = False
    logger: str = "csv"  # csv | tensorboard | wandb | swanlab (CSV is always written)
    logger_offline: bool = True  # trackers write locally; sync later (wandb sync / swanlab sync)
    note: str | None = None  # --note: the session's entry in checkpoints/experiments.yaml
    num_nodes: int = 1  # machines (torchrun / SLURM start the processes on each)
    strategy: str = "ddp"  # ddp | fsdp
    max_hours: float | None = None
    stop_after_batches: int | None = None
    started: float = field(default_factory=time.time)  # this process's start: the deadline counts from it
    progress_bar: bool = True


@dataclass
class TrainResult:
    """How the session ended: ``done`` (all requested stages), ``session_limit`` or ``interrupted`` (a SIGTERM);
    the last two saved ``last.ckpt`` and resume with the same command."""

    status: str
    stages_done: list[str]
    final_model: Path | None = None
    stage: str | None = None  # the stage it stopped in
    reason: str | None = None
    batches: int = 0
    total_batches: int = 0


def is_primary() -> bool:
    """Rank 0 (read from the launcher's environment, so it is right before the Trainer exists)."""
    return rank_zero_only.rank == 0


def ensure_prepared(req: TrainRequest, primary: bool) -> PreparedData:
    """Step 3's split; prepared here with step 3's defaults when only ``--data_root`` was given."""
    if req.data_root is not None and not (data_dir(req.work_dir) / SPLIT_FILE).is_file() and primary:
        log.info("step 3 has not run in %s: preparing %s with its defaults", req.work_dir, req.data_root)
        prepare_dataset(req.data_root, req.work_dir, progress=req.progress_bar)
    return load_prepared(req.work_dir, req.data_root)


def run_training(req: TrainRequest) -> TrainResult:
    """Run the requested stages of ``req`` (see the module docstring).

    Raises:
        AetuneError: bad input, a stage out of order, unusable GPU, or a run that diverged (after saving).
    """
    primary = is_primary()
    with rank_zero_first(resolve_accelerator(req.accelerator)):
        if req.resume_from is not None and primary and import_session(req.resume_from, req.work_dir):
            log.info("imported the previous session from %s", req.resume_from)
        prepared = ensure_prepared(req, primary)
    check_data_kind(req.cfg, req.work_dir)
    plan = plan_devices(
        req.accelerator, req.devices, req.cfg.train.precision, req.work_dir, req.num_nodes, req.strategy
    )
    configure_kernels(plan)
    req.cfg = cfg = apply_global_batch(req.cfg, plan.world_size)
    teacher = cfg.sections.get("teacher")
    random_teacher = teacher is not None and not teacher.pretrained
    state = RunState.load(req.work_dir) or RunState(cfg.model.family, cfg.preset, prepared.name, random_teacher)
    state.check_matches(cfg, prepared.name)
    check_order(req.stages, state, cfg, req.allow_stage_gap)
    check_disk(req, state, prepared, primary)
    decide_origin(state, req)
    for s in state.sessions:
        s["exit"] = "lost (no clean exit recorded)" if s["exit"] == "running" else s["exit"]
    session = {"started": now(), "ended": None, "stages": req.stages, "exit": "running"}
    state.sessions.append(session)
    log.info("devices: %s x%d, precision %s (%s)", plan.accelerator, plan.world_size, plan.precision, plan.reason)
    limit = SessionLimit(req.started, req.max_hours, req.stop_after_batches)
    result = TrainResult("running", [])
    try:
        for stage in req.stages:
            if stage in state.stages_done:
                log.info("stage %s is done (run_state.json): skipping it", stage)
                continue
            result = run_stage(stage, req, plan, state, prepared, limit)
            if result.status != "done":
                return result
        result.final_model = finish(req, state)
        result.status = "done"
        return result
    except Exception:
        session["exit"] = "error"
        raise
    except BaseException:  # KeyboardInterrupt, or Lightning's SystemExit after one
        session["exit"] = "interrupted"
        raise
    finally:
        session["ended"] = now()
        session["exit"] = result.status if session["exit"] == "running" else session["exit"]
        result.stages_done = list(state.stages_done)
        if primary:
            state.save(req.work_dir)
            if limit.batches > 0 or result.status == "done":  # a session that failed before training is no experiment
                record_experiment(req, state, prepared, limit.batches * cfg.train.batch_size * plan.world_size, session)


def decide_origin(state: RunState, req: TrainRequest) -> None:
    """Record where the run starts from (``pretrained`` or ``scratch``: each stage's default learning rate follows).

    The origin is decided by the session that trains the run's first batch: an attempt that failed or was
    stopped before a checkpoint (a wrong ``--pretrained_path``, a Ctrl-C during start-up) fixes nothing.

    Raises:
        AetuneError: ``--pretrained_path`` given while a stage that started from random weights is half trained.
    """
    wanted = "pretrained" if req.pretrained_path else "scratch"
    trained = [s for s, r in state.stages.items() if r.batches > 0]
    if not trained and not state.stages_done:
        state.origin = wanted
        return
    mid = [s for s in trained if s not in state.stages_done]
    if wanted == "pretrained" and state.origin == "scratch" and mid:
        raise AetuneError(
            f"stage {mid[0]} started from random weights (origin 'scratch', its learning rate set for that) and has "
            f"trained {state.stages[mid[0]].batches} batches; --pretrained_path {req.pretrained_path} (origin "
            "'pretrained') cannot change that mid-stage: leave the flag out to resume, or use a new --output_dir "
            "to start from the pretrained weights"
        )


def check_data_kind(cfg: Config, work_dir: Path) -> None:
    """The family (and task) must train on the kind of data step 3 prepared here.

    Raises:
        AetuneError: e.g. ``--family taehv`` (videos) on a work directory of images.
    """
    wanted = get_recipe(cfg.model.family, cfg.model.task).data_kind
    have = prepared_kind(work_dir)
    if have != wanted:
        trains = run_name(cfg.model.family, cfg.model.task, sep=" ")
        raise AetuneError(
            f"step 3 prepared {have} data in {data_dir(work_dir)}, but {trains} trains on {wanted} data: run step 3 "
            f"on {wanted} data into another --output_dir, or pick a family for {have} data (--family)"
        )


def check_disk(req: TrainRequest, state: RunState, prepared: PreparedData, primary: bool) -> None:
    """Print what this session will write against the space left (Kaggle: its 20 GB quota); fail early.

    Every rank computes the same answer from the same files, so all stop together.

    Raises:
        DiskBudgetError: the stages still to run do not fit.
    """
    todo = [s for s in req.stages if s not in state.stages_done]
    if not todo:
        return
    # Weights are on disk already (step 2): listed by the step-1 plan, not counted as still to be written.
    budget = project_config(req.cfg, todo, req.work_dir, weights=[], n_images=len(prepared.train))
    free = int(disk_facts(req.work_dir, KAGGLE_WORKING, KAGGLE_QUOTA_GB)["free_gb"] * 2**30)
    if primary:
        log.info("disk plan for stages %s in %s:", ",".join(todo), req.work_dir)
        for line in budget.lines():
            log.info("%s", line)
    budget.check(free, req.work_dir)


def record_experiment(req: TrainRequest, state: RunState, prepared: PreparedData, images: int, session: dict) -> None:
    """Append this session to ``checkpoints/experiments.yaml`` (config, data, start, stages, best, speed)."""
    stages = [s for s in req.stages if s in state.stages]
    best = {s: {"psnr": state.stages[s].best_psnr} for s in stages if state.stages[s].best_psnr is not None}
    first = state.stages[stages[0]].init if stages else None
    seconds = time.time() - req.started
    record = experiment_record(
        config=req.cfg.to_dict(),
        fingerprint=data_fingerprint([(s.relpath, s.user) for s in prepared.train]),
        start_weights=first,
        stages=stages,
        best=best,
        wall_seconds=seconds,
        images=images,
        note=req.note,
        started=req.started,
    )
    record["exit"] = session["exit"]
    append_experiment(checkpoints_dir(req.work_dir) / EXPERIMENTS_FILE, record)


def apply_global_batch(cfg: Config, world_size: int) -> Config:
    """``train.global_batch_size`` -> per-device batch and accumulation for ``world_size`` processes.

    The per-device batch is the largest divisor of ``global / world_size`` not above ``train.batch_size``
    (the most a device holds); accumulation makes up the rest. The choice is logged.

    Raises:
        AetuneError: a global batch that the devices cannot share evenly.
    """
    wanted = cfg.train.global_batch_size
    if wanted is None:
        return cfg
    if wanted % world_size:
        raise AetuneError(
            f"--global_batch_size {wanted} does not divide over {world_size} device(s): use a multiple of {world_size}"
        )
    share = wanted // world_size
    per_device = max(b for b in range(1, min(share, cfg.train.batch_size) + 1) if share % b == 0)
    accumulation = share // per_device
    log.info(
        "global batch %d = %d per device x %d device(s) x %d accumulation", wanted, per_device, world_size, accumulation
    )
    train = dataclasses.replace(cfg.train, batch_size=per_device, gradient_accumulation=accumulation)
    return dataclasses.replace(cfg, train=train)


def finish(req: TrainRequest, state: RunState) -> Path:
    """Write ``<family>_<dataset>_final.pt`` from the last requested stage's final checkpoint."""
    record = state.stages[req.stages[-1]]
    out = final_model_path(req.work_dir, state.family, state.dataset, req.cfg.model.task)
    if is_primary():
        write_final_model(checkpoints_dir(req.work_dir) / record.last, out)
        log.info("final model (stage %s): %s", req.stages[-1], out)
    state.final_model = relative(out, req.work_dir)
    state.current_stage = None
    return out


def init_stage_weights(
    module: AutoencoderModule, stage: str, state: RunState, req: TrainRequest
) -> tuple[str, dict[str, Any] | None]:
    """Load what a fresh ``stage`` starts from; return it in words (recorded in run_state.json) and the fp16 loss
    scaler state the previous stage ended with (None when there is none)."""
    words, scaler = load_stage_start(module, stage, state, req)
    module.reset_ema()
    return words, scaler


def load_stage_start(
    module: AutoencoderModule, stage: str, state: RunState, req: TrainRequest
) -> tuple[str, dict[str, Any] | None]:
    """Load the previous stage's final weights, else the origin's (see ``init_stage_weights``)."""
    source = init_source(stage, state, req.cfg, req.work_dir)
    if source is not None:
        ckpt = read_checkpoint(source)
        ae, d, meta = split_stage_checkpoint(ckpt, str(source))
        if meta["model_config"] != module.autoencoder.config:
            raise AetuneError(
                f"{source} was trained with model {meta['model_config']}, not {module.autoencoder.config}"
            )
        module.autoencoder.load_state_dict(ae)
        if module.discriminator is not None and d:
            module.discriminator.load_state_dict(d)
        if req.cfg.stage(stage).carry_optimizer:
            module.carried_optimizers = carried_optimizer_states(ckpt, module.recipe.phases, source)
        if req.pretrained_path:
            log.info("--pretrained_path is not used: stage %s starts from stage %s's weights", stage, meta["stage"])
        return f"stage {meta['stage']} final weights ({relative(source, req.work_dir)})", scaler_state(ckpt)
    if stage != next(iter(req.cfg.train.stages)):
        log.warning("stage %s: no earlier stage has weights here (--allow_stage_gap): starting from the origin", stage)
    if req.cfg.stage(stage).carry_optimizer:
        log.warning("stage %s: carry_optimizer, but no earlier stage's checkpoint: a fresh optimizer", stage)
    if req.pretrained_path is None:
        log.warning("stage %s starts from RANDOM weights: no --pretrained_path was given", stage)
        return "random initialisation (no --pretrained_path)", None
    return module.recipe.load_pretrained(str(req.pretrained_path)), None


def carried_optimizer_states(ckpt: dict[str, Any], phases: tuple[str, ...], source: Path) -> dict[str, dict[str, Any]]:
    """The previous stage's optimizer states by phase (``train.stages.<stage>.carry_optimizer``).

    Raises:
        AetuneError: the checkpoint holds none (dropped once a later stage finished) or another phase count.
    """
    states = ckpt.get("optimizer_states") or []
    if len(states) != len(phases):
        raise AetuneError(
            f"carry_optimizer: {source} holds {len(states)} optimizer states, this stage has {len(phases)} phases "
            f"({', '.join(phases)}); set the stage's carry_optimizer false to start a fresh optimizer"
        )
    return dict(zip(phases, states, strict=True))


def build_trainer(
    req: TrainRequest,
    plan: DevicePlan,
    folder: Path,
    callbacks: list[pl.Callback],
    per_epoch: int,
    scaler: dict[str, Any] | None = None,
) -> pl.Trainer:
    """The Lightning Trainer of one stage (length, validation and checkpoints are driven by callbacks).

    ``scaler``: the fp16 loss scaler state the previous stage ended with. A fresh scaler starts at 65536 and
    overflows (skips) about ten windows before it finds a usable scale; the next stage starts where it was.
    """
    name = f"{req.cfg.model.family}-{folder.name}"
    loggers = build_loggers(req.logger, folder, name, req.logger_offline)
    plugins: list[Any] = [AtomicCheckpointIO()]
    precision: str | None = plan.precision
    if plan.precision == "16-mixed":
        device = "cuda" if plan.accelerator == "gpu" else "cpu"  # cpu: the tests' fp16 emulation
        plugin = WindowMixedPrecision("16-mixed", device)  # one scale update per accumulation window
        if scaler is not None:
            plugin.load_state_dict(scaler)
        plugins.append(plugin)
        precision = None
    return pl.Trainer(
        accelerator=plan.accelerator,
        devices=plan.devices,
        num_nodes=plan.num_nodes,
        strategy=training_strategy(plan),
        # D runs separately on real and fake batches; SyncBatchNorm gives each call the global batch
        # statistics on GPUs. It has no CPU kernels: CPU DDP keeps per-rank BatchNorm statistics.
        sync_batchnorm=plan.world_size > 1 and plan.accelerator == "gpu",
        precision=precision,
        max_epochs=-1,  # StageLength stops by batch count, across sessions
        val_check_interval=req.cfg.train.val_every_n_steps,
        check_val_every_n_epoch=None,  # validate every N batches of the stage, not per epoch
        num_sanity_val_steps=0,
        logger=loggers,
        callbacks=[*callbacks, TQDMProgressBar(refresh_rate=10)] if req.progress_bar else callbacks,
        plugins=plugins,
        default_root_dir=folder,
        log_every_n_steps=max(1, min(10, per_epoch)),
        detect_anomaly=req.detect_anomaly,
        use_distributed_sampler=False,  # StageBatchSampler shards by rank itself
        enable_progress_bar=req.progress_bar,
    )


def build_rfid(cfg: Config, work_dir: Path, device: str = "cpu") -> FIDTracker | None:
    """The rFID tracker of a stage when ``train.rfid_images`` > 0 (None, with one logged note, without weights)."""
    if cfg.train.rfid_images == 0:
        return None
    weights = recorded_weight(work_dir, "fid_inception")
    tracker, _ = build_fid_tracker(weights, random_weights=False, device=device)
    return tracker


def monitor_mode(monitor: str) -> str:
    """``min`` for distances and losses (LPIPS, rFID, ``*loss*``), ``max`` for PSNR, SSIM, scores."""
    name = monitor.rsplit("/", 1)[-1].lower()  # the restoration task logs the fork's keys (val/LPIPS)
    return "min" if name in ("lpips", "rfid") or "loss" in name else "max"


def stage_patience(cfg: Config, stage: str, gan_in_stage: bool) -> int:
    """Early-stopping patience of ``stage``: its own, else ``train.patience`` without a GAN and off with one.

    A GAN trades PSNR for realism by design: a PSNR monitor would stop such a stage at its first validation.
    """
    own = cfg.stage(stage).patience
    if own is not None:
        return own
    return 0 if gan_in_stage else cfg.train.patience


def stage_learning_rate(cfg: Config, stage: str, origin: str) -> float:
    """The stage's own rate, else ``train.learning_rate``, else the seed's rule by origin."""
    for lr in (cfg.stage(stage).learning_rate, cfg.train.learning_rate):
        if lr is not None:
            return lr
    return FINETUNE_LR if origin == "pretrained" else SCRATCH_LR


def trainable_summary(module: AutoencoderModule) -> str:
    """``trainable 12,345 of 67,890 autoencoder parameters; discriminator 2,765,633``."""
    ae = module.autoencoder
    trained = sum(p.numel() for p in module.recipe.trainable("g"))
    total = sum(p.numel() for p in ae.parameters())
    text = f"trainable {trained:,} of {total:,} autoencoder parameters"
    if module.discriminator is not None:
        text += f"; discriminator {sum(p.numel() for p in module.discriminator.parameters()):,}"
    return text


def run_stage(
    stage: str, req: TrainRequest, plan: DevicePlan, state: RunState, prepared: PreparedData, limit: SessionLimit
) -> TrainResult:
    """Train (or resume) one stage until it ends, the session limit stops it, or it diverges."""
    cfg, primary, folder = req.cfg, is_primary(), stage_dir(req.work_dir, stage)
    last, record = folder / LAST_CKPT, state.record(stage)
    resumed = read_checkpoint(last)["aetune"] if last.is_file() else None
    scaler: dict[str, Any] | None = None  # a resumed stage's own scaler state comes back with its checkpoint
    if resumed is not None and resumed["stage_finished"]:
        return mark_done(stage, state, resumed["batches_seen"], resumed["early_stopped"], req)
    pl.seed_everything(batch_seed(cfg.train.seed, "stage", stage), workers=True, verbose=False)
    spec = cfg.train.stages[stage]
    # An epoch is the items the training loader serves (a video's clips, not the video), sharded as the data
    # module shards them; a recipe binds its kind's options (the clips) when it is built.
    kind = get_data_kind(get_recipe(cfg.model.family, cfg.model.task)(cfg, stage).data_kind)
    per_epoch = batches_per_epoch(kind.count(prepared, "train", req.work_dir), cfg.train.batch_size, plan.world_size)
    total = spec.epochs * per_epoch
    total = min(total, spec.max_steps) if spec.max_steps > 0 else total
    if resumed is not None and resumed["total_batches"] != total:
        log.warning(
            "stage %s was planned as %d batches and is now %d (devices or batch size changed): keeping %d",
            stage,
            resumed["total_batches"],
            total,
            resumed["total_batches"],
        )
        total = resumed["total_batches"]
    lr = stage_learning_rate(cfg, stage, state.origin)
    meta = {"dataset": prepared.name, "labels": prepared.labels, "origin": state.origin, "world_size": plan.world_size}
    unit = cfg.train.batch_size * plan.world_size  # images per batch of the plan; a resumed stage keeps its own
    if resumed is not None:
        unit = resumed.get("batch_images", cfg.train.batch_size * resumed["world_size"])
    module = AutoencoderModule(cfg, stage, total, lr, meta, unit)
    if resumed is not None:
        if resumed["model_config"] != module.autoencoder.config:
            raise AetuneError(
                f"{last} holds model {resumed['model_config']}; the config now asks for {module.autoencoder.config}"
            )
        log.info("stage %s: resuming from %s at batch %d of %d", stage, last, resumed["batches_seen"], total)
        changes = [c for c in config_changes(resumed["config"], cfg.to_dict()) if not c.startswith(SESSION_KEYS)]
        if resumed["world_size"] != plan.world_size:
            changes.append(f"devices: {resumed['world_size']} -> {plan.world_size}")
        if changes:
            log.warning(
                "stage %s resumes with changed settings (the rest of it follows them): %s", stage, "; ".join(changes)
            )
    else:
        record.init, scaler = init_stage_weights(module, stage, state, req)
        log.info("stage %s: %d batches (%d epochs), lr %g, from %s", stage, total, spec.epochs, lr, record.init)
    log.info("stage %s: %s, %d px", stage, trainable_summary(module), cfg.stage_image_size(stage))
    record.status, record.planned_batches, state.current_stage = "running", total, stage
    if primary:
        atomic_write_text(folder / "config.yaml", dump_config(cfg))
        state.save(req.work_dir)
    monitor = spec.monitor or cfg.train.monitor
    metric = monitor.rsplit("/", 1)[-1]
    best = ModelCheckpoint(
        dirpath=folder,
        filename=f"best-b{{batches:07.0f}}-{metric}{{{monitor}:.4f}}",
        monitor=monitor,
        mode=monitor_mode(monitor),
        save_top_k=2,
        save_weights_only=True,  # a third of the size: best checkpoints are for using, last.ckpt for resuming
        auto_insert_metric_name=False,
    )
    gan = "d" in module.recipe.phases and module.recipe.phase_active("d", max(0, total - 1))
    patience = stage_patience(cfg, stage, gan)
    # Patience 0 keeps the callback for its non-finite check only (a diverged validation still stops the run).
    early = EarlyStopping(monitor=monitor, mode=monitor_mode(monitor), patience=patience or 10**9, check_finite=True)
    if patience == 0:
        log.info("stage %s: no early stopping (%s)", stage, "GAN stage" if gan else "patience 0")

    def on_saved(m: AutoencoderModule) -> None:
        record.batches, record.last = m.batches_seen, relative(last, req.work_dir)
        record.best = relative(Path(best.best_model_path), req.work_dir) if best.best_model_path else record.best
        record.best_psnr = float(best.best_model_score) if best.best_model_score is not None else record.best_psnr
        state.last_good_checkpoint = record.last
        state.save(req.work_dir)

    notes = {"stage": stage, **module.recipe.notes()}
    module.fid = build_rfid(cfg, req.work_dir, "cuda" if plan.accelerator == "gpu" else "cpu")
    module.work_dir = req.work_dir
    gate = HealthGate(
        cfg.train.health_batch, cfg.train.health_min_psnr, lr=lr, weights=loss_weights(module.recipe.loss)
    )
    callbacks = [
        StageLength(),
        limit,
        early,
        best,
        LastCheckpoint(last, cfg.train.checkpoint_every_n_batches, on_saved),
        ValidationRecorder(folder, notes, gate),
    ]
    data = ImageDataModule(
        prepared,
        req.work_dir,
        cfg.stage_image_size(stage),
        cfg.train.batch_size,
        cfg.data.num_workers,
        cfg.data.cache,
        batch_seed(cfg.train.seed, "data", stage),
        lambda: module.images_seen,
        req.progress_bar,
        module.recipe.data_kind,
    )
    trainer = build_trainer(req, plan, folder, callbacks, per_epoch, scaler)
    session_batches, t0 = limit.batches, time.time()
    with warnings.catch_warnings():
        for pattern in EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern, module="pytorch_lightning")
        try:
            trainer.fit(module, datamodule=data, ckpt_path=last if resumed is not None else None)
        except SIGTERMException:
            # Lightning ends the fit this way after a SIGTERM; LastCheckpoint.on_exception has saved.
            limit.reason = SIGTERM_REASON
    if primary:
        print(stage_summary(stage, module, best, time.time() - t0, limit.batches - session_batches, plan, folder, cfg))
    if limit.interrupted:
        return TrainResult("interrupted", [], None, stage, limit.reason, module.batches_seen, total)
    if module.stage_finished:
        return mark_done(stage, state, module.batches_seen, module.batches_seen < total, req)
    if limit.reason is not None:
        return TrainResult("session_limit", [], None, stage, limit.reason, module.batches_seen, total)
    if (
        early.stopping_reason == EarlyStoppingReason.NON_FINITE_METRIC
        or module.nonfinite_streak >= cfg.train.max_nonfinite
    ):
        raise AetuneError(
            f"stage {stage} diverged at batch {module.batches_seen} (non-finite losses or validation metrics; "
            f"{module.nonfinite_total} skipped steps), saved in {last} with the best checkpoints beside it: "
            "re-run with --precision 32 or a lower --learning_rate"
        )
    raise RuntimeError(f"stage {stage} stopped at batch {module.batches_seen} of {total} for no known reason")


def prune_earlier_stages(stage: str, state: RunState, req: TrainRequest) -> None:
    """Drop the optimizer states of the done stages before ``stage``: later stages and step 5 need only their
    weights, and at full size each state is ~0.6 GB of Kaggle's 20 GB. The newest done stage keeps its own,
    so it can still be extended."""
    plan = list(req.cfg.train.stages)
    for earlier in plan[: plan.index(stage)]:
        if earlier in state.stages_done:
            path = stage_dir(req.work_dir, earlier) / LAST_CKPT
            freed = strip_training_state(path)
            if freed:
                log.info("stage %s: dropped its optimizer state from %s (%.2f GB freed)", earlier, path, freed / 2**30)


def mark_done(stage: str, state: RunState, batches: int, early: bool, req: TrainRequest) -> TrainResult:
    """Record ``stage`` as finished in the run state."""
    record = state.record(stage)
    record.status, record.batches, record.early_stopped, record.finished = "done", batches, early, now()
    last = stage_dir(req.work_dir, stage) / LAST_CKPT
    record.last = relative(last, req.work_dir)
    if stage not in state.stages_done:
        state.stages_done.append(stage)
    if is_primary():
        prune_earlier_stages(stage, state, req)
        state.save(req.work_dir)
    return TrainResult(
        "done", list(state.stages_done), stage=stage, batches=batches, total_batches=record.planned_batches
    )
