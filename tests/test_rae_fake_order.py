"""When RAE's discriminator phase decodes its fake: after the generator's optimizer step (the reference's
``train_stage1.py``: ``optimizer.step()``, then ``recon_disc = ddp_model(images)`` under ``no_grad`` in eval mode)
or, with ``loss.fake_after_g_step: false``, before it, both optimizers stepping when the window closes."""

from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from aetune.config import load_config
from aetune.train.module import AutoencoderModule

pytest.importorskip("transformers")


def run_batches(after: bool, batches: int, accumulation: int) -> tuple[AutoencoderModule, list, list]:
    """Train the demo recipe ``batches`` batches of 2; return the module, the decoder's state before each batch and
    each D phase's (tokens, fake)."""
    cfg = load_config(
        "rae_demo",
        [
            f"loss.fake_after_g_step={str(after).lower()}", "loss.disc_start=0", "loss.gan_start=0",
            "train.batch_size=2", f"train.gradient_accumulation={accumulation}", "train.precision=32",
        ],
    )  # fmt: skip
    torch.manual_seed(0)
    module = AutoencoderModule(cfg, "1", batches, 1e-3, {})
    states, fakes = [], []
    real_fake, real_step = module.recipe.fake, module.recipe.generator_step

    def record_fake(tokens: torch.Tensor) -> torch.Tensor:
        out = real_fake(tokens)
        fakes.append((tokens.clone(), out.clone()))
        return out

    def record_state(*args, **kw):
        states.append(copy.deepcopy(module.autoencoder.decoder.state_dict()))
        return real_step(*args, **kw)

    module.recipe.fake, module.recipe.generator_step = record_fake, record_state
    images = torch.randint(0, 256, (2 * batches, 3, 48, 48), dtype=torch.uint8)
    loader = DataLoader(TensorDataset(images, torch.zeros(2 * batches, dtype=torch.long)), batch_size=2)
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    return module, states, fakes


def decode_with(module: AutoencoderModule, state: dict, tokens: torch.Tensor) -> torch.Tensor:
    live = copy.deepcopy(module.autoencoder.decoder.state_dict())
    module.autoencoder.decoder.load_state_dict(state)
    with torch.no_grad():
        out = module.recipe.fake(tokens)
    module.autoencoder.decoder.load_state_dict(live)
    return out


def test_the_fake_is_decoded_by_the_updated_decoder() -> None:
    module, states, ((tokens, fake),) = run_batches(after=True, batches=1, accumulation=1)
    with torch.no_grad():
        torch.testing.assert_close(fake, module.recipe.fake(tokens), rtol=0, atol=0)  # the decoder after G's step
    assert not torch.equal(fake, decode_with(module, states[0], tokens))  # the step changed the decoder


def test_one_option_away_the_fake_is_one_step_older() -> None:
    module, states, ((tokens, fake),) = run_batches(after=False, batches=1, accumulation=1)
    torch.testing.assert_close(fake, decode_with(module, states[0], tokens), rtol=0, atol=0)  # before G's step
    with torch.no_grad():
        assert not torch.equal(fake, module.recipe.fake(tokens))


def test_under_accumulation_the_fake_follows_the_newest_decoder() -> None:
    """Window of 2: the first batch's fake is the unchanged decoder's, the second's the one its window updated."""
    module, states, fakes = run_batches(after=True, batches=2, accumulation=2)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])  # no step inside the window
    torch.testing.assert_close(fakes[0][1], decode_with(module, states[0], fakes[0][0]), rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(fakes[1][1], module.recipe.fake(fakes[1][0]), rtol=0, atol=0)
