"""Throughput and peak memory of one training step, by phase, on random images (no dataset needed).

    python -m aetune.tools.bench --config vavae --batch_size 8 --steps 20 [--precision 16-mixed] [--compare]

Prints, for the generator phase (autoencoder forward/backward/step with teacher, GAN and alignment terms), the
discriminator phase and the whole step as the training module runs them: images/s of the median step time
over ``--steps`` timed steps after ``--warmup`` untimed ones, the min and max step times, and peak memory
(GPU: max allocated; CPU: peak resident set size).

``--compare`` times, in the same process and alternating step by step, the reference composition (the teacher
on every step, two ``autograd.grad`` calls per adaptive weight plus the total backward: what LightningDiT
does) and ours (the teacher's feature cache, the split backward of ``aetune/losses/split.py``), and prints
the ratio of images/s per phase and each one's peak memory. ``--compile`` compiles the encoder and decoder
(``torch.compile``) and reports the compile time (the first step's extra seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import resource
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aetune.cli import run_main
from aetune.config import Config, ModelConfig, family_schema, load_config
from aetune.data.feature_cache import FeatureCache
from aetune.recipes import StepContext
from aetune.setup.env import advise_precision, gpu_facts
from aetune.train.module import AutoencoderModule
from aetune.train.precision import check_precision

AUTOCAST = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}
CLEAR_REFS = Path("/proc/self/clear_refs")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = family_schema(ModelConfig().family).default_preset  # the default family's preset
    p.add_argument("--config", default=default, help=f"preset name or YAML path (default {default})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="timed steps (after --warmup untimed ones)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--stage", help="stage whose loss weights apply (default: the heaviest, the first with the GAN on)")
    p.add_argument("--precision", help="32, 16-mixed, bf16-mixed (default: the advice for this GPU)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--compare", action="store_true", help="time the reference composition and ours, alternating")
    p.add_argument("--compile", action="store_true", help="torch.compile the encoder and decoder")
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


@dataclass
class Variant:
    """One way of running the step: ``reference`` (teacher every step, reference backward) or ``ours``."""

    name: str
    split: bool
    cache: FeatureCache | None
    rows: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: {"generator": [], "discriminator": []})


def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
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
    x = x.contiguous(memory_format=module.memory_format)
    memory = PeakMemory(device)
    gan_on = "d" in recipe.phases and recipe.phase_active("d", 0)
    ours = Variant("ours", split=True, cache=build_cache(recipe, images, device))
    variants = [Variant("reference", split=False, cache=None), ours] if args.compare else [ours]
    if args.compile:
        compile_networks(module)

    def step(opt: torch.optim.Optimizer) -> None:
        scaler.unscale_(opt)
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, cfg.train.gradient_clip_val or float("inf"))
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    def backward(loss: torch.Tensor) -> None:
        scaler.scale(loss).backward()

    def autocast() -> contextlib.AbstractContextManager:
        dtype = AUTOCAST.get(precision)
        return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    first: dict[str, float] = {}
    for i in range(args.warmup + args.steps):
        for v in variants:  # alternating: both see the same machine load
            if hasattr(recipe.loss, "split_backward"):  # families without these options run one way
                recipe.loss = dataclasses.replace(recipe.loss, split_backward=v.split)
            if hasattr(recipe, "feature_cache"):
                recipe.feature_cache = v.cache
            g_out: list[tuple[float, float]] = []
            d_out: list[tuple[float, float]] = []
            ctx = StepContext(0, module.batch_generator(device))
            with measured(device, memory, g_out):
                with autocast():
                    g = recipe.generator_step(x, target, ctx)
                recipe.backward("g", g, backward)
                step(opts["g"])
            if gan_on:
                with measured(device, memory, d_out):
                    with autocast():
                        d = recipe.discriminator_step(x, target, g, ctx)
                    recipe.backward("d", d, backward)
                    step(opts["d"])
            del g
            first.setdefault(v.name, g_out[0][0] + sum(r[0] for r in d_out))
            if i >= args.warmup:
                v.rows["generator"] += g_out
                v.rows["discriminator"] += d_out
    header = f"{cfg.model.family} stage {stage}, batch {args.batch_size}, {precision}, {device_name(device)}"
    print(f"{header}, {args.steps} steps after {args.warmup} warm-up, {torch.get_num_threads()} threads")
    for v in variants:
        if args.compare:
            print(f"{v.name}:")
        median = report(v.rows, args.batch_size, stage, device, memory)
        if args.compile:
            print(f"  compile: first step {first[v.name]:.1f} s, {first[v.name] - median:.1f} s more than the median")
    if args.compare:
        print_ratios(variants[0], variants[1])
    return 0


def build_cache(recipe: Any, images: torch.Tensor, device: torch.device) -> FeatureCache | None:
    """The teacher's feature cache of the benchmark images (a temporary work directory), when the recipe has one."""
    prepare = getattr(recipe, "prepare_feature_cache", None)
    if prepare is None:
        return None
    array = images.permute(0, 2, 3, 1).cpu().numpy()  # (N, S, S, 3) as the image cache holds them
    with tempfile.TemporaryDirectory() as tmp:
        cache = prepare(array, Path(tmp), device, progress=False)
        if cache is not None:
            cache.features = np.array(cache.features)  # in RAM: the temporary file goes away
    return cache


def compile_networks(module: AutoencoderModule) -> None:
    """``torch.compile`` the autoencoder's encoder and decoder (lazily: the time is spent in the first step)."""
    ae = module.autoencoder
    ae.encoder = torch.compile(ae.encoder)
    ae.decoder = torch.compile(ae.decoder)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def memory_kind(device: torch.device, memory: PeakMemory) -> str:
    return "max allocated" if device.type == "cuda" else "peak RSS" + ("" if memory.resettable else " (process)")


def report(
    timings: dict[str, list[tuple[float, float]]], batch: int, stage: str, device: torch.device, memory: PeakMemory
) -> float:
    """Print one line per phase and one for the whole step; return the whole step's median seconds."""
    kind = memory_kind(device, memory)
    whole: list[float] = []
    peaks = []
    for phase, rows in timings.items():
        if not rows:
            print(f"  {phase:<13}  skipped (GAN off in stage {stage})")
            continue
        seconds = [r[0] for r in rows]
        whole = [a + b for a, b in zip(whole, seconds, strict=True)] if whole else seconds
        peaks.append(max(r[1] for r in rows))
        print(row(phase, batch, seconds, peaks[-1], kind))
    print(row("whole step", batch, whole, max(peaks), kind))
    return statistics.median(whole)


def row(phase: str, batch: int, seconds: list[float], peak_mib: float, kind: str) -> str:
    """One aligned line: images/s of the median step, the median (min..max) step time, peak memory."""
    med = statistics.median(seconds)
    spread = f"{med * 1000:8.1f} ms ({min(seconds) * 1000:.1f}..{max(seconds) * 1000:.1f})"
    return f"  {phase:<13}  {batch / med:9.3f} images/s  {spread}  {peak_mib:9.0f} MiB {kind}"


def print_ratios(ref: Variant, ours: Variant) -> None:
    """Ours / reference images/s per phase (median step times) and the peak memory of each."""
    print("ours vs reference:")
    phases = [p for p in ref.rows if ref.rows[p]]
    for phase in [*phases, "whole step"]:
        pick = phases if phase == "whole step" else [phase]
        t_ref = statistics.median([sum(x) for x in zip(*([r[0] for r in ref.rows[p]] for p in pick), strict=True)])
        t_ours = statistics.median([sum(x) for x in zip(*([r[0] for r in ours.rows[p]] for p in pick), strict=True)])
        m_ref = max(r[1] for p in pick for r in ref.rows[p])
        m_ours = max(r[1] for p in pick for r in ours.rows[p])
        print(f"  {phase:<13}  {t_ref / t_ours:5.2f}x images/s   peak memory {m_ours:.0f} vs {m_ref:.0f} MiB")


if __name__ == "__main__":
    raise SystemExit(run_main(main, parse_args()))
