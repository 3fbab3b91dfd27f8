"""Throughput and peak memory of one training step, by phase, on random images (no dataset needed).

    python -m aetune.bench --config vavae --batch_size 8 --steps 20 [--precision 16-mixed]

Prints images/s and peak memory (GPU: max allocated; CPU: peak resident set size) for the generator phase
(autoencoder forward/backward/step with teacher, GAN and alignment terms), the discriminator phase and the
whole step, as the training module runs them.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from aetune.cli import run_main
from aetune.config import Config, load_config
from aetune.env import advise_precision, gpu_facts
from aetune.recipes import StepContext
from aetune.train.module import AutoencoderModule
from aetune.train.precision import check_precision

AUTOCAST = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}
CLEAR_REFS = Path("/proc/self/clear_refs")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="vavae", help="preset name or YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="timed steps (after --warmup untimed ones)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--stage", help="stage whose loss weights apply (default: the first with the GAN on)")
    p.add_argument("--precision", help="32, 16-mixed, bf16-mixed (default: the advice for this GPU)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


class PeakMemory:
    """Peak memory since the last ``reset``: CUDA max allocated, or the process's peak RSS (Linux)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.resettable = device.type == "cuda" or CLEAR_REFS.exists()

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif CLEAR_REFS.exists():
            CLEAR_REFS.write_text("5")  # resets VmHWM, the peak RSS (Linux >= 4.0)

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # lifetime peak (KiB on Linux)


@contextlib.contextmanager
def measured(device: torch.device, memory: PeakMemory, out: list[tuple[float, float]]) -> Iterator[None]:
    """Append (seconds, peak MiB) of the block to ``out``, synchronising CUDA around it."""
    memory.reset()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    out.append((time.perf_counter() - t0, memory.peak_mib()))


def heaviest_stage(cfg: Config) -> str:
    """The first stage whose GAN is on from its first batch (both phases), else the first stage."""
    for stage in cfg.train.stages:
        if getattr(cfg.stage_loss(stage), "disc_start", -1) == 0:
            return stage
    return next(iter(cfg.train.stages))


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, [*args.overrides, f"train.batch_size={args.batch_size}"])
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    gpus = gpu_facts() if accelerator == "gpu" else []
    precision = check_precision(args.precision or cfg.train.precision or advise_precision(gpus)[0], accelerator, gpus)
    stage = args.stage or heaviest_stage(cfg)
    module = AutoencoderModule(cfg, stage, total_batches=10**9, learning_rate=1e-5, meta={}).to(device)
    recipe = module.recipe
    opts = dict(zip(recipe.phases, module.configure_optimizers(), strict=True))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
    size = cfg.stage_image_size(stage)
    images = torch.randint(0, 256, (args.batch_size, 3, size, size), dtype=torch.uint8, device=device)
    x, target = recipe.inputs((images, torch.zeros(args.batch_size, dtype=torch.long)))
    memory = PeakMemory(device)
    gan_on = "d" in recipe.phases and recipe.phase_active("d", 0)

    def step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, cfg.train.gradient_clip_val or float("inf"))
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    def autocast() -> contextlib.AbstractContextManager:
        dtype = AUTOCAST.get(precision)
        return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    timings: dict[str, list[tuple[float, float]]] = {"generator": [], "discriminator": []}
    for i in range(args.warmup + args.steps):
        g_out: list[tuple[float, float]] = []
        d_out: list[tuple[float, float]] = []
        ctx = StepContext(0, module.batch_generator(device))
        with measured(device, memory, g_out), autocast():
            g = recipe.generator_step(x, target, ctx)
            step(opts["g"], g.total)
        if gan_on:
            with measured(device, memory, d_out), autocast():
                step(opts["d"], recipe.discriminator_step(x, target, g, ctx).total)
        if i >= args.warmup:
            timings["generator"] += g_out
            timings["discriminator"] += d_out
    report(timings, args, cfg.model.family, stage, precision, device, memory)
    return 0


def report(
    timings: dict[str, list[tuple[float, float]]],
    args: argparse.Namespace,
    family: str,
    stage: str,
    precision: str,
    device: torch.device,
    memory: PeakMemory,
) -> None:
    """Print one line per phase and one for the whole step."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    kind = "max allocated" if device.type == "cuda" else "peak RSS" + ("" if memory.resettable else " (process)")
    print(f"{family} stage {stage}, batch {args.batch_size}, {precision}, {name}, {args.steps} steps")
    total = 0.0
    peaks = []
    for phase, rows in timings.items():
        if not rows:
            print(f"  {phase:<13}  skipped (GAN off in stage {stage})")
            continue
        seconds, peak = sum(r[0] for r in rows) / len(rows), max(r[1] for r in rows)
        total, peaks = total + seconds, [*peaks, peak]
        print(row(phase, args.batch_size, seconds, peak, kind))
    print(row("whole step", args.batch_size, total, max(peaks), kind))


def row(phase: str, batch: int, seconds: float, peak_mib: float, kind: str) -> str:
    """One aligned line of the report."""
    return f"  {phase:<13}  {batch / seconds:9.1f} images/s  {seconds * 1000:8.1f} ms  {peak_mib:9.0f} MiB {kind}"


if __name__ == "__main__":
    raise SystemExit(run_main(main, parse_args()))
