"""The generic LightningModule of step 4: one stage of any family's recipe under manual optimisation.

Per batch: the generator phase (``g``: the autoencoder's trainable part), then the discriminator phase (``d``)
when the recipe has one and it is active for the batch (in a batch that closes the window, after ``g``'s
optimizer step when the recipe asks for it: ``Recipe.fake_after_g_step``). The recipe (``aetune.recipes``)
builds the networks and computes each phase's objective; this module owns what every family shares:
optimisers and learning-rate schedules per phase, accumulation over ``gradient_accumulation`` batches,
clipping, one fp16 loss-scale update per window (``aetune.train.amp``), the non-finite guard, EMA of the
generator, per-term gradient norms, checkpoint metadata and validation. Frozen networks are left out of checkpoints.

Counters. The stage counts the images it trained (all ranks together); ``batches_seen`` is that count in
batches of the stage's plan (``batch_images`` images each: the per-device batch times the device count the
stage started with). Every schedule (``disc_start``, warm-up and cosine, EMA start, checkpoints) and the data
order follow it, never ``global_step`` (which Lightning advances once per optimizer step), so a stage resumed
on another number of devices trains the planned images and keeps its schedules where they were.

Host syncs and communication. Within an accumulation window nothing waits for the device: each phase's
"losses were finite" flag stays a device tensor, and the backward calls run without DDP's all-reduce. When
the window closes, each network's gradients are averaged over the ranks in one all-reduce (the flag rides
along), and one host read of the flags decides which optimizers step.
"""

from __future__ import annotations

import contextlib
import logging
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks.early_stopping import EarlyStoppingReason
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from aetune.config import Config
from aetune.errors import AetuneError
from aetune.models import Autoencoder
from aetune.recipes import StepContext, get_recipe
from aetune.train.amp import update_scaler, window_scaler
from aetune.train.rfid import FIDTracker
from aetune.train.rng import batch_seed, rng_state, set_rng_state
from aetune.train.schedule import ScheduleClock, lr_at

log = logging.getLogger(__name__)

PREVIEW_IMAGES = 8
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def carry_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any], phase: str) -> None:
    """Load the per-parameter state of ``saved`` (an optimizer ``state_dict``: Adam's moments and step counts)
    into ``optimizer``, which keeps its own hyper-parameters (the new stage's learning rate, betas, decay).

    Raises:
        AetuneError: ``saved`` belongs to other parameters (another count, or another shape).
    """
    groups = optimizer.state_dict()["param_groups"]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved_ids = [i for group in saved["param_groups"] for i in group["params"]]
    if len(saved["param_groups"]) != len(groups) or len(saved_ids) != len(params):
        raise AetuneError(
            f"carry_optimizer: the previous stage's {phase} optimizer holds {len(saved_ids)} parameters, this stage "
            f"trains {len(params)}: set carry_optimizer false for a stage that changes what trains"
        )
    for i, p in zip(saved_ids, params, strict=True):
        moment = saved["state"].get(i, {}).get("exp_avg")
        if moment is not None and moment.shape != p.shape:
            raise AetuneError(
                f"carry_optimizer: the previous stage's {phase} state has shape {tuple(moment.shape)} where this "
                f"stage's parameter is {tuple(p.shape)}: set carry_optimizer false"
            )
    # the saved parameter ids key its state; everything else in a group is this stage's own setting
    merged = [{**own, "params": old["params"]} for own, old in zip(groups, saved["param_groups"], strict=True)]
    optimizer.load_state_dict({"state": saved["state"], "param_groups": merged})


class AutoencoderModule(pl.LightningModule):
    """One training stage of one autoencoder family.

    Args:
        cfg: the resolved config.
        stage: the stage name (its loss options: ``cfg.stage_loss(stage)``).
        total_batches: batches this stage trains in all (across sessions).
        learning_rate: the generator's peak learning rate (the discriminator's unless ``train.d_learning_rate``).
        meta: plain-Python facts written into every checkpoint (dataset, labels, origin, world_size...).
        batch_images: images in one batch of the stage's plan (default: ``train.batch_size`` x
            ``meta["world_size"]``); a resumed stage keeps the value it started with.
    """

    def __init__(
        self,
        cfg: Config,
        stage: str,
        total_batches: int,
        learning_rate: float,
        meta: dict[str, Any],
        batch_images: int | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.cfg, self.stage, self.total_batches, self.learning_rate = cfg, stage, total_batches, learning_rate
        self.recipe = get_recipe(cfg.model.family, cfg.model.task)(cfg, stage)
        with torch.random.fork_rng(devices=[]):
            # Frozen networks are not checkpointed: a random one (demo, tests) must come out the same in every
            # stage and session, so the networks get their own fixed seed.
            torch.manual_seed(batch_seed(cfg.train.seed, "frozen networks"))
            nets = self.recipe.build()
        self.autoencoder: Autoencoder = nets.autoencoder
        self.discriminator: nn.Module | None = nets.discriminator
        for name, net in nets.frozen.items():
            self.add_module(name, net)
        self.frozen_prefixes = tuple(f"{name}." for name in nets.frozen)
        self.recipe.attach(nets)
        self.memory_format = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
        for net in (self.autoencoder, self.discriminator):
            if net is not None and self.autoencoder.spatial_dims == 2:
                net.to(memory_format=self.memory_format)
        self.ema_cfg = cfg.stage_ema(stage)
        self.ema: AveragedModel | None = None
        if self.ema_cfg.decay > 0:
            self.ema = AveragedModel(self.autoencoder, multi_avg_fn=get_ema_multi_avg_fn(self.ema_cfg.decay))
            self.ema.requires_grad_(False)  # an average, never trained: DDP and the optimizers must not see it
        self.ema_started = False  # the average holds an update: until then validation scores the live weights
        self.meta = {**meta, "random_teacher": False, "lpips": False, **self.recipe.notes()}
        self.batch_images = batch_images or cfg.train.batch_size * int(meta.get("world_size", 1))
        self.images_seen = 0  # images trained in this stage, all ranks together (see the module docstring)
        self.nonfinite_streak = 0  # windows in a row with a skipped step
        self.nonfinite_total = 0
        self.overflow_total = 0  # fp16 windows whose step the loss scaler skipped (routine: not a divergence)
        self._scale_seen: float | None = None  # the fp16 loss scale after the last window
        self.window_batches = 0  # batches accumulated in the open window
        self._pending = dict.fromkeys(self.recipe.phases, False)  # gradients accumulated in the open window
        self._clocks = {  # what each phase's learning-rate schedule counts (``OptimizerConfig.count``)
            phase: ScheduleClock(cfg.stage_optimizer(stage, phase).count, partial(self.recipe.phase_active, phase))
            for phase in self.recipe.phases
        }
        self._finite: dict[str, Tensor | None] = dict.fromkeys(self.recipe.phases)  # device flags of the window
        self._norms: dict[str, Tensor] = {}  # gradient norms taken before the step (fp32 / bf16)
        self._batch_keys: Tensor | None = None  # the training batch's image hashes, taken on the host
        self.val_preview: tuple[Tensor, Tensor] | None = None
        self.fid: FIDTracker | None = None  # set by the runner when train.rfid_images > 0 and weights exist
        self.rfid_at = -1  # batch of the last rFID (checkpointed: "every N batches" holds across resumes)
        self._fid_on = False
        self.validation_extras: dict[str, Any] = {}  # non-metric facts of the last validation (rFID note)
        self._window_grads: dict[str, Tensor] = {}  # a resumed open window's gradients, until on_train_start
        self._window_bad: dict[str, bool] = {}  # and its phases' flags
        self.work_dir: Path | None = None  # set by the runner: where the frozen-feature cache lives
        self.carried_optimizers: dict[str, dict[str, Any]] = {}  # set by the runner: phase -> previous stage's state

    @property
    def batches_seen(self) -> int:
        """Batches of the stage's plan trained so far: every schedule and the data order follow it."""
        return self.images_seen // self.batch_images

    @property
    def eval_autoencoder(self) -> Autoencoder:
        """What validation and the best checkpoints use: the EMA weights once they hold an update, else the live
        weights (the export follows, through the checkpoint's ``ema.n_averaged``)."""
        if self.ema is not None and self.ema_started:
            return self.ema.module  # type: ignore[return-value]
        return self.autoencoder

    def reset_ema(self) -> None:
        """Start the average from the weights the stage starts from (call after loading them): the copy made in
        ``__init__`` holds the random initialisation, and the first update copies the live weights anyway."""
        if self.ema is not None:
            self.ema.module.load_state_dict(self.autoencoder.state_dict())
            self.ema.n_averaged.zero_()
            self.ema_started = False

    def phase_lr(self, phase: str) -> float:
        """The peak learning rate of ``phase``."""
        d_lr = self.cfg.train.d_learning_rate
        return d_lr if phase == "d" and d_lr is not None else self.learning_rate

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """One optimiser per phase (Adam or AdamW, fused on CUDA outside fp16 loss scaling)."""
        out = []
        for phase in self.recipe.phases:
            opt = self.cfg.stage_optimizer(self.stage, phase)
            params = self.recipe.trainable(phase)
            kw: dict[str, Any] = {"lr": self.phase_lr(phase), "betas": tuple(opt.betas)}
            kw["weight_decay"], kw["amsgrad"] = opt.weight_decay, opt.amsgrad
            # Fused kernels unscale inside step(): clipping and grad-norm logs would see scaled gradients.
            if self.device.type == "cuda" and self.trainer.precision != "16-mixed":
                kw["fused"] = True
            optimizer = OPTIMIZERS[opt.name](params, **kw)
            if phase in self.carried_optimizers:  # train.stages.<stage>.carry_optimizer
                carry_optimizer_state(optimizer, self.carried_optimizers[phase], phase)
            out.append(optimizer)
        return out

    def _optimizers(self) -> list[Any]:
        """The phases' (Lightning-wrapped) optimizers as a list, also when there is one."""
        opts = self.optimizers()
        return opts if isinstance(opts, list) else [opts]

    def batch_generator(self, device: torch.device) -> torch.Generator:
        """Noise for this batch, seeded by (seed, stage, images trained, rank): identical after a resume."""
        seed = batch_seed(self.cfg.train.seed, self.stage, self.images_seen, self.global_rank)
        return torch.Generator(device=device).manual_seed(seed)

    def _inputs(self, batch: Any) -> tuple[Tensor, Tensor]:
        x, target = self.recipe.inputs(batch)
        if x.ndim == 4:
            x, target = (
                x.contiguous(memory_format=self.memory_format),
                target.contiguous(memory_format=self.memory_format),
            )
        return x, target

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Hash a training batch's images while they are still on the host (``Recipe.host_keys``)."""
        if self._trainer is not None and self.trainer.training:
            self._batch_keys = self.recipe.host_keys(batch)
        return batch

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, target = self._inputs(batch)
        every, batch_no = self.cfg.train.grad_norm_every, self.batches_seen
        keys, self._batch_keys = self._batch_keys, None
        ctx = StepContext(batch_no, self.batch_generator(x.device), every > 0 and batch_no % every == 0, keys)
        g = self.recipe.generator_step(x, target, ctx)
        logs = {"train/g_total": g.total.detach(), **{f"train/{k}": v for k, v in g.logs.items()}}
        logs |= self._grad_norms(g.parts)
        self.recipe.backward("g", g, lambda loss: self._backward("g", loss))
        d_on = "d" in self.recipe.phases and self.recipe.phase_active("d", batch_no)
        self.images_seen += self.cfg.train.batch_size * self.trainer.world_size
        self.window_batches += 1
        closes = self.window_batches >= self.cfg.train.gradient_accumulation or self.batches_seen >= self.total_batches
        # Recipe.fake_after_g_step: the d phase's fake comes from the generator this window's step has updated
        early = self._step_phases(("g",)) if d_on and closes and self.recipe.fake_after_g_step() else (set(), False)
        if d_on:
            d = self.recipe.discriminator_step(x, target, g, ctx)
            self.recipe.backward("d", d, lambda loss: self._backward("d", loss))
            logs |= {"train/d_total": d.total.detach(), **{f"train/{k}": v for k, v in d.logs.items()}}
        if closes:
            self._close_window(early)
        bar = {"train/g_total", "train/d_total", *(f"train/{k}" for k in self.recipe.progress_keys)}
        self.log_dict({k: v for k, v in logs.items() if k not in bar}, on_step=True, on_epoch=False)
        self.log_dict({k: v for k, v in logs.items() if k in bar}, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/nonfinite_total", float(self.nonfinite_total), on_step=True, on_epoch=False)
        if window_scaler(self.trainer) is not None:
            self.log("train/fp16_overflows", float(self.overflow_total), on_step=True, on_epoch=False)

    def _grad_norms(self, parts: dict[str, Tensor]) -> dict[str, Tensor]:
        """``grad_norm/<term>``: each weighted loss term's gradient norm at the model's last layer."""
        layer, out = self.recipe.grad_norm_layer, {}
        for name, part in parts.items():
            if not part.requires_grad:
                continue
            (grad,) = torch.autograd.grad(part, layer, retain_graph=True, allow_unused=True)
            out[f"grad_norm/{name}"] = grad.detach().norm() if grad is not None else torch.zeros((), device=part.device)
        return out

    def _backward(self, phase: str, loss: Tensor) -> None:
        """Backpropagate ``loss / accumulation`` on this rank alone; note on the device whether it was finite.

        A non-finite loss is backpropagated too (its gradients are dropped when the window closes): deciding
        here would cost a host sync per backward call.
        """
        finite = torch.isfinite(loss.detach())
        flag = self._finite[phase]
        self._finite[phase] = finite if flag is None else flag & finite
        with self._local_backward():
            self.manual_backward(loss / self.cfg.train.gradient_accumulation)
        self._pending[phase] = True

    def _local_backward(self) -> contextlib.AbstractContextManager[None]:
        """Block DDP's all-reduce in a backward call: the window's gradients are reduced once when it closes
        (``_reduce_gradients``). Lightning prepares DDP's reducer for every ``manual_backward``, so it would
        all-reduce every network's buckets at each of a window's backward calls (with ``find_unused_parameters``
        the idle network's too)."""
        block = getattr(self.trainer.strategy, "block_backward_sync", None)
        return block() if block is not None else contextlib.nullcontext()

    @property
    def window_open(self) -> bool:
        """Gradients are accumulated but not yet applied."""
        return self.window_batches > 0

    def _reduce_gradients(self, phase: str) -> None:
        """Average ``phase``'s window gradients over the ranks: one all-reduce for the whole network.

        The phase's finite flag rides along in the same buffer: after the sum it equals the world size only
        where every rank's losses were finite. ``torch.distributed`` directly, not the strategy's ``reduce``,
        which adds a barrier (a second collective) to every call.
        """
        world = self.trainer.world_size
        if world == 1:
            return
        grads = [p.grad for p in self.recipe.trainable(phase) if p.grad is not None]
        flag = self._finite[phase]
        assert flag is not None, f"phase {phase} has gradients but no finite flag"
        flat = torch.cat([g.reshape(-1).float() for g in grads] + [flag.float().reshape(1)])
        torch.distributed.all_reduce(flat)
        flat /= world
        for g, part in zip(grads, flat[:-1].split([g.numel() for g in grads]), strict=True):
            g.copy_(part.view_as(g))
        self._finite[phase] = flat[-1] == 1.0

    def _clip(self, params: list[Tensor]) -> Tensor:
        """Clip ``params``' (unscaled) gradients at ``train.gradient_clip_val`` (0: never); their norm (device)."""
        clip = self.cfg.train.gradient_clip_val
        return torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))

    def _step_phases(self, phases: tuple[str, ...]) -> tuple[set[str], bool]:
        """Step each of ``phases`` whose window was finite; drop their gradients (one host sync).

        Returns:
            (the phases that stepped, whether a pending phase's losses or gradient norm were not finite).
        """
        opts = dict(zip(self.recipe.phases, self._optimizers(), strict=True))
        pending = [p for p in phases if self._pending[p]]
        scaled = window_scaler(self.trainer) is not None
        flags = []
        for phase in pending:
            self._reduce_gradients(phase)
            flag = self._finite[phase]
            assert flag is not None
            if not scaled:
                params = [q for group in opts[phase].param_groups for q in group["params"] if q.grad is not None]
                self._norms[phase] = self._clip(params)
                flag = flag & torch.isfinite(self._norms[phase])
            flags.append(flag)
        finite = [bool(f) for f in torch.stack(flags).tolist()] if flags else []  # the one host sync
        stepped = set()
        for phase, ok in zip(pending, finite, strict=True):
            if ok:
                spec = self.cfg.stage_optimizer(self.stage, phase)
                position = self._clocks[phase](self.batches_seen - 1)
                lr = lr_at(position, self.phase_lr(phase), self.total_batches, spec)
                for group in opts[phase].param_groups:
                    group["lr"] = lr
                opts[phase].step()
                stepped.add(phase)
                self.log(f"train/lr_{phase}", lr, on_step=True, on_epoch=False)
        for phase in phases:
            opts[phase].zero_grad(set_to_none=True)
            self._pending[phase], self._finite[phase] = False, None
            self._norms.pop(phase, None)
        return stepped, not all(finite)

    def _close_window(self, early: tuple[set[str], bool] = (set(), False)) -> None:
        """Step each phase whose window was finite (``_step_phases``); drop the gradients of the others.

        ``early``: what ``_step_phases`` returned for phases already stepped in this batch (before the d phase).
        Under fp16 the loss scaler checks the gradients itself (after unscaling) and skips an overflowing step;
        a window with a non-finite loss steps nothing and counts as an overflow (``update_scaler``), which updates
        the scale once, after every optimizer of the window stepped.
        """
        stepped, bad = self._step_phases(self.recipe.phases)
        stepped, bad = stepped | early[0], bad or early[1]
        update_scaler(self.trainer, stepped=bool(stepped), overflow=bad)
        bad = self._count_overflow(bad) or bad
        if self.ema is not None and "g" in stepped and self.batches_seen > self.ema_cfg.start_batch:
            self.ema.update_parameters(self.autoencoder)
            self.ema_started = True
        self.window_batches = 0
        self._count_nonfinite(bad)

    def _count_overflow(self, bad: bool) -> bool:
        """fp16: count a window whose step the scaler skipped (its scale went down) and that no bad loss explains.

        Returns:
            True when the scale has fallen below 1: gradients that stay non-finite at any scale are NaN, not an
            overflow, and the window counts as non-finite (``train.max_nonfinite`` then stops the run).
        """
        scaler = window_scaler(self.trainer)
        if scaler is None:
            return False
        scale = scaler.get_scale()  # GradScaler.step synced already: this read waits for nothing more
        if self._scale_seen is not None and scale < self._scale_seen and not bad:
            self.overflow_total += 1
        self._scale_seen = scale
        return scale < 1.0

    def _count_nonfinite(self, bad: bool) -> None:
        if not bad:
            self.nonfinite_streak = 0
            return
        self.nonfinite_streak += 1
        self.nonfinite_total += 1
        if self.global_rank == 0:
            log.warning(
                "non-finite loss or gradient at stage %s batch %d: optimizer step skipped (%d in a row, limit %d)",
                self.stage,
                self.batches_seen,
                self.nonfinite_streak,
                self.cfg.train.max_nonfinite,
            )
        if self.nonfinite_streak >= self.cfg.train.max_nonfinite:
            self.trainer.limit_val_batches = 0  # stop after this batch, without a validation (decision reduced)
            self.trainer.should_stop = True

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Log the phase's (unscaled) gradient norm; under fp16, clip here, after the plugin unscaled."""
        phases = {id(opt.optimizer): phase for phase, opt in zip(self.recipe.phases, self._optimizers(), strict=True)}
        phase = phases.get(id(optimizer), "g")
        norm = self._norms.get(phase)
        if norm is None:
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            norm = self._clip(params)
        self.log(f"train/grad_norm_{phase}", norm, on_step=True, on_epoch=False)

    def on_validation_model_zero_grad(self) -> None:
        """Keep gradients accumulated by hand across a validation (Lightning would drop them here)."""

    def on_validation_epoch_start(self) -> None:
        """rFID runs at the stage's end and every ``train.rfid_every`` batches (on ``rfid_images`` images)."""
        every, end = self.cfg.train.rfid_every, self.batches_seen >= self.total_batches
        due = end or (every > 0 and (self.rfid_at < 0 or self.batches_seen - self.rfid_at >= every))
        self._fid_on = self.fid is not None and self.cfg.train.rfid_images > 0 and due
        if self._fid_on:
            self.fid.reset()

    def on_validation_epoch_end(self) -> None:
        if not self._fid_on:
            return
        # Every rank validates on the whole split in the same order: the local result is the global one.
        result = self.fid.compute()
        if result["rfid"] is not None:
            self.log("val/rfid", result["rfid"], on_step=False, on_epoch=True)
        self.validation_extras = result
        self.rfid_at = self.batches_seen

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, target = self._inputs(batch)
        rec = self.recipe.reconstruct(self.eval_autoencoder, x)
        a, b = (target.float() + 1.0) / 2.0, (rec + 1.0) / 2.0  # [-1, 1] -> [0, 1]
        names = {label: name for name, label in self.meta.get("labels", {}).items()}
        labels = batch[-1] if isinstance(batch, (list, tuple)) else None  # every data kind's items end in the label
        values = {f"val/{k}": v for k, v in self.recipe.validation_values(a, b, labels, names).items()}
        for k, v in values.items():
            self.log(
                k,
                v.mean(),
                on_step=False,
                on_epoch=True,
                batch_size=len(v),  # per-type keys: the epoch mean is over that type's images
                sync_dist=True,
                prog_bar=k == "val/psnr",
            )
        self.log("batches", float(self.batches_seen), on_step=False, on_epoch=True, batch_size=x.shape[0])
        if batch_idx == 0:
            self.val_preview = (a[:PREVIEW_IMAGES].detach().cpu(), b[:PREVIEW_IMAGES].detach().cpu())
        if self._fid_on and a.ndim == 4:
            room = self.cfg.train.rfid_images - self.fid.images
            if room > 0:
                self.fid.update(a[:room], b[:room])

    @property
    def early_stopped(self) -> bool:
        """Early stopping ended the stage (patience exhausted) before its planned batches."""
        es = self.trainer.early_stopping_callback if self._trainer is not None else None
        return es is not None and es.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED

    @property
    def stage_finished(self) -> bool:
        """The stage ran its planned batches, or early stopping ended it."""
        return self.batches_seen >= self.total_batches or self.early_stopped

    def metadata(self) -> dict[str, Any]:
        """What a checkpoint says about itself (read by ``aetune.models.checkpoint.load_autoencoder_checkpoint``)."""
        return {
            **self.meta,
            "family": self.cfg.model.family,
            "model_config": self.autoencoder.config,
            "config": self.cfg.to_dict(),
            "stage": self.stage,
            "ema": self.ema is not None,
        }

    def _trainable_by_name(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(self.frozen_prefixes)]:
            del state[key]
        # A save inside an accumulation window (a stop for non-finite losses, a SIGTERM) keeps the window:
        # its flags and the gradients accumulated so far, so the resumed run steps exactly where this one would.
        window = None
        if self.window_open:
            grads = {n: p.grad.detach().clone() for n, p in self._trainable_by_name().items() if p.grad is not None}
            bad = {k: f is not None and not bool(f) for k, f in self._finite.items()}
            window = {"pending": dict(self._pending), "bad": bad, "grads": grads, "batches": self.window_batches}
        checkpoint["aetune"] = {
            **self.metadata(),
            "batches_seen": self.batches_seen,
            "images_seen": self.images_seen,
            "batch_images": self.batch_images,
            "total_batches": self.total_batches,
            "stage_finished": self.stage_finished,
            "early_stopped": self.stage_finished and self.batches_seen < self.total_batches,
            "nonfinite_streak": self.nonfinite_streak,
            "nonfinite_total": self.nonfinite_total,
            "overflow_total": self.overflow_total,
            "window": window,
            "rfid_at": self.rfid_at,
            "rng": rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint["aetune"]
        if meta["family"] != self.cfg.model.family or meta["stage"] != self.stage:
            raise AetuneError(
                f"a {meta['family']} stage {meta['stage']} checkpoint cannot resume {self.cfg.model.family} "
                f"stage {self.stage}"
            )
        state = checkpoint["state_dict"]
        state.update({k: v for k, v in self.state_dict().items() if k.startswith(self.frozen_prefixes)})
        if self.ema is not None and not any(k.startswith("ema.") for k in state):
            raise AetuneError(f"stage {self.stage}'s checkpoint has no EMA weights: keep train.ema as it was saved")
        self.batch_images = meta.get("batch_images", self.cfg.train.batch_size * meta["world_size"])
        self.images_seen = meta.get("images_seen", meta["batches_seen"] * self.batch_images)
        self.nonfinite_streak, self.nonfinite_total = meta["nonfinite_streak"], meta["nonfinite_total"]
        self.overflow_total = meta.get("overflow_total", 0)
        self.rfid_at = meta.get("rfid_at", -1)
        self.ema_started = self.ema is not None and bool(state["ema.n_averaged"] > 0)
        window = meta.get("window")
        if window is not None:
            self._pending = dict(window["pending"])
            self._window_bad = dict(window["bad"])
            self._window_grads = window["grads"]
            self.window_batches = window.get("batches", 1)
        set_rng_state(meta["rng"])

    def on_fit_start(self) -> None:
        """Let the recipe cache its frozen networks' outputs for the training images (every rank, same point)."""
        train_set = getattr(self.trainer.datamodule, "train_set", None)
        images = getattr(train_set, "images", None)
        if self.work_dir is not None and isinstance(images, np.ndarray):
            show = self.trainer.is_global_zero and self.trainer.progress_bar_callback is not None
            self.recipe.prepare_feature_cache(images, self.work_dir, self.device, show)

    def on_train_start(self) -> None:
        """Put a saved window back (here: the Trainer zeroes all gradients after restoring); note the fp16 scale."""
        params = self._trainable_by_name()
        for name, grad in self._window_grads.items():
            params[name].grad = grad.to(params[name].device).clone()
        for phase, bad in self._window_bad.items():
            self._pending[phase] = self._pending[phase] or bad  # a bad phase must reach the window's decision
            self._finite[phase] = torch.tensor(not bad, device=self.device) if self._pending[phase] else None
        self._window_grads, self._window_bad = {}, {}
        scaler = window_scaler(self.trainer)
        self._scale_seen = scaler.get_scale() if scaler is not None else None
