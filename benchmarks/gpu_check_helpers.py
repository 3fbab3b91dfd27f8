"""The Python half of ``benchmarks/gpu_check.sh``: each block's measurement or verdict, and the report.

    python -m benchmarks.gpu_check_helpers SUBCOMMAND --out OUT ...   (from the repository root)

Every subcommand but ``report`` writes one block result, ``OUT/blocks/<block>.json`` (status PASS or FAIL, the
seconds since ``--start``, its numbers and notes); ``report`` gathers them into ``OUT/report.txt`` and
``OUT/report.json`` and exits 1 when a block failed or never reported. The verdicts (``judge_*``) and the
report are pure functions, tested on CPU in ``tests/test_gpu_check.py``; ``sdpa`` and ``syncs`` need CUDA.
docs/performance.md, "The GPU check", says what each block checks.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import json
import math
import re
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

PASS, FAIL = "PASS", "FAIL"
BLOCKS_DIR = "blocks"
"""Folder under ``OUT`` with one JSON file per block result."""
FATAL_LOG = re.compile(r"No inf checks|_scale is None|diverged at batch|Traceback \(most recent call last\)")
"""Log lines that fail a training block even when its exit code is 0 (the issue's fp16 failure modes)."""
RESUME_MAX_ABS = 1e-3
"""Stop-and-resume vs uninterrupted: the largest weight difference allowed (CUDA kernels are not bit-exact)."""
RESUME_MAX_REL = 0.25
"""... and the allowed ||resumed - uninterrupted|| / ||uninterrupted - stopped||: a resume that lost state moves
the weights by about as much as training after the stop did (ratio ~1); kernel noise stays far below."""
BENCH_ROW = re.compile(
    r"^\s+(?P<phase>[a-z][a-z ]*?)\s+(?P<ips>[\d.]+) images/s\s+(?P<ms>[\d.]+) ms \([\d.]+\.\.[\d.]+\)\s+"
    r"(?P<mib>\d+) MiB"
)
"""One phase line of ``python -m aetune.tools.bench`` (``aetune/tools/bench.py``, ``row``)."""
SYNC_MESSAGE = "synchroniz"
"""Fragment of the warning ``torch.cuda.set_sync_debug_mode("warn")`` gives for each host synchronisation."""
REPO = Path(__file__).resolve().parent.parent
REQUIRED_MODULES = (
    "torch", "torchvision", "pytorch_lightning", "timm", "lpips", "pytorch_fid", "skimage", "sklearn", "scipy",
    "matplotlib", "yaml", "huggingface_hub", "transformers", "safetensors", "monai", "einops", "nibabel", "av",
)  # fmt: skip
"""Imports of requirements.txt and requirements/kl3d.txt: the blocks' families (kl3d needs MONAI, taehv av)."""


@dataclass
class BlockResult:
    """One named check of the report.

    Attributes:
        name: file name and sort key (``1_fp16_split_stage1``).
        title: what it checks, in words.
        status: ``PASS`` or ``FAIL``.
        seconds: wall time of the block.
        numbers: what it measured (JSON values).
        notes: why it failed, or facts worth reading.
    """

    name: str
    title: str
    status: str
    seconds: float
    numbers: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def write_block(out: Path, result: BlockResult) -> Path:
    """Write ``result`` to ``out/blocks/<name>.json`` (temp file + rename); returns the path."""
    folder = Path(out) / BLOCKS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{result.name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(result), indent=2, default=str))
    tmp.replace(path)
    return path


def read_blocks(out: Path) -> list[BlockResult]:
    """Every block result under ``out/blocks``, sorted by name."""
    paths = sorted((Path(out) / BLOCKS_DIR).glob("*.json"))
    return [BlockResult(**json.loads(p.read_text())) for p in paths]


def elapsed(start: float | None) -> float:
    """Seconds since ``start`` (a ``time.time()`` value; 0 when None)."""
    return round(time.time() - start, 1) if start is not None else 0.0


# ---------------------------------------------------------------- checkpoints and training runs (blocks 1-3)


def fp16_scale(checkpoint: dict[str, Any]) -> float | None:
    """The loss scale Lightning saved with the precision plugin's state (a ``GradScaler`` state dict), else None.

    Lightning stores the plugin's state under its class name (``WindowMixedPrecision`` today); bf16 and fp32 runs
    have none, and a finished stage's ``last.ckpt`` loses it when the next stage drops its optimizer state.
    """
    for value in checkpoint.values():
        if isinstance(value, dict) and "scale" in value and "_growth_tracker" in value:
            return float(value["scale"])
    return None


def checkpoint_facts(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What the check reads from a ``last.ckpt``: the stage's counters and the fp16 loss scale.

    Returns:
        ``batches_seen``, ``total_batches``, ``nonfinite_total`` (windows skipped for a non-finite loss or
        gradient), ``overflow_total`` (fp16 windows the loss scaler skipped), ``global_step`` (Lightning's
        optimizer-step count), ``fp16_scale`` (None without one).
    """
    meta = checkpoint.get("aetune", {})
    return {
        "batches_seen": meta.get("batches_seen"),
        "total_batches": meta.get("total_batches"),
        "nonfinite_total": meta.get("nonfinite_total"),
        "overflow_total": meta.get("overflow_total", 0),
        "global_step": checkpoint.get("global_step"),
        "fp16_scale": fp16_scale(checkpoint),
    }


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint through the project's pickle-free loader (memory-mapped)."""
    from aetune.safe_load import load_torch_file

    return load_torch_file(path)


def log_problem(text: str) -> str | None:
    """The line of a log that says what went wrong: an issue failure mode, an ``error:`` line, an exception."""
    lines = text.splitlines()
    for line in lines:
        if FATAL_LOG.search(line) and not line.startswith("Traceback"):
            return line.strip()[:200]
    for line in reversed(lines):
        if line.startswith("error:") or re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line):
            return line.strip()[:200]
    return "Traceback in the log" if FATAL_LOG.search(text) else None


def judge_training(
    rc: int, facts: dict[str, Any] | None, expect_batches: int, precision: str, log_text: str, require_finite: bool
) -> tuple[bool, list[str]]:
    """Whether one step-4 stage run passes, and why not.

    Rules: exit code 0; no fatal line in the log (``FATAL_LOG``); ``last.ckpt`` holds ``expect_batches`` batches.
    Under ``16-mixed``: the saved loss scale is finite and >= 1 (scale collapse means real NaNs, not overflow)
    and not every batch was skipped. With ``require_finite``: no skipped batch at all (bf16 does not overflow).
    """
    notes = []
    if rc != 0:
        notes.append(f"exit code {rc}" + (" (timeout)" if rc in (124, 137) else ""))
    if FATAL_LOG.search(log_text) or rc != 0:  # a fatal line fails the run; any failure gets its explanation
        problem = log_problem(log_text)
        notes += [f"log: {problem}"] if problem is not None else []
    if facts is None:
        notes.append("no last.ckpt")
        return False, notes
    if facts["batches_seen"] != expect_batches:
        notes.append(f"batches_seen {facts['batches_seen']}, expected {expect_batches}")
    skipped, seen = facts["nonfinite_total"], facts["batches_seen"] or 0
    if precision == "16-mixed":
        scale = facts["fp16_scale"]
        if scale is None or not math.isfinite(scale) or scale < 1:
            notes.append(f"fp16 loss scale {scale}: expected a finite scale >= 1 in last.ckpt")
        lost = (skipped or 0) + (facts.get("overflow_total") or 0)
        if seen and lost >= seen:
            notes.append(f"every batch skipped ({lost} of {seen}, overflows included): no optimizer step was taken")
    if require_finite and skipped:
        notes.append(f"{skipped} batches skipped for non-finite values under {precision} (0 expected)")
    return not notes, notes


def cmd_train(args: argparse.Namespace) -> BlockResult:
    """Block 1 / 3: one step-4 stage run, judged from its exit code, log and ``last.ckpt``."""
    ckpt = Path(args.ckpt)
    facts = checkpoint_facts(load_checkpoint(ckpt)) if ckpt.is_file() else None
    log_text = Path(args.log).read_text(errors="replace") if args.log and Path(args.log).is_file() else ""
    ok, notes = judge_training(args.rc, facts, args.expect_batches, args.precision, log_text, args.require_finite)
    numbers = {"rc": args.rc, "precision": args.precision, **(facts or {})}
    return BlockResult(args.block, args.title, PASS if ok else FAIL, elapsed(args.start), numbers, notes)


# ---------------------------------------------------------------- stop and resume (block 2)


def trainable_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The floating-point tensors of a checkpoint's ``state_dict`` (weights, EMA; no integer buffers)."""
    return {
        k: v for k, v in checkpoint["state_dict"].items() if hasattr(v, "is_floating_point") and v.is_floating_point()
    }


def weight_difference(
    reference: dict[str, Any], other: dict[str, Any], stopped: dict[str, Any] | None
) -> dict[str, Any]:
    """How far ``other``'s weights are from ``reference``'s (same keys expected).

    Returns:
        ``max_abs``: the largest |difference| over every tensor; ``rel_norm``: ||other - reference|| over
        ||reference - stopped|| (how much training after the stop moved the weights), None without ``stopped``;
        ``missing``: keys of one side the other lacks.
    """
    missing = sorted(set(reference) ^ set(other))
    common = [k for k in reference if k in other]
    max_abs, diff_sq, moved_sq = 0.0, 0.0, 0.0
    for k in common:
        a, b = reference[k].float(), other[k].float()
        d = (a - b).abs()
        max_abs = max(max_abs, float(d.max())) if d.numel() else max_abs
        diff_sq += float((d * d).sum())
        if stopped is not None and k in stopped:
            moved_sq += float(((a - stopped[k].float()) ** 2).sum())
    rel = math.sqrt(diff_sq) / math.sqrt(moved_sq) if stopped is not None and moved_sq > 0 else None
    return {"max_abs": max_abs, "rel_norm": rel, "missing": missing, "tensors": len(common)}


def judge_resume(diff: dict[str, Any], batches: tuple[int | None, int | None]) -> tuple[bool, list[str]]:
    """Resumed equals uninterrupted: same batches, max |w diff| < ``RESUME_MAX_ABS``, ratio < ``RESUME_MAX_REL``."""
    notes = []
    if batches[0] != batches[1]:
        notes.append(f"batches_seen differ: uninterrupted {batches[0]}, resumed {batches[1]}")
    if diff["missing"]:
        notes.append(f"{len(diff['missing'])} tensors in one checkpoint only, e.g. {diff['missing'][0]}")
    if not diff["max_abs"] < RESUME_MAX_ABS:
        notes.append(f"max |w_uninterrupted - w_resumed| = {diff['max_abs']:.3g} >= {RESUME_MAX_ABS:g}")
    if diff["rel_norm"] is not None and not diff["rel_norm"] < RESUME_MAX_REL:
        notes.append(f"difference / movement after the stop = {diff['rel_norm']:.3g} >= {RESUME_MAX_REL:g}")
    return not notes, notes


def cmd_resume(args: argparse.Namespace) -> BlockResult:
    """Block 2: the stopped-and-resumed ``last.ckpt`` against the uninterrupted one."""
    paths = {"reference": Path(args.reference), "resumed": Path(args.resumed)}
    absent = [f"no {name} checkpoint {p}" for name, p in paths.items() if not p.is_file()]
    if absent or args.rc != 0:
        notes = absent + ([f"exit code {args.rc} of the stop or the resume"] if args.rc != 0 else [])
        return BlockResult(args.block, args.title, FAIL, elapsed(args.start), {"rc": args.rc}, notes)
    ref, res = load_checkpoint(paths["reference"]), load_checkpoint(paths["resumed"])
    stopped = load_checkpoint(Path(args.stopped)) if args.stopped and Path(args.stopped).is_file() else None
    diff = weight_difference(trainable_state(ref), trainable_state(res), stopped and trainable_state(stopped))
    batches = (checkpoint_facts(ref)["batches_seen"], checkpoint_facts(res)["batches_seen"])
    ok, notes = judge_resume(diff, batches)
    numbers = {**diff, "missing": len(diff["missing"]), "batches_seen": list(batches)}
    if stopped is not None:
        numbers["stopped_at"] = checkpoint_facts(stopped)["batches_seen"]
    return BlockResult(args.block, args.title, PASS if ok else FAIL, elapsed(args.start), numbers, notes)


# ---------------------------------------------------------------- fused attention (block 4)


def vavae_attention(image_size: int = 256) -> tuple[Any, int]:
    """The first attention block of the released-size VA-VAE (random weights) and its grid side at
    ``image_size``: 512 channels over 16 x 16 positions at 256 px (f16)."""
    from aetune import create_autoencoder
    from aetune.nn.ldm import AttnBlock

    model = create_autoencoder("vavae")
    block = next(m for m in model.modules() if isinstance(m, AttnBlock))
    return block, image_size // model.downsample_factor


def sdpa_check(batch: int = 8) -> dict[str, str]:
    """Forward and backward of ``AttnBlock`` (``kernels = "fast"``) under bf16 autocast with the math kernel
    excluded, for contiguous and channels_last inputs: "ok" or the error's first line, per layout and backend set.
    """
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    block, grid = vavae_attention()
    block.cuda().kernels = "fast"
    channels = block.q.in_channels
    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    sets = {"fused": fused, "flash": fused[:1], "efficient": fused[1:2], "cudnn": fused[2:]}
    out = {"shape": f"({batch}, {channels}, {grid}, {grid})"}
    for layout, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
        for name, backends in sets.items():
            x = torch.randn(batch, channels, grid, grid, device="cuda").contiguous(memory_format=fmt)
            x.requires_grad_(True)
            try:
                with sdpa_kernel(backends), torch.autocast("cuda", dtype=torch.bfloat16):
                    block(x).float().square().mean().backward()
                torch.cuda.synchronize()
                out[f"{layout}/{name}"] = "ok"
            except RuntimeError as e:  # the measurement itself: no kernel of this set takes these inputs
                out[f"{layout}/{name}"] = str(e).strip().splitlines()[0][:160]
    return out


def judge_sdpa(results: dict[str, str]) -> tuple[bool, list[str]]:
    """PASS when the fused set (flash, efficient, cuDNN; no math) runs for both layouts."""
    notes = [f"{k}: {v}" for k, v in results.items() if k.endswith("/fused") and v != "ok"]
    return not notes, notes


def cmd_sdpa(args: argparse.Namespace) -> BlockResult:
    """Block 4: fused scaled-dot-product attention reached by the VA-VAE attention block."""
    results = sdpa_check()
    ok, notes = judge_sdpa(results)
    return BlockResult(args.block, args.title, PASS if ok else FAIL, elapsed(args.start), results, notes)


# ---------------------------------------------------------------- host synchronisations (block 5)


def sync_site(frames: list[traceback.FrameSummary]) -> str:
    """Where a synchronisation comes from: the innermost frame in the package ``aetune/`` (else the innermost one
    outside ``warnings`` and this file), with the innermost frame as ``via`` when it differs."""
    frames = [f for f in frames if not f.filename.endswith(("warnings.py", Path(__file__).name))]
    if not frames:
        return "?"

    def short(f: traceback.FrameSummary) -> str:
        path = Path(f.filename).resolve()
        shown = path.relative_to(REPO) if path.is_relative_to(REPO) else Path(*path.parts[-2:])
        return f"{shown}:{f.lineno}"

    inner = frames[-1]
    ours = next((f for f in reversed(frames) if Path(f.filename).resolve().is_relative_to(REPO / "aetune")), None)
    if ours is None or ours is inner:
        return short(inner)
    return f"{short(ours)} via {short(inner)}"


class SyncCounter:
    """Counts ``set_sync_debug_mode("warn")`` warnings per training batch and where they come from."""

    def __init__(self) -> None:
        self.per_batch: list[int] = []
        self.sites: collections.Counter[str] = collections.Counter()

    def _hook(self, message: Any, category: Any, filename: str, lineno: int, *rest: Any) -> None:
        if SYNC_MESSAGE in str(message):
            self.per_batch[-1] += 1
            self.sites[sync_site(traceback.extract_stack())] += 1

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Count the synchronisations of the enclosed code as one batch."""
        import torch

        self.per_batch.append(0)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = self._hook  # restored by catch_warnings
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode(0)


def count_syncs(step4_argv: list[str], skip: int) -> tuple[int, SyncCounter]:
    """Run step 4 in this process with ``AutoencoderModule.training_step`` wrapped by a ``SyncCounter``
    (batches from ``skip`` on: the first ones build kernels and caches); returns (exit code, counter)."""
    sys.path.insert(0, str(REPO))
    import step4_train
    from aetune.cli import run_main
    from aetune.train.module import AutoencoderModule

    counter = SyncCounter()
    real = AutoencoderModule.training_step

    def training_step(module: AutoencoderModule, batch: Any, batch_idx: int) -> Any:
        if module.batches_seen < skip:
            return real(module, batch, batch_idx)
        with counter.batch():
            return real(module, batch, batch_idx)

    with mock.patch.object(AutoencoderModule, "training_step", training_step):
        rc = run_main(step4_train.main, step4_train.parse_args(step4_argv))
    return rc, counter


def cmd_syncs(args: argparse.Namespace) -> BlockResult:
    """Block 5: host synchronisations per training batch of a VA-VAE stage-2 run (GAN on)."""
    argv = args.step4_args[1:] if args.step4_args[:1] == ["--"] else args.step4_args
    rc, counter = count_syncs(argv, args.skip)
    per = counter.per_batch
    numbers: dict[str, Any] = {"rc": rc, "per_batch": per, "mean": sum(per) / len(per) if per else None}
    numbers["top_sites"] = [f"{n} x {site}" for site, n in counter.sites.most_common(args.top)]
    notes = [] if rc == 0 else [f"step 4 exit code {rc}"]
    if not per:
        notes.append(f"no batch measured (fewer than {args.skip + 1} batches ran)")
    return BlockResult(args.block, args.title, PASS if not notes else FAIL, elapsed(args.start), numbers, notes)


# ---------------------------------------------------------------- throughput and memory (blocks 6, 7)


def parse_bench(text: str) -> dict[str, dict[str, float]]:
    """``aetune.tools.bench`` output -> {phase: {images_per_s, median_ms, peak_mib}} (phases it timed)."""
    rows = {}
    for line in text.splitlines():
        m = BENCH_ROW.match(line)
        if m:
            rows[m["phase"]] = {"images_per_s": float(m["ips"]), "median_ms": float(m["ms"]), "peak_mib": int(m["mib"])}
    return rows


def cmd_bench(args: argparse.Namespace) -> BlockResult:
    """Block 6: images/s and peak memory of one bench configuration (PASS: exit 0 and a whole-step row)."""
    text = Path(args.log).read_text(errors="replace") if Path(args.log).is_file() else ""
    rows = parse_bench(text)
    notes = [] if args.rc == 0 else [f"exit code {args.rc}: {log_problem(text) or 'see the log'}"]
    if "whole step" not in rows:
        notes.append("no 'whole step' row in the bench output")
    numbers: dict[str, Any] = {"rc": args.rc, **rows}
    return BlockResult(args.block, args.title, PASS if not notes else FAIL, elapsed(args.start), numbers, notes)


def judge_probe(rows: list[dict[str, Any]]) -> tuple[bool, dict[str, Any], list[str]]:
    """The kl3d memory probe's rows: PASS when every row is ``ok`` or ``oom`` (a measurement) and the
    activation-checkpointing row, the preset's setting, fits (``ok``)."""
    numbers, notes = {}, []
    for r in rows:
        key = f"checkpointing_{'on' if r.get('checkpointing') else 'off'}"
        numbers[key] = {k: r.get(k) for k in ("status", "max_allocated", "max_reserved", "step_s", "max_batch")}
        if r.get("status") not in ("ok", "oom"):
            notes.append(f"{key}: {r.get('status')} {r.get('detail', '')}".strip())
    if not rows:
        notes.append("the probe wrote no rows")
    elif numbers.get("checkpointing_on", {}).get("status") != "ok":
        notes.append("the preset's setting (checkpointing on) did not fit or did not run")
    return not notes, numbers, notes


def cmd_probe(args: argparse.Namespace) -> BlockResult:
    """Block 7: the kl3d memory probe at 256 x 256 x 64 with AMP, from its ``--json`` rows."""
    path = Path(args.json)
    rows = json.loads(path.read_text()) if path.is_file() else []
    ok, numbers, notes = judge_probe(rows)
    if args.rc != 0:
        ok, notes = False, [*notes, f"exit code {args.rc}"]
    return BlockResult(args.block, args.title, PASS if ok else FAIL, elapsed(args.start), numbers, notes)


# ---------------------------------------------------------------- plain results, environment, report


def cmd_record(args: argparse.Namespace) -> BlockResult:
    """Any block judged by its exit code alone (a skipped block: ``--rc`` non-zero and a ``--note``)."""
    status = PASS if args.rc == 0 else FAIL
    return BlockResult(args.block, args.title, status, elapsed(args.start), {"rc": args.rc}, list(args.note))


def missing_modules(names: tuple[str, ...] = REQUIRED_MODULES) -> list[str]:
    """The modules of ``names`` this interpreter cannot import (looked up, not imported)."""
    return [n for n in names if importlib.util.find_spec(n) is None]


def cmd_env(args: argparse.Namespace) -> BlockResult:
    """Block 0: the GPU, torch and CUDA versions the check ran with; FAIL when a module the blocks need is missing."""
    missing = missing_modules()
    if "pytorch_lightning" in missing:
        return BlockResult(args.block, args.title, FAIL, elapsed(args.start), {"missing": missing}, [])
    import pytorch_lightning as pl
    import torch

    props = torch.cuda.get_device_properties(0)
    numbers = {
        "gpu": props.name,
        "capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "lightning": pl.__version__,
        "bf16_supported": torch.cuda.is_bf16_supported(),
        "missing": missing,
    }
    notes = [f"missing modules {', '.join(missing)}: carry them as wheels (docs/performance.md)"] if missing else []
    return BlockResult(args.block, args.title, FAIL if missing else PASS, elapsed(args.start), numbers, notes)


def format_number(value: Any) -> str:
    """Compact text of one measured value for the report line."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={format_number(v)}" for k, v in value.items()) + "}"
    return str(value)


def aggregate(results: list[BlockResult], expected: list[str], total_s: float) -> tuple[str, dict[str, Any], bool]:
    """The report: one PASS/FAIL line per block with its seconds and numbers, notes indented below, and a
    missing expected block as a FAIL. Returns (report text, report JSON, whether everything passed)."""
    by_name = {r.name: r for r in results}
    for name in expected:
        if name not in by_name:
            by_name[name] = BlockResult(name, "(no result)", FAIL, 0.0, {}, ["never reported: crashed or killed"])
    ordered = sorted(by_name.values(), key=lambda r: r.name)
    failed = [r.name for r in ordered if r.status != PASS]
    lines = [f"aetune GPU check: {len(ordered) - len(failed)} of {len(ordered)} blocks passed, {total_s:.0f} s"]
    for r in ordered:
        nums = "  ".join(f"{k}={format_number(v)}" for k, v in r.numbers.items())
        lines.append(f"{r.status}  {r.name}  ({r.seconds:.1f} s)  {r.title}")
        lines += [f"      {nums}"] if nums else []
        lines += [f"      note: {n}" for n in r.notes]
    lines.append(f"RESULT: {'PASS' if not failed else 'FAIL: ' + ', '.join(failed)}")
    data = {
        "passed": not failed,
        "failed": failed,
        "total_s": round(total_s, 1),
        "blocks": [asdict(r) for r in ordered],
    }
    return "\n".join(lines) + "\n", data, not failed


def cmd_report(args: argparse.Namespace) -> int:
    """Write ``report.txt`` and ``report.json`` of the blocks under ``--out`` into ``--to`` (default ``--out``),
    print the text; 0 when all passed, else 1."""
    to = Path(args.to or args.out)
    text, data, ok = aggregate(read_blocks(Path(args.out)), args.expect, elapsed(args.start))
    to.mkdir(parents=True, exist_ok=True)
    (to / "report.txt").write_text(text)
    (to / "report.json").write_text(json.dumps(data, indent=2, default=str))
    print(text, end="")
    return 0 if ok else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def block(name: str, help_text: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help_text)
        s.add_argument("--out", required=True, help="folder for blocks/<block>.json")
        s.add_argument("--block", required=True, help="result name, e.g. 1_vavae_bf16_stage1")
        s.add_argument("--title", default="", help="what the block checks, in words")
        s.add_argument("--start", type=float, help="time.time() when the block started")
        s.add_argument("--rc", type=int, default=0, help="exit code of the block's command")
        return s

    s = block("train", "judge one step-4 stage run")
    s.add_argument("--ckpt", required=True)
    s.add_argument("--log")
    s.add_argument("--expect_batches", type=int, required=True)
    s.add_argument("--precision", required=True)
    s.add_argument("--require_finite", action="store_true", help="fail on any skipped (non-finite) batch")
    s = block("resume", "compare a stopped-and-resumed run with an uninterrupted one")
    s.add_argument("--reference", required=True)
    s.add_argument("--resumed", required=True)
    s.add_argument("--stopped", help="last.ckpt saved at the stop (for the relative difference)")
    block("sdpa", "fused attention kernels for the VA-VAE attention block (CUDA)")
    s = block("syncs", "host synchronisations per training batch (CUDA); step-4 arguments after --")
    s.add_argument("--skip", type=int, default=2, help="batches not counted (warm-up)")
    s.add_argument("--top", type=int, default=8, help="source lines listed")
    s.add_argument("step4_args", nargs=argparse.REMAINDER)
    s = block("bench", "parse one aetune.tools.bench run")
    s.add_argument("--log", required=True)
    s = block("probe", "judge the memory probe's JSON rows")
    s.add_argument("--json", required=True)
    s = block("record", "a block judged by its exit code")
    s.add_argument("--note", action="append", default=[])
    block("env", "GPU and versions")
    s = sub.add_parser("report", help="write report.txt / report.json; exit 1 on any failure")
    s.add_argument("--out", required=True, help="folder whose blocks/ holds the results")
    s.add_argument("--to", help="folder for report.txt and report.json (default: --out)")
    s.add_argument("--start", type=float, help="time.time() when the check started")
    s.add_argument("--expect", nargs="*", default=[], help="block names that must have reported")
    return p.parse_args(argv)


COMMANDS = {
    "train": cmd_train,
    "resume": cmd_resume,
    "sdpa": cmd_sdpa,
    "syncs": cmd_syncs,
    "bench": cmd_bench,
    "probe": cmd_probe,
    "record": cmd_record,
    "env": cmd_env,
}


def main(args: argparse.Namespace) -> int:
    """Run one subcommand; a block's result is written even when its own code fails (as a FAIL)."""
    if args.command == "report":
        return cmd_report(args)
    try:
        result = COMMANDS[args.command](args)
    except Exception as e:  # a bug or a broken run must still leave its line in the report
        note = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
        result = BlockResult(
            args.block, args.title, FAIL, elapsed(args.start), {}, [f"the check itself failed: {note}"]
        )
        traceback.print_exc()
    write_block(Path(args.out), result)
    print(f"{result.status}  {result.name}  ({result.seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
