"""The frozen-feature cache (aetune/data/feature_cache.py): content hashes, the key (images, weights, settings),
loud rebuilds, and one VA-VAE training batch with and without the cached teacher features."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from aetune.config import load_config
from aetune.data.cache import to_model_range
from aetune.data.feature_cache import FeatureCache, fingerprint, to_uint8, weights_hash
from aetune.families.vavae.recipe import VAVAERecipe
from aetune.recipes import StepContext
from tests.test_one_backward import TINY


def images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_fingerprint_is_per_content_and_layout_free() -> None:
    u8 = torch.from_numpy(images(3)).permute(0, 3, 1, 2)
    prints = fingerprint(u8)
    assert prints.dtype == torch.int64 and len(set(prints.tolist())) == 3
    assert torch.equal(fingerprint(u8.contiguous(memory_format=torch.channels_last)), prints)
    changed = u8.clone()
    changed[1, 2, 31, 31] ^= 1  # one bit of the last pixel
    assert fingerprint(changed).tolist() == [prints[0].item(), fingerprint(changed)[1].item(), prints[2].item()]
    assert fingerprint(changed)[1] != prints[1]
    assert torch.equal(to_uint8(to_model_range(u8)), u8)  # the recipe hashes what the loader gave


class Net(nn.Module):
    """A frozen 'network': mean colour per 8x8 patch, (B, 3, 4, 4), counting its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0), requires_grad=False)
        self.calls = 0

    def forward(self, u8: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return nn.functional.avg_pool2d(to_model_range(u8), 8) * self.scale


def build(tmp: Path, net: Net, imgs: np.ndarray, settings: dict | None = None) -> FeatureCache:
    return FeatureCache.build_or_load(
        tmp, "net", net, settings or {"size": 32}, imgs, net, batch_size=2, progress=False
    )


def test_build_reuse_and_loud_rebuilds(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    net, imgs = Net(), images(5)
    with caplog.at_level(logging.INFO):
        cache = build(tmp_path, net, imgs)
    assert net.calls == 3 and "built feature cache" in caplog.text and "5 images" in caplog.text
    assert (tmp_path / "cache/features/net.npy").is_file()
    u8 = torch.from_numpy(imgs[[4, 1]]).permute(0, 3, 1, 2)
    got = cache.lookup(u8)
    assert got is not None and got.dtype == torch.float32
    want = net(u8)
    assert torch.equal(got, want.half().float())  # fp16 storage, nothing else
    assert cache.lookup(torch.from_numpy(images(1, seed=9)).permute(0, 3, 1, 2)) is None  # unknown image
    calls = net.calls
    build(tmp_path, net, imgs)  # same key: loaded, not computed
    assert net.calls == calls
    for change, what in [
        (lambda: build(tmp_path, net, imgs, {"size": 64}), "settings"),
        (lambda: build(tmp_path, net, imgs[:4]), "images"),
    ]:
        caplog.clear()
        change()
        assert f"({what}, " in caplog.text or f"({what} changed" in caplog.text, caplog.text
    net.scale.data.fill_(2.0)
    assert weights_hash(net) != weights_hash(Net())
    caplog.clear()
    cache = build(tmp_path, net, imgs[:4])
    assert "(weights changed)" in caplog.text
    assert torch.equal(cache.lookup(u8[1:]), (2 * want[1:]).half().float())


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> VAVAERecipe:
    path = Path(tmp_path_factory.mktemp("fc")) / "tiny.yaml"
    loss = {"perceptual_weight": 0.0, "lpips_pretrained": False, "disc_start": -1, "vf_weight": 0.5}
    path.write_text(yaml.safe_dump({**TINY, "loss": loss}), encoding="utf-8")
    r = VAVAERecipe(load_config(str(path)), "1")
    torch.manual_seed(0)
    r.attach(r.build())
    return r


def batch_grads(recipe: VAVAERecipe, u8: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    recipe.autoencoder.zero_grad(set_to_none=True)
    x, target = recipe.inputs((u8, torch.zeros(len(u8))))
    result = recipe.generator_step(x, target, StepContext(0, torch.Generator().manual_seed(1)))
    recipe.backward("g", result, lambda loss: loss.backward())
    return {n: p.grad.clone() for n, p in recipe.autoencoder.named_parameters() if p.grad is not None}, result.logs


def test_one_training_batch_with_and_without_the_cache(recipe: VAVAERecipe, tmp_path: Path) -> None:
    imgs = images(6)
    u8 = torch.from_numpy(imgs[[3, 0]]).permute(0, 3, 1, 2)
    recipe.feature_cache = None
    ref_grads, ref_logs = batch_grads(recipe, u8)
    teacher = recipe.teacher
    calls = []
    handle = teacher.register_forward_hook(lambda *a: calls.append(1))
    cache = recipe.prepare_feature_cache(imgs, tmp_path, torch.device("cpu"), progress=False)
    assert cache is not None and len(cache) == 6 and len(calls) == 1  # one build batch
    grads, logs = batch_grads(recipe, u8)
    handle.remove()
    assert len(calls) == 1  # the step took the features from the cache
    # fp16 rounding of the features (relative 2**-11) is all that differs
    for key in ("vf_loss", "vf_weight", "nll_loss"):
        torch.testing.assert_close(logs[key], ref_logs[key], rtol=2e-3, atol=0.0, msg=key)
    top = max(g.abs().max() for g in ref_grads.values())
    assert max(((grads[n] - g).abs().max() / top).item() for n, g in ref_grads.items()) < 2e-3
    recipe.feature_cache = None


def test_no_cache_with_augmentation_or_when_off(
    recipe: VAVAERecipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as m:
        m.setattr(recipe.cfg.data, "hflip", True)
        assert recipe.prepare_feature_cache(images(2), tmp_path, torch.device("cpu")) is None
    with monkeypatch.context() as m:
        m.setattr(recipe.cfg.teacher, "cache", False)
        assert recipe.prepare_feature_cache(images(2), tmp_path, torch.device("cpu")) is None
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("rank", [0, 1])
def test_ddp_rank0_builds_then_every_rank_passes_one_barrier(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rank: int
) -> None:
    net, imgs = Net(), images(3)
    if rank == 1:
        build(tmp_path, net, imgs)  # what rank 0 wrote before the barrier
    calls, barriers = net.calls, []
    dist = torch.distributed
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: rank)
    monkeypatch.setattr(dist, "barrier", lambda: barriers.append(net.calls))
    cache = build(tmp_path, net, imgs)
    assert len(cache) == 3 and len(barriers) == 1
    assert net.calls == calls + (2 if rank == 0 else 0)  # rank 0 computed (2 batches of 2) before the barrier
    assert barriers == [net.calls]
