"""Ranks started all at once (torchrun, SLURM): rank 0's file work before the others read the work directory.

Lightning's own launcher starts the other ranks when ``fit`` begins, after rank 0 has imported
``--resume_from`` and prepared ``--data_root``. torchrun and SLURM start every rank at the same time, so the
others would read ``data/labels.json`` or the imported ``checkpoints/`` before rank 0 wrote them. For such
launches the process group is made here, before the Trainer, with the backend Lightning would pick (the
Trainer then finds it made and keeps it), and the other ranks wait at a barrier until rank 0's work is done.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator

import torch.distributed as dist
from lightning_fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment, TorchElasticEnvironment

FILE_WORK_TIMEOUT = datetime.timedelta(hours=2)
"""How long the other ranks wait for rank 0's file work (copying a previous session, preparing a dataset)."""
PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=30)
"""The collectives' timeout: Lightning's default (``default_pg_timeout``)."""


def external_launcher() -> ClusterEnvironment | None:
    """torchrun's or SLURM's environment when either started this process among several; else None."""
    for env_class in (TorchElasticEnvironment, SLURMEnvironment):
        if env_class.detect():
            env = env_class()
            if env.world_size() > 1:
                return env
    return None


@contextlib.contextmanager
def rank_zero_first(accelerator: str) -> Iterator[None]:
    """Run the block on rank 0 before the other ranks of an external launch run it (no-op otherwise).

    Args:
        accelerator: ``gpu`` or ``cpu`` (resolved): NCCL or gloo for the process group, as Lightning chooses.
    """
    env = external_launcher()
    if env is None:
        yield
        return
    if not dist.is_initialized():
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = env.main_address, str(env.main_port)
        dist.init_process_group(
            "nccl" if accelerator == "gpu" else "gloo",
            rank=env.global_rank(),
            world_size=env.world_size(),
            timeout=PROCESS_GROUP_TIMEOUT,
        )
    # A gloo group: its barrier needs no GPU (NCCL's would guess a device per rank before Lightning sets one).
    group = dist.new_group(backend="gloo", timeout=FILE_WORK_TIMEOUT)
    first = env.global_rank() == 0
    if not first:
        dist.barrier(group=group)
    try:
        yield
    finally:
        if first:  # also when rank 0 failed: the others then fail on the files themselves, with its message
            dist.barrier(group=group)
