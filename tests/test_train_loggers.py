"""Stage loggers: the CSV log always first, TensorBoard files, wandb / SwanLab offline runs without a network."""

from __future__ import annotations

import csv
import socket
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from aetune.errors import AetuneError
from aetune.train.csvlog import METRICS_FILE, StageCSVLogger
from aetune.train.loggers import SWANLAB_SUBDIR, TENSORBOARD_SUBDIR, SwanLabLogger, build_loggers

LOOPBACK = ("127.0.0.1", "::1", "localhost")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Refuse every non-loopback connection of this process; point subprocesses (wandb-core) at a dead proxy."""
    connect = socket.socket.connect

    def local_only(self: socket.socket, address: object) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOOPBACK:  # type: ignore[index]
            raise OSError(f"network unreachable in this test: {address}")
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # discard port: any HTTP request fails at once
    monkeypatch.setenv("NO_PROXY", ",".join(LOOPBACK))
    for var in ("WANDB_API_KEY", "WANDB_MODE", "SWANLAB_API_KEY", "SWANLAB_MODE"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"  # the trackers' caches and settings, kept out of the real home
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / "wandb_config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(home / "wandb_cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(home / "wandb_data"))
    with pytest.raises(OSError, match="network unreachable"):  # the fixture itself works
        socket.create_connection(("198.51.100.1", 443), timeout=1)


class Tiny(pl.LightningModule):
    """One linear layer whose loss is logged every batch."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.net(batch[0]).pow(2).mean()
        self.log("train/loss", loss, on_step=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=1)


def fit(loggers: list) -> None:
    """Three batches, each logging train/loss, through a real Trainer."""
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=3, logger=loggers, log_every_n_steps=1, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    torch.manual_seed(0)
    trainer.fit(Tiny())


def csv_losses(folder: Path) -> list[float]:
    with open(folder / METRICS_FILE, newline="", encoding="utf-8") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


def test_csv_alone_and_unknown_kind(tmp_path: Path) -> None:
    loggers = build_loggers("csv", tmp_path, "run", offline=True)
    assert len(loggers) == 1 and isinstance(loggers[0], StageCSVLogger)
    with pytest.raises(AetuneError, match="unknown --logger 'mlflow': choose one of csv, tensorboard, wandb, swanlab"):
        build_loggers("mlflow", tmp_path, "run", offline=True)


def test_tensorboard_writes_the_same_values_as_the_csv(tmp_path: Path, no_network: None) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    loggers = build_loggers("tensorboard", tmp_path, "run", offline=False)
    assert isinstance(loggers[0], StageCSVLogger) and len(loggers) == 2
    fit(loggers)
    losses = csv_losses(tmp_path)
    assert len(losses) == 3
    events = EventAccumulator(str(tmp_path / TENSORBOARD_SUBDIR))
    events.Reload()
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(losses, rel=1e-6)


def test_swanlab_offline_writes_a_local_run_per_stage(tmp_path: Path, no_network: None) -> None:
    pytest.importorskip("swanlab")
    for stage in ("stage1", "stage2"):  # two Trainers in one process, as a two-stage session
        loggers = build_loggers("swanlab", tmp_path / stage, f"kl_{stage}", offline=True)
        assert isinstance(loggers[0], StageCSVLogger) and isinstance(loggers[1], SwanLabLogger)
        fit(loggers)
        assert len(csv_losses(tmp_path / stage)) == 3
        runs = list((tmp_path / stage / SWANLAB_SUBDIR).glob("run-*/run-*.swanlab"))
        assert len(runs) == 1 and b"train/loss" in runs[0].read_bytes()


def test_wandb_offline_writes_a_local_run(tmp_path: Path, no_network: None) -> None:
    pytest.importorskip("wandb")
    loggers = build_loggers("wandb", tmp_path, "kl_stage1", offline=True)
    fit(loggers)
    import wandb

    wandb.finish()  # Lightning leaves the run open for the process; the file is complete once it is finished
    assert len(csv_losses(tmp_path)) == 3
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and b"train/loss" in runs[0].read_bytes()


@pytest.mark.parametrize("kind", ["tensorboard", "wandb", "swanlab"])
def test_missing_tracker_package_is_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    monkeypatch.setitem(sys.modules, kind, None)  # import of <kind> halted: as if not installed
    with pytest.raises(
        AetuneError, match=f"^{kind} is not installed \\(needed for --logger {kind}\\).*pip install {kind}"
    ):
        build_loggers(kind, tmp_path, "run", offline=True)
