"""fp16 loss scaling with a generator and a discriminator stepping in one window (aetune.train.amp)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.precision import MixedPrecision
from torch import nn

from aetune.train.amp import WindowMixedPrecision, update_scaler

X = torch.tensor([[1 / 64, 1 / 32, 1 / 16, 1 / 8]])
"""Powers of two: exact in fp16 at any loss scale."""


class TwoOptimizers(pl.LightningModule):
    """G's loss overflows in fp16 at the first batch; D's gradient is exactly ``x`` (weights 0, SGD lr 1)."""

    def __init__(self, per_window_update: bool) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.per_window_update = per_window_update
        self.g = nn.Linear(4, 1, bias=False)
        self.d = nn.Linear(4, 1, bias=False)
        nn.init.zeros_(self.d.weight)

    def configure_optimizers(self):
        return [torch.optim.SGD(self.g.parameters(), lr=1.0), torch.optim.SGD(self.d.parameters(), lr=1.0)]

    def training_step(self, batch, batch_idx):
        (x,) = batch
        opt_g, opt_d = self.optimizers()
        self.manual_backward(self.g(x).sum() * float("inf"))  # a forced overflow in the generator phase
        self.manual_backward(self.d(x).sum())  # d loss / d w = sum over the batch of x
        opt_g.step()
        opt_d.step()
        if self.per_window_update:
            update_scaler(self.trainer)
        opt_g.zero_grad()
        opt_d.zero_grad()

    def train_dataloader(self):
        x = X
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=1)


def scaler() -> torch.amp.GradScaler:
    """A scale whose upstream gradient (the scale itself) is finite in fp16 (2**16 is not: max 65504)."""
    return torch.amp.GradScaler("cpu", init_scale=1024.0)


def fit(plugin: MixedPrecision, per_window_update: bool) -> tuple[TwoOptimizers, float]:
    model = TwoOptimizers(per_window_update)
    scale = plugin.scaler.get_scale()
    trainer = pl.Trainer(
        accelerator="cpu", plugins=[plugin], max_steps=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model)
    return model, scale


@pytest.mark.filterwarnings("ignore")
def test_one_scale_update_per_window_keeps_the_discriminator_step_exact() -> None:
    model, scale = fit(WindowMixedPrecision("16-mixed", "cpu", scaler()), per_window_update=True)
    torch.testing.assert_close(model.d.weight.detach(), -X, rtol=0, atol=0)
    assert model.trainer.precision_plugin.scaler.get_scale() == scale / 2  # lowered once, for G's overflow
    assert torch.isfinite(model.g.weight).all()  # G's step was skipped


@pytest.mark.filterwarnings("ignore")
def test_lightnings_per_optimizer_update_unscales_the_discriminator_wrongly() -> None:
    """The bug the plugin fixes: after G's overflow lowered the scale, D is unscaled by the new, halved one."""
    model, _ = fit(MixedPrecision("16-mixed", "cpu", scaler()), per_window_update=False)
    torch.testing.assert_close(model.d.weight.detach(), -2 * X, rtol=0, atol=0)
