"""Disk budget: the projected files of a step-4 run, the full-size table, the fit check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aetune.config import load_config, schema_families
from aetune.setup.env import GIB
from aetune.setup.weights_registry import REGISTRY
from aetune.train import disk_budget as db

SIZE = db.ModelSize(autoencoder=1000, discriminator=100, trainable=600)


def test_file_sizes_follow_fp32_weights_and_adam_moments():
    assert SIZE.weights_bytes == 4 * 1100 + db.FILE_OVERHEAD
    assert SIZE.resume_bytes == SIZE.weights_bytes + 8 * (600 + 100)  # frozen numbers get no Adam state
    assert db.ModelSize(1000, 100).resume_bytes == SIZE.weights_bytes + 8 * 1100  # trainable None = all


def test_project_run_counts_every_file_at_the_peak():
    weights = [db.BudgetItem("weights a", 5000, exists=True), db.BudgetItem("weights b", 700)]
    budget = db.project_run(SIZE, ["1", "2", "3"], weights, cache_bytes=300)
    w, r = SIZE.weights_bytes, SIZE.resume_bytes
    per_stage = r + 2 * w  # last.ckpt + top-2 best
    assert budget.total == 3 * per_stage + w + r + 5000 + 700 + 300  # + final + a save in flight
    assert budget.needed == budget.total - 5000
    pruned = db.project_run(SIZE, ["1", "2", "3"], finished_stage_files=3)
    assert pruned.total == 2 * 3 * w + per_stage + w + r
    assert db.project_run(SIZE, []).total == 0
    assert db.project_run(SIZE, ["2"]).total == per_stage + w + r
    lines = budget.lines()
    assert len(lines) == len(budget.items) + 1 and lines[-4].endswith("weights a (on disk)")
    assert lines[-1].endswith(f"total, {db.gb(budget.needed)} still to be written")
    assert json.loads(json.dumps(budget.to_dict()))["needed_bytes"] == budget.needed


def test_check_fails_in_one_line_with_the_ways_out():
    budget = db.project_run(SIZE, ["1"], [db.BudgetItem("weights x", 10 * GIB)])
    budget.check(budget.needed, "/kaggle/working")
    assert budget.problem(budget.needed, "/w") is None
    with pytest.raises(db.DiskBudgetError) as err:
        budget.check(budget.needed - 1, "/kaggle/working")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"the run needs {db.gb(budget.needed)} more in /kaggle/working but ")
    assert "(largest: weights x 10.00 GB, " in msg
    assert "--models_dir /tmp" in msg and "--stages 1" in msg and "delete the checkpoints of finished stages" in msg


@pytest.mark.parametrize("family", [f for f in schema_families() if db.full_size(f)])
def test_full_size_table_matches_the_models(family):
    """The table step 1 uses without torch is what the models count on the meta device."""
    cfg = load_config(family)
    cfg.model.args, cfg.model.freeze_encoder_levels = {}, 0
    assert db._counted(cfg) == db.ModelSize(
        **{**vars(db.full_size(family)), "trainable": db.full_size(family).autoencoder}
    )


def test_vavae_table_matches_the_released_checkpoint():
    keys = json.loads((Path(__file__).parent / "fixtures" / "vavae_f16d32_keys.json").read_text())
    numel = {k: int(torch.tensor(s).prod()) if s else 1 for k, s in keys["keys"].items()}
    ae = sum(n for k, n in numel.items() if not k.startswith("loss."))
    disc = sum(n for k, n in numel.items() if k.startswith("loss.discriminator.") and "running" not in k
               and "num_batches" not in k)  # fmt: skip
    assert (ae, disc) == (db.full_size("vavae").autoencoder, db.full_size("vavae").discriminator)
    assert sum(n for k, n in numel.items() if k.startswith("encoder.")) == keys["encoder_params"] == 28_413_248


def test_model_size_counts_frozen_levels_and_options():
    cfg = load_config("vavae", ["model.freeze_encoder_levels=3", "model.args.ch=64"])
    size = db.model_size(cfg)
    assert size.trainable < size.autoencoder < db.full_size("vavae").autoencoder
    assert db.model_size(load_config("vavae")) == db._counted(load_config("vavae"))


def test_model_size_without_torch_uses_the_table(monkeypatch):
    monkeypatch.setattr(db.importlib.util, "find_spec", lambda name: None)
    assert db.model_size(load_config("vavae", ["model.freeze_encoder_levels=0"])) == db.full_size("vavae")
    with pytest.raises(db.AetuneError, match="cannot size the 'vavae' model with these options without torch"):
        db.model_size(load_config("vavae", ["model.args.ch=64"]))


def test_weight_items_from_the_registry(tmp_path):
    cfg = load_config("vavae")
    spec = next(s for s in REGISTRY if s.name == "lpips_vgg16")
    (tmp_path / spec.filename).write_bytes(b"x")
    items = {i.what: i for i in db.weight_items(cfg, tmp_path)}
    assert items["weights lpips_vgg16 (models/)"] == db.BudgetItem("weights lpips_vgg16 (models/)", spec.bytes, True)
    assert items["weights vavae (models/)"].bytes == int(2.15e9) and not items["weights vavae (models/)"].exists
    assert db.weight_items(load_config("demo"), tmp_path) == []


def test_vavae_preset_projection():
    """The seed's three stages at full size: what step 1 prints for --config vavae."""
    cfg = load_config("vavae")
    budget = db.project_config(cfg, list(cfg.train.stages), Path("/nonexistent"), n_images=4650)
    size = db.model_size(cfg)
    weights = sum(s.bytes or int(s.approx_gb * 1e9) for s in REGISTRY if s.name in db.weights_for_config(cfg))
    cache = 4650 * 256 * 256 * 3 if cfg.data.cache == "file" else 0
    expected = 2 * 3 * size.weights_bytes + (size.resume_bytes + 2 * size.weights_bytes) + size.weights_bytes
    assert budget.total == expected + size.resume_bytes + weights + cache
    assert 6 * GIB < budget.total < 12 * GIB  # the checkpoints alone are ~3.8 GB, weights ~3.9 GB


def test_importable_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from aetune.train import disk_budget as db\n"
        "from aetune.config import load_config\n"
        "import importlib.util; importlib.util.find_spec = lambda name: None\n"
        "print(db.project_config(load_config('kl'), ['1'], db.Path('/x')).total)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert res.returncode == 0, res.stderr
    assert int(res.stdout) > db.full_size("kl").autoencoder * 4
