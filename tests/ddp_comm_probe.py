"""Step 4 with a count of what each training batch all-reduces (rank 0 writes JSON lines to ``$AETUNE_COMM_LOG``).

Run as step 4 is run (``python tests/ddp_comm_probe.py --config ... --devices 2``): Lightning's launcher starts
the other rank by re-running this file, so the counting is in place on every rank. Counted per batch: bytes
through DDP's own reducer (a comm hook), bytes of every other all-reduce of more than one element (the module's
per-window gradient reduce; one-element stop decisions are left out), and the split backward's calls.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch.distributed as dist  # noqa: E402
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook  # noqa: E402

import aetune.families.vavae.recipe as kl_recipes  # noqa: E402
import step4_train  # noqa: E402
from aetune.train.module import AutoencoderModule  # noqa: E402

COUNT = {"reducer": 0, "direct": 0, "split": 0}
RECORDS: list[dict[str, Any]] = []
real_all_reduce, real_split = dist.all_reduce, kl_recipes.split_backward


def counting_all_reduce(tensor: Any, *args: Any, **kwargs: Any) -> Any:
    if tensor.numel() > 1:
        COUNT["direct"] += tensor.numel() * tensor.element_size()
    return real_all_reduce(tensor, *args, **kwargs)


def counting_hook(state, bucket):  # noqa: ANN001, ANN201 - DDP checks a hook's annotations: give none
    COUNT["reducer"] += bucket.buffer().numel() * bucket.buffer().element_size()
    return allreduce_hook(state, bucket)


def counting_split(*args: Any, **kwargs: Any) -> Any:
    COUNT["split"] += 1
    return real_split(*args, **kwargs)


real_step, real_start, real_end = (
    AutoencoderModule.training_step,
    AutoencoderModule.on_train_start,
    AutoencoderModule.on_train_end,
)


def training_step(self: AutoencoderModule, batch: Any, batch_idx: int) -> None:
    before = dict(COUNT)
    real_step(self, batch, batch_idx)
    record = {k: COUNT[k] - before[k] for k in COUNT} | {"batch": self.batches_seen, "closed": self.window_batches == 0}
    record["params"] = {p: sum(q.numel() for q in self.recipe.trainable(p)) for p in self.recipe.phases}
    RECORDS.append(record)


def on_train_start(self: AutoencoderModule) -> None:
    self.trainer.model.register_comm_hook(None, counting_hook)
    real_start(self)


def on_train_end(self: AutoencoderModule) -> None:
    real_end(self)
    if self.global_rank == 0:
        with open(os.environ["AETUNE_COMM_LOG"], "a", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in RECORDS)


dist.all_reduce = counting_all_reduce
kl_recipes.split_backward = counting_split
AutoencoderModule.training_step = training_step
AutoencoderModule.on_train_start = on_train_start
AutoencoderModule.on_train_end = on_train_end

if __name__ == "__main__":
    raise SystemExit(step4_train.run_script(step4_train.main, step4_train.parse_args))
