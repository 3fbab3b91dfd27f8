"""Which devices and which numeric precision a training run uses, decided once before the Trainer exists.

Precision comes from ``--precision`` / ``train.precision``, else from step 1's advice in
``environment.json``, else from the GPUs themselves (same rule as step 1, ``aetune.setup.env.advise_precision``):
T4 (sm_75) fp16 mixed with loss scaling, never bf16 there; compute capability >= 8.0 bf16 mixed; older
GPUs and CPU fp32. A GPU this torch has no kernels for (P100 on current Kaggle builds) stops the run here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.strategies import DDPStrategy

from aetune.errors import AetuneError
from aetune.io import read_json
from aetune.setup.env import ENVIRONMENT_FILE, GpuFact, advise_precision, assert_gpus_usable, gpu_facts

log = logging.getLogger(__name__)

LIGHTNING_PRECISION = {"32": "32-true", "32-true": "32-true", "16-mixed": "16-mixed", "bf16-mixed": "bf16-mixed"}
"""Accepted spellings -> Lightning's precision names."""
KAGGLE_T4_DEVICES = "0,1"
"""``--kaggle_t4``: Kaggle's "GPU T4 x2" accelerator."""


@dataclass(frozen=True)
class DevicePlan:
    """Where and how a run computes.

    Attributes:
        accelerator: ``cpu`` or ``gpu``.
        devices: Lightning's ``devices`` (a list of GPU indices, or a count of CPU processes).
        world_size: number of processes (DDP when > 1).
        precision: Lightning precision (``32-true``, ``16-mixed``, ``bf16-mixed``).
        reason: why that precision, in words.
        num_nodes: machines (``--num_nodes``; torchrun / SLURM launch the processes on each).
        strategy: ``ddp`` (the only one that trains; see ``STRATEGIES``).
    """

    accelerator: str
    devices: list[int] | int
    world_size: int
    precision: str
    reason: str
    num_nodes: int = 1
    strategy: str = "ddp"


STRATEGIES = ("ddp", "fsdp")
"""What ``--strategy`` accepts; ``fsdp`` only to refuse it with the reason (``FSDP_REFUSAL``)."""
FSDP_REFUSAL = (
    "--strategy fsdp is not supported yet: the training step runs several backward passes per phase under manual "
    "optimisation, which Lightning's FSDP cannot wrap (Lightning issue 19685), and EMA and the fp16 scaler would "
    "need sharded versions; use --strategy ddp (the default), with --set model.gradient_checkpointing=true and a "
    "smaller --batch_size plus --global_batch_size when memory is short"
)


def training_strategy(plan: DevicePlan) -> Any:
    """Lightning's strategy for ``plan``: ``auto`` on one device, DDP on several.

    DDP's own gradient reducer is never used (the module blocks it in every backward and all-reduces each
    network once per accumulation window), so it needs no ``find_unused_parameters`` search.
    """
    if plan.world_size == 1:
        return "auto"
    return DDPStrategy(find_unused_parameters=False)


def configure_kernels(plan: DevicePlan) -> None:
    """On CUDA: ``cudnn.benchmark`` (the fastest convolution algorithm per input shape; a step's shapes are fixed)
    and, under mixed precision, TF32 for the float32 matmuls left outside autocast. fp32 runs keep float32
    matmuls (TF32 changes them by ~1e-3 relative, beyond the fidelity tests' tolerance); convolutions follow
    torch's default (``cudnn.allow_tf32``, on)."""
    if plan.accelerator != "gpu":
        return
    torch.backends.cudnn.benchmark = True
    if plan.precision != "32-true":
        torch.backends.cuda.matmul.allow_tf32 = True


def parse_devices(text: str | None, accelerator: str) -> list[int] | int:
    """``--devices "0,1"`` -> [0, 1] on GPU; ``"2"`` -> 2 processes on CPU; None -> [0] / 1.

    Raises:
        AetuneError: malformed text, or GPU indices that do not exist.
    """
    if accelerator == "cpu":
        if text is None:
            return 1
        if not text.strip().isdigit() or int(text) < 1:
            raise AetuneError(f"--devices {text}: on CPU give a number of processes, e.g. --devices 2")
        return int(text)
    if text is None:
        return [0]
    try:
        ids = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise AetuneError(f'--devices {text}: give GPU indices separated by commas, e.g. --devices "0,1"') from None
    count = torch.cuda.device_count()
    missing = [i for i in ids if not 0 <= i < count]
    if not ids or missing or len(set(ids)) != len(ids):
        raise AetuneError(f"--devices {text}: this machine has {count} GPU(s) (indices 0..{count - 1})")
    return ids


def resolve_accelerator(accelerator: str) -> str:
    """``auto`` -> ``gpu`` when CUDA is usable, else ``cpu``; ``gpu`` without CUDA is an error."""
    if accelerator not in ("auto", "cpu", "gpu"):
        raise AetuneError(f"--accelerator must be auto, cpu or gpu, got '{accelerator}'")
    if accelerator == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise AetuneError(
            "--accelerator gpu but torch sees no CUDA GPU: enable a GPU accelerator or use --accelerator cpu"
        )
    return accelerator


def step1_advice(work_dir: Path) -> tuple[str, str] | None:
    """Step 1's precision advice from ``environment.json``, if step 1 ran here."""
    path = Path(work_dir) / ENVIRONMENT_FILE
    if not path.is_file():
        return None
    advice = read_json(path).get("precision") or {}
    if "advice" not in advice:
        return None
    return str(advice["advice"]), f"step 1 advice: {advice.get('reason', '')}"


def check_precision(precision: str, accelerator: str, gpus: list[GpuFact]) -> str:
    """Normalise ``precision`` and refuse combinations that cannot work.

    Raises:
        AetuneError: unknown name; mixed precision on CPU; bf16 on a GPU below compute 8.0 (T4 emulates it).
    """
    if precision not in LIGHTNING_PRECISION:
        raise AetuneError(f"--precision {precision}: use one of 32, 16-mixed, bf16-mixed")
    name = LIGHTNING_PRECISION[precision]
    if accelerator == "cpu" and name != "32-true":
        raise AetuneError(f"--precision {precision} needs a CUDA GPU: use --precision 32 on CPU")
    old = [g for g in gpus if g.capability < (8, 0)]
    if name == "bf16-mixed" and old:
        raise AetuneError(
            f"--precision bf16-mixed on {old[0].name} (compute {old[0].capability[0]}.{old[0].capability[1]}): "
            "no native bf16 before compute 8.0; use --precision 16-mixed (T4) or 32"
        )
    return name


def plan_devices(
    accelerator: str,
    devices: str | None,
    precision: str | None,
    work_dir: Path,
    num_nodes: int = 1,
    strategy: str = "ddp",
) -> DevicePlan:
    """Decide accelerator, devices and precision (see the module docstring).

    Raises:
        AetuneError: unusable GPU (with the ways out), bad ``--devices`` or ``--precision``.
    """
    accelerator = resolve_accelerator(accelerator)
    chosen = parse_devices(devices, accelerator)
    gpus: list[GpuFact] = []
    if accelerator == "gpu":
        assert isinstance(chosen, list)
        gpus = [g for g in gpu_facts() if g.index in chosen]
        assert_gpus_usable(gpus)
    if num_nodes < 1:
        raise AetuneError(f"--num_nodes {num_nodes}: give 1 or more machines")
    if strategy not in STRATEGIES:
        raise AetuneError(f"--strategy {strategy}: use one of {', '.join(STRATEGIES)}")
    if strategy == "fsdp":
        raise AetuneError(FSDP_REFUSAL)
    world = (len(chosen) if isinstance(chosen, list) else chosen) * num_nodes
    if precision is not None:
        name, reason = check_precision(precision, accelerator, gpus), "asked for (--precision / train.precision)"
    elif accelerator == "cpu":
        name, reason = "32-true", "CPU: fp32"
    else:
        live, reason = advise_precision(gpus)
        recorded = step1_advice(work_dir)
        if recorded is not None and recorded[0] == live:
            reason = recorded[1]
        elif recorded is not None:
            log.warning("environment.json advises %s (written on other GPUs?); using %s for these", recorded[0], live)
        name = check_precision(live, accelerator, gpus)
    return DevicePlan(accelerator, chosen, world, name, reason, num_nodes, strategy)
