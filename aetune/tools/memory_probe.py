"""Measure the memory and time of one full training step for a grid of options, one subprocess per configuration.

    python -m aetune.tools.memory_probe --family kl3d --resolution 256,256,64 --batch_size 1 --channels 16,32,64
    python -m aetune.tools.memory_probe --family kl3d --resolution 96,96,64 --amp on,off --checkpointing on,off \\
        --perceptual off,on --disc 2x16,3x32
    python -m aetune.tools.memory_probe --family kl --resolution 256 --batch_size 4

A step is what step 4 does for one batch: the generator phase (forward, objective, backward, optimizer step),
then the discriminator phase when the recipe has one (the adversarial part switched on). It runs three times
(the first warms up allocators and kernels); the faster of the other two is the step time. On a GPU the table
gives the peak of ``max_memory_allocated`` and ``max_memory_reserved`` and the largest batch that fits the card
with 10 % headroom, extrapolated linearly from the memory that does not depend on the batch (weights and
optimizer states, measured after the step) and the per-item rest. Without a GPU it gives the peak resident
memory of the process over its resident memory once the networks and the batch are built: not GPU memory, but
the ranking of the options roughly holds, since activations dominate both. A configuration that runs out of
memory is a row, not a crash. The perceptual network is built with a random trunk (the same memory as the
pretrained one, no weights needed).
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


def _discs(text: str) -> list[tuple[int, int] | None]:
    out: list[tuple[int, int] | None] = []
    for part in text.split(","):
        if part == "preset":
            out.append(None)
            continue
        try:
            layers, width = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise AetuneError(f"--disc takes LAYERSxWIDTH items (e.g. 2x16,3x32) or 'preset', got '{part}'") from None
        out.append((layers, width))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", required=True, help="registered family (its default preset is the base)")
    p.add_argument("--config", help="preset name or YAML instead of the family's default preset")
    p.add_argument("--resolution", required=True, help="input size: S (images, S x S) or D,H,W (volumes)")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--channels", help="model.args.channels (kl3d), e.g. 16,32,64")
    p.add_argument("--amp", default="on", help="mixed precision: on, off or on,off (bf16 where supported, else fp16)")
    p.add_argument("--checkpointing", default="on,off", help="activation checkpointing: on, off or on,off")
    p.add_argument("--perceptual", default="off", help="perceptual loss (kl3d): on, off or on,off")
    p.add_argument("--disc", default="preset", help="discriminator LAYERSxWIDTH list (kl3d), e.g. 2x16,3x32")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--timeout", type=float, default=900, help="seconds per configuration")
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # one configuration, run in a subprocess
    return p.parse_args(argv)


def grid(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every combination of the requested switches, as worker specifications."""
    sizes = _ints(args.resolution, "--resolution")
    if len(sizes) not in (1, 3):
        raise AetuneError(f"--resolution is S or D,H,W, got '{args.resolution}'")
    if args.batch_size < 1:
        raise AetuneError(f"--batch_size must be >= 1, got {args.batch_size}")
    channels = _ints(args.channels, "--channels") if args.channels else None
    combos = itertools.product(
        _switch(args.amp, "--amp"),
        _switch(args.checkpointing, "--checkpointing"),
        _switch(args.perceptual, "--perceptual"),
        _discs(args.disc),
    )
    return [
        {
            "family": args.family,
            "config": args.config,
            "sizes": sizes,
            "batch_size": args.batch_size,
            "channels": channels,
            "amp": amp,
            "checkpointing": ckpt,
            "perceptual": perc,
            "disc": disc,
            "set": list(args.set),
            "device": args.device,
        }  # fmt: skip
        for amp, ckpt, perc, disc in combos
    ]


def _overrides(spec: dict[str, Any], cfg: Any) -> list[str]:
    """``--set`` strings realising ``spec`` on top of the preset."""
    out = [f"model.gradient_checkpointing={str(spec['checkpointing']).lower()}"]
    if spec["channels"]:
        out.append(f"model.args.channels={spec['channels']}")
        levels = cfg.model.args.get("attention_levels")
        if levels is not None and len(levels) != len(spec["channels"]):
            # the seed's choice: attention at the last level only
            out.append(f"model.args.attention_levels={[False] * (len(spec['channels']) - 1) + [True]}")
    if "perceptual_weight" in {f for f in vars(cfg.loss)}:
        weight = (cfg.loss.perceptual_weight or 1.0) if spec["perceptual"] else 0.0
        out.append(f"loss.perceptual_weight={weight}")
        for key in ("perceptual_pretrained", "lpips_pretrained"):
            if key in vars(cfg.loss):
                out.append(f"loss.{key}=false")  # a random trunk: the same memory, no weights needed
    if spec["disc"] is not None:
        layers, width = spec["disc"]
        out += [f"discriminator.num_layers_d={layers}", f"discriminator.channels={width}"]
    if "disc_start" in vars(cfg.loss):
        out.append("loss.disc_start=0")  # measure the step with the discriminator phase on
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
    """Run one configuration in this process; returns its row (status ok or oom)."""
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
    recipe = get_recipe(spec["family"])(cfg, "1")
    nets = recipe.build()
    recipe.attach(nets)
    for net in (nets.autoencoder, nets.discriminator, *nets.frozen.values()):
        if net is not None:
            net.to(device)
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

    row: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if cuda else "cpu"}
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
        return {**row, "status": "oom", "detail": str(e).splitlines()[0][:160]}
    if cuda:
        total = torch.cuda.get_device_properties(device).total_memory
        peak, reserved = torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)
        fixed = torch.cuda.memory_allocated(device)  # weights + optimizer states, gradients freed
        per_item = max(1, (peak - fixed) / spec["batch_size"])
        row |= {"max_allocated": peak, "max_reserved": reserved, "card": total}
        row["max_batch"] = max(0, int((HEADROOM * total - fixed) // per_item))
    else:
        row["peak_rss_over_baseline"] = _status_bytes("VmHWM") - baseline
        row["peak_reset"] = reset
    return {**row, "status": "ok"}


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


def format_table(rows: list[tuple[dict[str, Any], dict[str, Any]]]) -> str:
    """Rows ranked by peak memory (fitting configurations first), with a header naming what was measured."""
    gpu = any("max_allocated" in r for _, r in rows)
    key = "max_allocated" if gpu else "peak_rss_over_baseline"
    ranked = sorted(rows, key=lambda sr: (sr[1]["status"] != "ok", sr[1].get(key, 0), sr[1].get("step_s", 0)))
    head = ["amp", "ckpt", "perceptual", "D", "status"]
    head += ["max alloc GiB", "max reserved GiB", "step s", "max batch"] if gpu else ["peak RSS GiB", "step s"]
    lines = []
    for spec, r in ranked:
        disc = "preset" if spec["disc"] is None else f"{spec['disc'][0]}x{spec['disc'][1]}"
        cells = ["on" if spec["amp"] else "off", "on" if spec["checkpointing"] else "off",
                 "on" if spec["perceptual"] else "off", disc, r["status"]]  # fmt: skip
        step = f"{r['step_s']:.2f}" if "step_s" in r else "-"
        if gpu:
            cells += [_gib(r.get("max_allocated")), _gib(r.get("max_reserved")), step, str(r.get("max_batch", "-"))]
        else:
            cells += [_gib(r.get("peak_rss_over_baseline")), step]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    spec0, r0 = rows[0]
    where = r0.get("device", "?")
    size = "x".join(map(str, spec0["sizes"]))
    note = (
        f"GPU {where} ({_gib(next((r['card'] for _, r in rows if 'card' in r), None))} GiB); max batch: 10 % headroom"
        if gpu
        else "CPU: peak resident memory over the built networks, NOT GPU memory (the ranking still holds roughly)"
    )
    out = [f"{spec0['family']} {size}, batch {spec0['batch_size']}: {note}", fmt.format(*head)]
    out += [fmt.format(*c) for c in lines]
    return "\n".join(out)


def main(args: argparse.Namespace) -> int:
    if args.worker:
        print(RESULT_PREFIX + json.dumps(measure(json.loads(args.worker))), flush=True)
        return 0
    specs = grid(args)
    rows = []
    for i, spec in enumerate(specs, 1):
        print(f"[{i}/{len(specs)}] amp={spec['amp']} checkpointing={spec['checkpointing']} "
              f"perceptual={spec['perceptual']} disc={spec['disc']}", file=sys.stderr, flush=True)  # fmt: skip
        rows.append((spec, run_one(spec, args.timeout)))
    print(format_table(rows))
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
