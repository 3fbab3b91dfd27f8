"""The restoration task's CLIP ConvNeXt discriminator (the HYPIR fork's ``ImageConvNextDiscriminator``).

A tiny open_clip config (timm ``convnext_atto``, 16-d embedding, a 1-layer text tower that is never built) with
random weights stands in for ConvNeXt-XXLarge: shapes, channels from the trunk, the loss and BlurPool by hand, the
frozen trunk kept out of gradients, optimizers and checkpoints, the fork's head keys, a step 4 run that resumes
exactly, and the one-line errors.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from aetune.config import config_from_dict, load_config
from aetune.data.paired import prepare_paired_dataset
from aetune.data.synthetic.paired import generate_paired_dataset
from aetune.errors import AetuneError
from aetune.nn.patchgan import NLayerDiscriminator
from aetune.recipes.base import StepContext
from aetune.setup.hub import get_spec
from aetune.setup.weights_registry import weights_for_config
from aetune.tasks.restoration.clip_features import ClipConvNextFeatures, clip_tower, trunk_dtype
from aetune.tasks.restoration.discriminator import (
    BlurPool,
    ClipConvNextHeads,
    clip_discriminator_objective,
    clip_generator_loss,
    multilevel_loss,
)
from aetune.tasks.restoration.recipe import RestorationRecipe
from aetune.tasks.restoration.weights import CLIP_MODEL, CLIP_WEIGHT
from aetune.train.runner import TrainRequest, run_training
from tests.test_restoration_recipe import TINY

open_clip = pytest.importorskip("open_clip")

MODEL = "aetune_test_convnext"
"""A tiny open_clip model: timm convnext_atto (stages of 40, 80, 160, 320 channels), a 16-d CLIP embedding."""
TINY_CLIP = {
    **TINY,
    "data": {**TINY["data"], "image_size": 64},  # the smallest size the heads take (4 x 4 maps at stride 16)
    "discriminator": {"kind": "clip_convnext", "clip_model": MODEL, "pretrained": False, "trunk_dtype": "float32"},
}


@pytest.fixture(scope="module", autouse=True)
def tiny_clip_config(tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("open_clip") / f"{MODEL}.json"
    vision = {
        "timm_model_name": "convnext_atto",
        "timm_model_pretrained": False,
        "timm_pool": "",
        "timm_proj": "linear",
    }
    text = {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 1, "layers": 1}
    path.write_text(json.dumps({"embed_dim": 16, "vision_cfg": {**vision, "image_size": 64}, "text_cfg": text}))
    open_clip.add_model_config(path)


def paired_work(tmp: Path) -> Path:
    root = generate_paired_dataset(tmp / "pairs", pairs_per_type=3, image_size=32, num_users=2, progress=False)
    prepare_paired_dataset(root, tmp / "work", val_ratio=0.34, progress=False)
    return tmp / "work"


def images(batch: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_levels_shapes_and_head_channels_come_from_the_trunk() -> None:
    trunk = ClipConvNextFeatures(MODEL, False, None, torch.float32)
    assert trunk.map_channels == [40, 80, 160] and trunk.embed_dim == 16  # convnext_atto's stages but the last
    features = trunk(images())
    assert [tuple(f.shape) for f in features] == [(2, 40, 16, 16), (2, 80, 8, 8), (2, 160, 4, 4), (2, 16)]
    assert all(f.dtype == torch.float32 for f in features)
    heads = ClipConvNextHeads(trunk.map_channels, trunk.embed_dim, width=32)
    assert [heads.decoder.decoder[i][1].in_channels for i in range(3)] == trunk.map_channels
    logits = heads(features)
    assert [tuple(t.shape) for t in logits] == [(2, 4, 4), (2, 2, 2), (2, 1, 1), (2, 1)]  # maps / 4, pooled
    # The fork's in_ch1 = [384, 768, 1536], in_ch2 = 1024 under the installed timm (its intermediates lost the stem)
    with torch.device("meta"):
        tower, embed = clip_tower(CLIP_MODEL, False, None)
    assert [i["num_chs"] for i in tower.trunk.feature_info[:-1]] == [384, 768, 1536] and embed == 1024


def test_multilevel_loss_matches_a_hand_computation() -> None:
    a, b, c = 0.5, -1.0, 2.0
    levels = [torch.tensor([[[a, b]]]), torch.tensor([[c]])]  # a (1, 1, 2) map and a (1, 1) pooled logit

    def bce(x: float, t: float) -> float:
        s = 1 / (1 + math.exp(-x))
        return -(t * math.log(s) + (1 - t) * math.log(1 - s))

    real = (bce(a, 0.8) + bce(b, 0.8)) / 2 + bce(c, 0.8)  # a map's loss is its mean; the levels add up
    fake = (bce(a, 0.0) + bce(b, 0.0)) / 2 + bce(c, 0.0)
    assert multilevel_loss(levels, 0.8).shape == (1, 1)
    assert multilevel_loss(levels, 0.8).item() == pytest.approx(real, rel=1e-6)
    assert multilevel_loss(levels, 0.0).item() == pytest.approx(fake, rel=1e-6)
    assert clip_generator_loss(levels).item() == pytest.approx(real, rel=1e-6)  # the generator aims at 0.8 too
    terms = clip_discriminator_objective(levels, [-t for t in levels])
    expected = real + (bce(-a, 0) + bce(-b, 0)) / 2 + bce(-c, 0)
    assert terms["total"].item() == pytest.approx(expected, rel=1e-6)
    assert terms["logits_real"].item() == pytest.approx(((a + b) / 2 + c) / 2)  # mean over levels of level means
    assert terms["logits_fake"].item() == pytest.approx(-((a + b) / 2 + c) / 2)


def test_blurpool_filter_and_output_by_hand() -> None:
    blur = BlurPool(2, stride=1, pad_off=1)
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    assert torch.equal(blur.filt, (torch.outer(taps, taps) / 64).expand(2, 1, 4, 4))
    assert set(blur.state_dict()) == {"filt"}  # a buffer of the fork's state dict
    out = blur(torch.ones(1, 2, 4, 4))  # zero padding of 2: (4 + 4 - 4 + 1) = 5
    assert out.shape == (1, 2, 5, 5)
    assert out[0, 0, 0, 0].item() == pytest.approx((9 + 3 + 3 + 1) / 64)  # the filter's corner meets the image
    assert out[0, 1, 2, 2].item() == pytest.approx(1.0)  # fully inside: a weighted mean of ones
    assert BlurPool(1, stride=1)(torch.ones(1, 1, 4, 4)).shape == (1, 1, 3, 3)  # padding 1: one smaller


def test_fork_layout_heads_load_strictly() -> None:
    """The fork's D state dict less ``model.*``, ``image_mean``, ``image_std``: spectral_norm's parametrisation."""
    heads = ClipConvNextHeads([384, 768, 1536], 1024)  # the fork's MultiLevelDConv(level=4, ..., out_ch=512)
    fork: dict[str, torch.Tensor] = {}
    for i, c in enumerate((384, 768, 1536)):
        p = f"decoder.decoder.{i}"
        fork |= {f"{p}.0.filt": torch.rand(c, 1, 4, 4), f"{p}.3.filt": torch.rand(512, 1, 4, 4)}
        fork |= {f"{p}.1.weight_orig": torch.randn(512, c, 3, 3), f"{p}.1.bias": torch.randn(512)}
        fork |= {f"{p}.1.weight_u": torch.randn(512), f"{p}.1.weight_v": torch.randn(c * 9)}
        fork |= {f"{p}.4.weight_orig": torch.randn(1, 512, 1, 1), f"{p}.4.bias": torch.randn(1)}
        fork |= {f"{p}.4.weight_u": torch.randn(1), f"{p}.4.weight_v": torch.randn(512)}
    for p, (o, i) in {"decoder.decoder.3.0": (512, 1024), "decoder.out": (1, 512)}.items():
        fork |= {f"{p}.weight_orig": torch.randn(o, i), f"{p}.bias": torch.randn(o)}
        fork |= {f"{p}.weight_u": torch.randn(o), f"{p}.weight_v": torch.randn(i)}
    heads.load_state_dict(fork, strict=True)
    assert torch.equal(heads.decoder.out.weight_orig, fork["decoder.out.weight_orig"])


def test_the_trunk_is_frozen_in_eval_and_outside_the_d_optimizer() -> None:
    recipe = RestorationRecipe(config_from_dict(TINY_CLIP), "1")
    nets = recipe.build()
    recipe.attach(nets)
    trunk, heads = nets.frozen["clip_trunk"], nets.discriminator
    assert isinstance(trunk, ClipConvNextFeatures) and isinstance(heads, ClipConvNextHeads)
    assert not any(p.requires_grad for p in trunk.parameters())
    trained = {id(p) for p in recipe.trainable("d")}
    assert trained == {id(p) for p in heads.parameters()} and not trained & {id(p) for p in trunk.parameters()}
    x, gt = images(seed=1), images(seed=2)
    g = recipe.generator_step(x, gt, StepContext(0, torch.Generator().manual_seed(0)))
    assert "gan" in g.logs
    g.total.backward()
    assert all(p.grad is None for p in trunk.parameters()) and all(p.grad is None for p in heads.parameters())
    assert recipe.autoencoder.gan_last_layer.grad is not None
    d = recipe.discriminator_step(x, gt, g, StepContext(0, torch.Generator().manual_seed(0)))
    assert set(d.logs) == {"logits_real", "logits_fake"} and heads.training
    d.total.backward()
    assert all(p.grad is not None for p in heads.parameters()) and all(p.grad is None for p in trunk.parameters())
    torch.nn.Sequential(trunk, heads).train()
    assert not trunk.training and not any(m.training for m in trunk.modules()) and heads.training


def test_trunk_runs_in_its_dtype_and_heads_in_float32_under_autocast() -> None:
    assert trunk_dtype("auto") == (torch.float32 if not torch.cuda.is_available() else trunk_dtype("auto"))
    trunk = ClipConvNextFeatures(MODEL, False, None, torch.bfloat16)
    heads = ClipConvNextHeads(trunk.map_channels, trunk.embed_dim, width=32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = trunk(images())
        logits = heads(features)
    assert next(trunk.parameters()).dtype == torch.bfloat16
    assert all(f.dtype == torch.float32 for f in features) and all(t.dtype == torch.float32 for t in logits)


def test_step4_trains_with_the_clip_discriminator_and_resumes_exactly(tmp_path: Path) -> None:
    sets = {"stages": {"1": {"epochs": 1, "max_steps": 4}}, "val_every_n_steps": 4}
    cfg = {**TINY_CLIP, "train": {**TINY_CLIP["train"], **sets}}

    def train(work: Path, **kw: object) -> str:
        request = TrainRequest(work, config_from_dict(cfg), ["1"], accelerator="cpu", progress_bar=False, **kw)
        return run_training(request).status

    reference, stopped = paired_work(tmp_path / "a"), paired_work(tmp_path / "b")
    assert train(reference) == "done"
    assert train(stopped, stop_after_batches=2) == "session_limit"
    assert train(stopped) == "done"
    a, b = (torch.load(w / "checkpoints/stage1/last.ckpt", weights_only=True) for w in (reference, stopped))
    assert a["aetune"]["batches_seen"] == b["aetune"]["batches_seen"] == 4
    keys = a["state_dict"].keys()
    assert not any(k.startswith("clip_trunk.") for k in keys)  # the frozen trunk is never checkpointed
    assert "discriminator.decoder.decoder.0.1.weight_orig" in keys and "discriminator.decoder.out.weight_u" in keys
    n_heads = sum(k.startswith("discriminator.") and not k.endswith(("_u", "_v", "filt")) for k in keys)
    assert len(a["optimizer_states"][1]["state"]) == n_heads  # the D optimizer holds the heads' parameters only
    assert keys == b["state_dict"].keys()
    for k in keys:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=0, atol=1e-6, msg=k)
    logged = (reference / "checkpoints/stage1/metrics.csv").read_text().splitlines()[0]
    assert all(k in logged for k in ("train/logits_real", "train/logits_fake", "train/d_total", "train/gan"))


def test_released_patchgan_weights_are_skipped_for_the_clip_discriminator(tmp_path: Path) -> None:
    recipe = RestorationRecipe(config_from_dict(TINY_CLIP), "1")
    recipe.attach(recipe.build())
    heads = {k: v.clone() for k, v in recipe.discriminator.state_dict().items()}
    patchgan = NLayerDiscriminator(ndf=8, n_layers=2).state_dict()
    released = {**recipe.autoencoder.state_dict(), **{f"loss.discriminator.{k}": v for k, v in patchgan.items()}}
    torch.save(released, tmp_path / "released.pt")
    what = recipe.load_pretrained(str(tmp_path / "released.pt"))
    assert "CLIP discriminator's heads start from random weights" in what
    assert recipe.discriminator is not None and all(
        torch.equal(v, heads[k]) for k, v in recipe.discriminator.state_dict().items()
    )


def test_missing_open_clip_or_weights_is_one_error_line(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AetuneError, match=f"step2_download_models.py --only {CLIP_WEIGHT}") as e:
        ClipConvNextFeatures(CLIP_MODEL, True, None, torch.float32)
    assert "\n" not in str(e.value) and "discriminator.weights_path=FILE" in str(e.value)
    with pytest.raises(AetuneError, match="does not exist"):
        ClipConvNextFeatures(CLIP_MODEL, True, "/nonexistent/open_clip_pytorch_model.bin", torch.float32)
    with pytest.raises(AetuneError, match="data.image_size >= 64"):
        RestorationRecipe(config_from_dict({**TINY_CLIP, "data": TINY["data"]}), "1")
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip now fails as when it is not installed
    with pytest.raises(AetuneError) as e:
        ClipConvNextFeatures(MODEL, False, None, torch.float32)
    message = str(e.value)
    assert "\n" not in message and "open-clip-torch" in message and "--set discriminator.kind=patchgan" in message


def test_presets_step2_entry_and_kinds() -> None:
    assert load_config("restoration").discriminator.kind == "clip_convnext"
    assert load_config("restoration_5k").discriminator.kind == "clip_convnext"
    assert load_config("restoration_demo").discriminator.kind == "patchgan"
    assert load_config("hypir_demo").discriminator.kind == "patchgan"
    assert CLIP_WEIGHT in weights_for_config(load_config("restoration"))  # step 2 --config restoration fetches it
    assert CLIP_WEIGHT not in weights_for_config(load_config("restoration", ["discriminator.kind=patchgan"]))
    spec = get_spec(CLIP_WEIGHT)
    assert spec.sha256 is None and spec.bytes is None and not spec.default  # unverified offline: step 2 records them
    assert (spec.repo_id, spec.repo_file) == (
        "laion/CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg-soup",
        "open_clip_pytorch_model.bin",
    )
