"""A family written inside the test suite trains, resumes and exports without touching ``aetune/train/``.

The three registrations a family makes: its model (``register_family``), its config sections
(``register_schema``, with its own loss option) and its recipe (``register_recipe``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from torch import Tensor, nn

import aetune.config as config_py
import aetune.models.registry as models_registry
import aetune.recipes as recipes_py
from aetune.config import bounds, load_config, register_schema
from aetune.data.cache import to_model_range
from aetune.models import Autoencoder, DecoderOutput, EncoderOutput, FamilyConfig, register_family
from aetune.models.checkpoint import load_autoencoder_checkpoint
from aetune.recipes import Networks, PhaseResult, Recipe, StepContext, register_recipe
from aetune.train.runner import TrainRequest, run_training
from tests.train_helpers import make_work_dir


@dataclass
class ToyConfig(FamilyConfig):
    width: int = 8  # channels of the one hidden layer


class ToyAE(Autoencoder):
    """A conv autoencoder of two layers each way: f2, 4 latent channels."""

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.in_channels, self.latent_channels, self.downsample_factor = 3, 4, 2
        w = config.width
        self.enc = nn.Sequential(nn.Conv2d(3, w, 3, 2, 1), nn.SiLU(), nn.Conv2d(w, 4, 1))
        self.dec = nn.Sequential(nn.Conv2d(4, w, 1), nn.SiLU(), nn.Upsample(scale_factor=2), nn.Conv2d(w, 3, 3, 1, 1))

    def encode(self, x: Tensor) -> EncoderOutput:
        z = self.enc(x)
        return EncoderOutput(None, z)

    def decode(self, z: Tensor) -> DecoderOutput:
        return DecoderOutput(self.dec(z))

    @property
    def gan_last_layer(self) -> nn.Parameter:
        return self.dec[-1].weight


@dataclass
class ToyLoss:
    l2_weight: float = field(default=1.0, metadata=bounds(0.0))  # the family's own option


class ToyRecipe(Recipe):
    def build(self) -> Networks:
        return Networks(ToyAE(ToyConfig(**self.cfg.model.args)))

    def inputs(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x = to_model_range(batch[0])
        return x, x

    def generator_step(self, x: Tensor, target: Tensor, ctx: StepContext) -> PhaseResult:
        rec = self.autoencoder(x)
        l2 = self.loss.l2_weight * ((rec - target) ** 2).mean()
        return PhaseResult(l2, {"rec_loss": l2.detach()}, {"l2": l2})


@pytest.fixture
def toy_family(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Register ``toy`` for one test (the registries are restored afterwards) and write its preset."""
    monkeypatch.setattr(models_registry, "_FAMILIES", dict(models_registry._FAMILIES))
    monkeypatch.setattr(config_py, "_SCHEMAS", dict(config_py._SCHEMAS))
    monkeypatch.setattr(recipes_py, "_RECIPES", dict(recipes_py._RECIPES))
    register_family("toy", ToyConfig, "test-only toy conv autoencoder")(ToyAE)
    register_schema("toy", "toy", loss=ToyLoss)
    register_recipe("toy", ToyRecipe)
    preset = tmp_path / "toy.yaml"
    plan = {"epochs": 1, "max_steps": 4, "loss": {"l2_weight": 2.0}}
    train = {"batch_size": 2, "learning_rate": 1e-3, "precision": "32", "val_every_n_steps": 2, "stages": {"1": plan}}
    preset.write_text(yaml.safe_dump({"model": {"family": "toy"}, "data": {"num_workers": 0}, "train": train}))
    return preset


def test_a_family_added_by_registration_trains_resumes_and_exports(toy_family: Path, tmp_path: Path) -> None:
    cfg = load_config(str(toy_family), ["data.image_size=32"])
    assert cfg.stage_loss("1").l2_weight == 2.0
    with pytest.raises(config_py.AetuneError, match="did you mean 'loss.l2_weight'"):
        load_config(str(toy_family), ["loss.l2_weigth=1"])
    whole, split = make_work_dir(tmp_path / "a"), make_work_dir(tmp_path / "b")

    def train(work: Path, stop: int | None = None):
        return run_training(
            TrainRequest(work, cfg, ["1"], accelerator="cpu", stop_after_batches=stop, progress_bar=False)
        )

    assert train(whole).status == "done"
    assert train(split, 2).status == "session_limit" and train(split).status == "done"
    a = torch.load(whole / "checkpoints/stage1/last.ckpt", weights_only=True)
    b = torch.load(split / "checkpoints/stage1/last.ckpt", weights_only=True)
    assert len(a["optimizer_states"]) == 1  # no discriminator: one phase
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=0, atol=1e-6, msg=k)
    model, meta = load_autoencoder_checkpoint(whole / "checkpoints/toy_tiny_final.pt", family="toy")
    assert meta["family"] == "toy" and model(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    header = (whole / "checkpoints/stage1/metrics.csv").read_text().splitlines()[0].split(",")
    assert "grad_norm/l2" in header  # batch 0 is a grad-norm batch (every 50)
