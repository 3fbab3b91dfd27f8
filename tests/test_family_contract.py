"""Every registered family passes the same contract on CPU with its tiny config (``register_schema(tiny=...)``).

Build, one training batch in each phase, a checkpoint round trip with resume equality (1e-6), the final model
file and its reload, and step 5's report. A family that is registered is tested: nothing here names one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from aetune.config import _merge, family_schema, load_config
from aetune.models.checkpoint import load_autoencoder_checkpoint
from aetune.recipes import list_recipes
from aetune.train.module import AutoencoderModule
from aetune.train.runner import TrainRequest, run_training
from tests.family_fixtures import TINY_DATA

ROOT = Path(__file__).resolve().parent.parent
RUN = {
    "data": {"image_size": 32, "num_workers": 0},
    "train": {
        "batch_size": 2,
        "learning_rate": 1.0e-3,
        "precision": "32",
        "val_every_n_steps": 4,
        "checkpoint_every_n_batches": 2,
        "grad_norm_every": 1,
        "stages": {"1": {"epochs": 1, "max_steps": 4}},
    },
}
"""What every contract run shares on top of the family's tiny config: 4 batches, checkpoints every 2."""


def contract_config(tmp: Path, family: str):
    schema = family_schema(family)
    data = _merge(_merge({"model": {"family": family}}, schema.tiny, frozenset()), RUN, frozenset())
    path = tmp / f"{family}_tiny.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path, load_config(str(path))


def train(work: Path, cfg, stop_after: int | None = None):
    return run_training(
        TrainRequest(
            work, cfg, list(cfg.train.stages), accelerator="cpu", stop_after_batches=stop_after, progress_bar=False
        )
    )


@pytest.fixture(scope="module", params=list_recipes())
def contract_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """One uninterrupted run and one stopped after 2 batches then resumed, per family."""
    family = request.param
    tmp = tmp_path_factory.mktemp(f"contract_{family}")
    kind = family_schema(family).data_kind
    preset, cfg = contract_config(tmp, family)
    whole, split = TINY_DATA[kind](tmp / "whole"), TINY_DATA[kind](tmp / "split")
    assert train(whole, cfg).status == "done"
    first = train(split, cfg, stop_after=2)
    assert (first.status, first.batches) == ("session_limit", 2)
    assert train(split, cfg).status == "done"
    return family, preset, cfg, whole, split


def last(work: Path) -> dict:
    return torch.load(work / "checkpoints/stage1/last.ckpt", weights_only=True)


def test_every_trainable_parameter_has_one_optimizer_and_frozen_ones_none(contract_run) -> None:
    _, _, cfg, _, _ = contract_run
    module = AutoencoderModule(cfg, "1", total_batches=4, learning_rate=1e-4, meta={})
    opts = module.configure_optimizers()
    owned = [{id(p) for g in o.param_groups for p in g["params"]} for o in opts]
    trainable = {id(p) for p in module.parameters() if p.requires_grad}
    assert set.union(*owned) == trainable and sum(map(len, owned)) == len(trainable)
    for prefix in module.frozen_prefixes:
        frozen = {id(p) for p in getattr(module, prefix.rstrip(".")).parameters()}
        assert not frozen & trainable


def test_each_phase_trains_and_logs_grad_norms(contract_run) -> None:
    _, _, cfg, whole, _ = contract_run
    ckpt = last(whole)
    phases = len(ckpt["optimizer_states"])
    assert ckpt["aetune"]["batches_seen"] == 4 and ckpt["global_step"] == 4 * phases  # every phase stepped
    header = (whole / "checkpoints/stage1/metrics.csv").read_text().splitlines()[0].split(",")
    assert "train/g_total" in header and any(h.startswith("grad_norm/") for h in header)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_resume_is_exact(contract_run) -> None:
    _, _, _, whole, split = contract_run
    a, b = last(whole), last(split)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=0, atol=1e-6, msg=k)


def test_final_model_reloads_and_reconstructs(contract_run) -> None:
    family, _, _, whole, _ = contract_run
    state = json.loads((whole / "checkpoints/run_state.json").read_text())
    model, meta = load_autoencoder_checkpoint(whole / "checkpoints" / state["final_model"], family=family)
    assert meta["family"] == family and meta["kind"] == "final"
    ckpt = last(whole)
    prefix = "ema.module." if meta.get("ema") else "autoencoder."
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ckpt["state_dict"][prefix + k], rtol=0, atol=0, msg=k)


def test_step5_all_writes_what_applies(contract_run) -> None:
    """``step5 --all`` on every family: metrics, the DiT encoder export, and the latent dataset where the data
    kind has one (images, volumes, video clips)."""
    family, _, _, whole, _ = contract_run
    out = subprocess.run(
        [sys.executable, str(ROOT / "step5_validate_export.py"), "--output_dir", str(whole), "--all",
         "--no_progress", "--batch_size", "2"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((whole / "results/metrics.json").read_text())
    assert "psnr" in json.dumps(metrics)
    assert (whole / f"results/{family}_encoder_for_dit.pt").is_file()
    index = json.loads((whole / "results/latents/latents_index.json").read_text())
    assert index["num_images"] > 0 and (whole / "results/latents/latents_stats.pt").is_file()
