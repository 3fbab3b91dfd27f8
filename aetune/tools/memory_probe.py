"""Measure the memory and time of one full training step for a grid of options, one subprocess per configuration.

    python -m aetune.tools.memory_probe --family kl3d --resolution 128,128,64 256,256,64 --batch_size 1,2 \\
        --channels 16,32,64 32,64,64 --target_gb 24
    python -m aetune.tools.memory_probe --family kl3d --resolution 96,96,64 --amp on,off --checkpointing on,off \\
        --perceptual off,on --disc off,2x16,3x32
    python -m aetune.tools.memory_probe --family kl --resolution 256 --batch_size 4

Every axis takes a list (``--resolution`` and ``--channels`` space-separated, the others comma-separated) and
every combination is a row. A step is what step 4 does for one batch of the measured stage (``--stage``, default
the preset's last: the one with every term on): the generator phase (forward, objective, backward, optimizer
step), then the discriminator phase. The grid's switches are set on that stage, where they win over the preset's
own stage settings: ``--perceptual on`` builds and runs the perceptual network, ``--disc`` runs the adversarial
term and the D updates (``off``: the warm-up, generator only). Each row counts the forwards of the discriminator
and the frozen networks, so the ``phases`` column shows what was measured, not what was asked.

A step runs three times (the first warms up allocators and kernels); the faster of the other two is the step
time. On a GPU the table gives the peak of ``max_memory_allocated`` and ``max_memory_reserved`` and the largest
batch that fits the card (or ``--target_gb``) with 10 % headroom, extrapolated linearly from the memory that does
not depend on the batch (weights and optimizer states, measured after the step) and the per-item rest. Without a
GPU it gives the peak resident memory of the process over its resident memory once the networks and the batch
are built, and projects a GPU figure from it: the networks' weights + that peak (gradients, Adam states and
activations, at the step's precision) + ``CUDA_CONTEXT_GIB``; a projection, to confirm on the GPU. With
``--target_gb`` each row says whether it fits that card with 10 % headroom, and by how much. A configuration that
runs out of memory is a row, not a crash. The perceptual network is built with a random trunk (the same memory as
the pretrained one, no weights needed).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from typing import Any

from aetune.errors import AetuneError

HEADROOM = 0.9
"""Fraction of the card a recommended batch may use (10 % headroom for fragmentation and other processes)."""
RESULT_PREFIX = "MEMORY_PROBE_RESULT "
CUDA_CONTEXT_GIB = 0.5
"""What the CUDA context and cuDNN/cuBLAS handles take on a card before any tensor (a typical figure, not
measured here): added to the CPU projection."""


def _switch(text: str, flag: str) -> list[bool]:
    values = {"on": True, "off": False}
    out = []
    for part in text.split(","):
        if part.strip() not in values:
            raise AetuneError(f"{flag} takes on, off or on,off; got '{text}'")
        out.append(values[part.strip()])
    return out


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise AetuneError(f"{flag} takes comma-separated integers, got '{text}'") from None
    if not values or min(values) < 1:
        raise AetuneError(f"{flag} takes positive integers, got '{text}'")
    return values


def _discs(text: str) -> list[tuple[int, int] | str]:
    """``--disc`` items: ``"preset"`` (the preset's discriminator), ``"off"`` (generator only), or (layers, width)."""
    out: list[tuple[int, int] | str] = []
    for part in text.split(","):
        if part in ("preset", "off"):
            out.append(part)
            continue
        try:
            layers, width = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise AetuneError(
                f"--disc takes LAYERSxWIDTH items (e.g. 2x16,3x32), 'preset' or 'off', got '{part}'"
            ) from None
        out.append((layers, width))
    return out


def _sizes(items: list[str]) -> list[list[int]]:
    """``--resolution`` items: each S (images) or D,H,W (volumes)."""
    out = []
    for item in items:
        sizes = _ints(item, "--resolution")
        if len(sizes) not in (1, 3):
            raise AetuneError(f"--resolution items are S or D,H,W, got '{item}'")
        out.append(sizes)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", required=True, help="registered family (its default preset is the base)")
    p.add_argument("--config", help="preset name or YAML instead of the family's default preset")
    p.add_argument("--stage", help="the preset's stage to measure (default: its last); the switches below win over it")
    p.add_argument("--resolution", required=True, nargs="+", help="input sizes: S (images) or D,H,W (volumes), ...")
    p.add_argument("--batch_size", default="1", help="per-device batch sizes, e.g. 1,2")
    p.add_argument("--channels", nargs="+", help="model.args.channels lists (kl3d), e.g. 16,32,64 32,64,64")
    p.add_argument("--amp", default="on", help="mixed precision: on, off or on,off (bf16 where supported, else fp16)")
    p.add_argument("--checkpointing", default="on,off", help="activation checkpointing: on, off or on,off")
    p.add_argument("--perceptual", default="off", help="perceptual loss (kl3d): on, off or on,off")
    p.add_argument("--disc", default="preset", help="discriminator: preset, off, LAYERSxWIDTH; a list, e.g. off,2x16")
    p.add_argument("--target_gb", type=float, help="a card's memory in GiB: which rows fit it with 10 %% headroom")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--timeout", type=float, default=900, help="seconds per configuration")
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # one configuration, run in a subprocess
    return p.parse_args(argv)


def grid(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every combination of the requested lists, as worker specifications."""
    resolutions = _sizes(args.resolution)
    batches = _ints(args.batch_size, "--batch_size")
    channels: list[list[int] | None] = [_ints(c, "--channels") for c in args.channels] if args.channels else [None]
    if args.target_gb is not None and args.target_gb <= 0:
        raise AetuneError(f"--target_gb must be positive, got {args.target_gb}")
    combos = itertools.product(
        resolutions,
        batches,
        channels,
        _switch(args.amp, "--amp"),
        _switch(args.checkpointing, "--checkpointing"),
        _switch(args.perceptual, "--perceptual"),
        _discs(args.disc),
    )
    return [
        {
            "family": args.family,
            "config": args.config,
            "stage": args.stage,
            "sizes": sizes,
            "batch_size": batch,
            "channels": chans,
            "amp": amp,
            "checkpointing": ckpt,
            "perceptual": perc,
            "disc": disc,
            "set": list(args.set),
            "device": args.device,
        }  # fmt: skip
        for sizes, batch, chans, amp, ckpt, perc, disc in combos
    ]


def probe_stage(spec: dict[str, Any], cfg: Any) -> str:
    """The stage a row measures: ``--stage``, else the preset's last (the one with every term on)."""
    stage = spec["stage"] or list(cfg.train.stages)[-1]
    cfg.stage(stage)  # one error line naming the plan's stages
    return stage


def _overrides(spec: dict[str, Any], cfg: Any) -> list[str]:
    """``--set`` strings realising ``spec`` on top of the preset.

    The loss switches are set on the measured stage: a stage's own ``loss`` (a warm-up's ``disc_start: -1``, a
    stage with ``perceptual_weight: 0``) wins over the top-level section, so setting them there measured nothing.
    """
    stage = probe_stage(spec, cfg)
    loss, at = cfg.stage_loss(stage), f"train.stages.{stage}.loss"
    out = [f"model.gradient_checkpointing={str(spec['checkpointing']).lower()}"]
    if spec["channels"]:
        out.append(f"model.args.channels={spec['channels']}")
        levels = cfg.model.args.get("attention_levels")
        if levels is not None and len(levels) != len(spec["channels"]):
            # the seed's choice: attention at the last level only
            out.append(f"model.args.attention_levels={[False] * (len(spec['channels']) - 1) + [True]}")
    if hasattr(loss, "perceptual_weight"):
        weight = (loss.perceptual_weight or 1.0) if spec["perceptual"] else 0.0  # memory does not depend on it
        out.append(f"{at}.perceptual_weight={weight}")
        for key in ("perceptual_pretrained", "lpips_pretrained"):
            if hasattr(loss, key):
                out.append(f"{at}.{key}=false")  # a random trunk: the same memory, no weights needed
    if spec["disc"] not in ("preset", "off"):
        layers, width = spec["disc"]  # a list once the spec went through JSON to the worker
        out += [f"discriminator.num_layers_d={layers}", f"discriminator.channels={width}"]
    if hasattr(loss, "disc_start"):
        out.append(f"{at}.disc_start={-1 if spec['disc'] == 'off' else 0}")
    if hasattr(loss, "adversarial_weight") and spec["disc"] != "off" and loss.adversarial_weight == 0:
        out.append(f"{at}.adversarial_weight=0.01")  # a zero weight switches the phase off: measure it anyway
    return out + spec["set"]


def _fake_batch(kind: str, sizes: list[int], batch: int, channels: int) -> tuple[Any, Any]:
    """A loader batch of ``kind`` filled with noise (memory and time do not depend on the values)."""
    import torch

    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(batch, dtype=torch.long)
    if kind == "volume":
        if len(sizes) != 3:
            raise AetuneError(f"volumes need --resolution D,H,W, got {sizes}")
        return (torch.rand(batch, channels, *sizes, generator=g) * 2 - 1).half(), labels
    if kind == "image":
        if len(sizes) != 1:
            raise AetuneError(f"images need --resolution S, got {sizes}")
        return torch.randint(0, 256, (batch, 3, sizes[0], sizes[0]), dtype=torch.uint8, generator=g), labels
    raise AetuneError(f"the memory probe has no synthetic batch for data kind '{kind}' yet (image, volume)")


def _status_bytes(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process from ``/proc/self/status``, in bytes (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise AetuneError(f"/proc/self/status has no {field}: the CPU memory probe needs Linux")


def _reset_peak_rss() -> bool:
    """Reset this process's peak resident memory (``VmHWM``, Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration in this process; returns its row (status ok or oom).

    The row holds the measured figures (see the module docstring), ``forwards``: network -> forward calls over
    the three steps (the discriminator and each frozen network), and ``weights``: bytes of every network's
    parameters and buffers.
    """
    import torch

    from aetune.config import family_schema, load_config
    from aetune.recipes import StepContext, get_recipe

    preset = spec["config"] or family_schema(spec["family"]).default_preset
    base = load_config(preset)
    if base.model.family != spec["family"]:
        raise AetuneError(f"--config {preset} is a {base.model.family} preset, not {spec['family']}")
    cfg = load_config(preset, _overrides(spec, base))
    cuda = spec["device"] == "cuda" or (spec["device"] == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    dtype = None
    if spec["amp"]:
        dtype = torch.bfloat16 if (not cuda or torch.cuda.get_device_capability() >= (8, 0)) else torch.float16
    recipe = get_recipe(spec["family"])(cfg, probe_stage(spec, base))
    nets = recipe.build()
    recipe.attach(nets)
    counted = {"discriminator": nets.discriminator, **nets.frozen}
    forwards = dict.fromkeys((name for name, net in counted.items() if net is not None), 0)

    def counter(name: str) -> Any:
        def hook(*_: Any) -> None:
            forwards[name] += 1

        return hook

    networks = [net for net in (nets.autoencoder, *counted.values()) if net is not None]
    for net in networks:
        net.to(device)
    for name in forwards:
        counted[name].register_forward_hook(counter(name))  # type: ignore[union-attr]
    weights = sum(t.numel() * t.element_size() for net in networks for t in (*net.parameters(), *net.buffers()))
    opts = {ph: torch.optim.Adam(recipe.trainable(ph), lr=1e-5) for ph in recipe.phases}
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    batch = _fake_batch(recipe.data_kind, spec["sizes"], spec["batch_size"], nets.autoencoder.in_channels)
    x, target = recipe.inputs(tuple(t.to(device) for t in batch))
    step_batch = max(0, getattr(recipe.loss, "disc_start", 0))
    # imports, weights and the batch: what the steps add is measured over this (the peak is reset here, so
    # building the networks does not count; without the reset the lifetime peak is an upper bound)
    baseline, reset = _status_bytes("VmRSS"), _reset_peak_rss()

    def step() -> None:
        ctx = StepContext(step_batch, torch.Generator(device=device).manual_seed(0))
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            g = recipe.generator_step(x, target, ctx)
        recipe.backward("g", g, lambda loss: scaler.scale(loss).backward())  # the recipe may split it, as step 4
        scaler.step(opts["g"])
        opts["g"].zero_grad(set_to_none=True)
        if "d" in opts and recipe.phase_active("d", step_batch):
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                d = recipe.discriminator_step(x, target, g, ctx)
            recipe.backward("d", d, lambda loss: scaler.scale(loss).backward())
            scaler.step(opts["d"])
            opts["d"].zero_grad(set_to_none=True)
        scaler.update()

    row: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "weights": weights}
    try:
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        step()
        if cuda:
            torch.cuda.synchronize(device)
        times = []
        for _ in range(2):  # the faster of two: less noise from other processes
            t0 = time.perf_counter()
            step()
            if cuda:
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        row["step_s"] = min(times)
    except torch.OutOfMemoryError as e:
        return {**row, "status": "oom", "detail": str(e).splitlines()[0][:160], "forwards": forwards}
    if cuda:
        total = torch.cuda.get_device_properties(device).total_memory
        peak, reserved = torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)
        fixed = torch.cuda.memory_allocated(device)  # weights + optimizer states, gradients freed
        per_item = max(1.0, (peak - fixed) / spec["batch_size"])
        row |= {"max_allocated": peak, "max_reserved": reserved, "card": total, "fixed": fixed, "per_item": per_item}
        row["max_batch"] = max_batch(row, total)
    else:
        row["peak_rss_over_baseline"] = _status_bytes("VmHWM") - baseline
        row["peak_reset"] = reset
    return {**row, "status": "ok", "forwards": forwards}


def run_one(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """``measure(spec)`` in a fresh interpreter: an OOM kill or a crash there is a row here."""
    cmd = [sys.executable, "-m", "aetune.tools.memory_probe", "--family", spec["family"], "--resolution", "1",
           "--worker", json.dumps(spec)]  # fmt: skip
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout ({timeout:.0f} s)"}
    for line in out.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = (out.stderr.strip().splitlines() or ["no output"])[-1][:160]
    status = "killed (out of memory?)" if out.returncode in (-9, 137) else f"failed (exit {out.returncode})"
    return {"status": status, "detail": tail}


def _gib(v: float | None) -> str:
    return "-" if v is None else f"{v / 2**30:.2f}"


def max_batch(row: dict[str, Any], card: float) -> int:
    """The largest batch whose GPU memory stays within ``HEADROOM`` of ``card`` bytes (linear in the batch)."""
    return max(0, int((HEADROOM * card - row["fixed"]) // row["per_item"]))


def needed_bytes(row: dict[str, Any]) -> float | None:
    """What a row takes on a card: the measured ``max_reserved`` on a GPU; on CPU the projection (weights + peak
    resident memory over the built networks + ``CUDA_CONTEXT_GIB``); None for a row that did not run."""
    if row.get("status") != "ok":
        return None
    if "max_reserved" in row:
        return float(row["max_reserved"])
    return row["weights"] + row["peak_rss_over_baseline"] + CUDA_CONTEXT_GIB * 2**30


def phases(row: dict[str, Any]) -> str:
    """What the step ran, from the forward counts: G, plus D and each frozen network that was called."""
    ran = [name for name, n in row.get("forwards", {}).items() if n > 0]
    return "+".join(["G", *("D" if name == "discriminator" else name for name in ran)])


def fit_cell(row: dict[str, Any], target: float) -> str:
    """``yes (3.1 left)`` / ``no (+2.0)``: a row's fit on a ``target``-byte card with ``HEADROOM``, in GiB."""
    need = needed_bytes(row)
    if need is None:
        return "no" if row.get("status") == "oom" else "-"
    room = HEADROOM * target - need
    return f"yes ({room / 2**30:.1f} left)" if room >= 0 else f"no (+{-room / 2**30:.1f})"


def _label(spec: dict[str, Any]) -> list[str]:
    disc = spec["disc"] if isinstance(spec["disc"], str) else f"{spec['disc'][0]}x{spec['disc'][1]}"
    channels = ",".join(map(str, spec["channels"])) if spec["channels"] else "preset"
    return ["x".join(map(str, spec["sizes"])), str(spec["batch_size"]), channels, "on" if spec["amp"] else "off",
            "on" if spec["checkpointing"] else "off", "on" if spec["perceptual"] else "off", disc]  # fmt: skip


def format_table(rows: list[tuple[dict[str, Any], dict[str, Any]]], target_gb: float | None = None) -> str:
    """Rows ranked by memory (fitting configurations first), with a header naming what was measured.

    ``target_gb``: add a column saying whether each row fits a card of that many GiB with 10 % headroom (on a
    GPU from the measured reserved memory, on CPU from the projection) and, on a GPU, its largest batch there.
    """
    gpu = any("max_allocated" in r for _, r in rows)
    ranked = sorted(rows, key=lambda sr: (sr[1]["status"] != "ok", needed_bytes(sr[1]) or 0, sr[1].get("step_s", 0)))
    head = ["resolution", "batch", "channels", "amp", "ckpt", "perceptual", "D", "phases", "status"]
    head += ["max alloc GiB", "max reserved GiB"] if gpu else ["peak RSS GiB", "projected GiB"]
    head += ["step s", "max batch"] if gpu else ["step s"]
    target = target_gb * 2**30 if target_gb else None
    if target is not None:
        head += [f"fits {target_gb:g} GiB"] + (["max batch there"] if gpu else [])
    lines = []
    for spec, r in ranked:
        cells = [*_label(spec), phases(r) if r["status"] == "ok" else "-", r["status"]]
        step = f"{r['step_s']:.2f}" if "step_s" in r else "-"
        if gpu:
            cells += [_gib(r.get("max_allocated")), _gib(r.get("max_reserved")), step, str(r.get("max_batch", "-"))]
        else:
            cells += [_gib(r.get("peak_rss_over_baseline")), _gib(needed_bytes(r)), step]
        if target is not None:
            cells.append(fit_cell(r, target))
            if gpu:
                cells.append(str(max_batch(r, target)) if "per_item" in r else "-")
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    where = rows[0][1].get("device", "?")
    note = (
        f"GPU {where} ({_gib(next((r['card'] for _, r in rows if 'card' in r), None))} GiB); max batch: 10 % headroom"
        if gpu
        else "CPU: peak resident memory over the built networks, NOT GPU memory; projected GiB = weights + that "
        f"peak + {CUDA_CONTEXT_GIB} GiB CUDA context (a projection: confirm on the GPU)"
    )
    out = [f"{rows[0][0]['family']}: {note}", fmt.format(*head)]
    out += [fmt.format(*c) for c in lines]
    return "\n".join(out)


def advice(rows: list[tuple[dict[str, Any], dict[str, Any]]], target_gb: float) -> str:
    """One paragraph for a ``target_gb`` card: the rows that fit with 10 % headroom, the fastest of them first."""
    target = target_gb * 2**30
    fits = [(s, r) for s, r in rows if (need := needed_bytes(r)) is not None and need <= HEADROOM * target]
    source = "measured" if any("max_reserved" in r for _, r in rows) else "projected from CPU"
    usable = f"{HEADROOM * target_gb:.1f} GiB usable"
    if not fits:
        return f"target {target_gb:g} GiB ({usable}, {source}): no row fits; try checkpointing on, amp on, a smaller D"
    fits.sort(key=lambda sr: sr[1].get("step_s", 0))
    names = [", ".join(f"{h}={v}" for h, v in zip(("res", "batch", "channels", "amp", "ckpt", "perc", "D"),
                                                  _label(s), strict=True)) for s, _ in fits]  # fmt: skip
    lines = [f"target {target_gb:g} GiB ({usable}, {source}): {len(fits)} of {len(rows)} rows fit, fastest first:"]
    lines += [f"  {n}  ({(HEADROOM * target - (needed_bytes(r) or 0)) / 2**30:.1f} GiB left)" for n, (_, r) in
              zip(names, fits, strict=True)]  # fmt: skip
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    if args.worker:
        print(RESULT_PREFIX + json.dumps(measure(json.loads(args.worker))), flush=True)
        return 0
    specs = grid(args)
    rows = []
    for i, spec in enumerate(specs, 1):
        print(f"[{i}/{len(specs)}] {' '.join(_label(spec))}", file=sys.stderr, flush=True)
        rows.append((spec, run_one(spec, args.timeout)))
    print(format_table(rows, args.target_gb))
    if args.target_gb:
        print(advice(rows, args.target_gb))
    failed = [(s, r) for s, r in rows if r["status"] not in ("ok", "oom") and "detail" in r]
    for _, r in failed[:3]:
        print(f"note: {r['status']}: {r['detail']}", file=sys.stderr)
    if args.json:
        from aetune.io import atomic_write_json

        atomic_write_json(args.json, [{**s, **r} for s, r in rows])
    return 0


if __name__ == "__main__":
    from aetune.cli import run_main

    raise SystemExit(run_main(main, parse_args()))
