"""The split generator backward (aetune/losses/split.py) leaves the gradients of the reference composition
(``generator_objective``: two ``autograd.grad`` calls per adaptive weight plus the total backward), to 1e-6 in
float32, with and without gradient accumulation and under a loss scale; and logs the same weights and total."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from aetune.config import load_config
from aetune.families.vavae.recipe import VAVAERecipe
from aetune.recipes import StepContext

TINY = {
    "model": {
        "family": "vavae",
        "args": {
            "ch": 32,
            "ch_mult": [1, 2],
            "num_res_blocks": 1,
            "attn_resolutions": [16],
            "resolution": 32,
            "align_dim": 64,
        },
    },
    "teacher": {"name": "test_vit", "pretrained": False},
    "discriminator": {"ndf": 8, "n_layers": 2},
    "data": {"image_size": 32},
}
CASES = {  # stage 1 of the seed; the GAN phases; the GAN with a fixed VF weight
    "gan_off_vf_adaptive": {"disc_start": -1, "vf_weight": 0.5},
    "gan_on_vf_adaptive": {"disc_start": 0, "vf_weight": 0.1},
    "gan_on_vf_fixed": {"disc_start": 0, "vf_weight": 0.1, "vf_adaptive": False},
}


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> VAVAERecipe:
    path = Path(tmp_path_factory.mktemp("split")) / "tiny.yaml"
    loss = {"perceptual_weight": 1.0, "lpips_pretrained": False, "kl_weight": 1e-3}  # every term pulls visibly
    path.write_text(yaml.safe_dump({**TINY, "loss": loss}), encoding="utf-8")
    r = VAVAERecipe(load_config(str(path)), "1")
    r.defaults = r.loss  # type: ignore[attr-defined]
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="random VGG"):
        r.attach(r.build())
    return r


def run(recipe: VAVAERecipe, split: bool, options: dict, accumulation: int, scale: float):
    """Gradients of all autoencoder parameters and the logs after ``accumulation`` batches."""
    recipe.loss = dataclasses.replace(recipe.defaults, split_backward=split, **options)  # type: ignore[attr-defined]
    ae = recipe.autoencoder
    ae.zero_grad(set_to_none=True)
    logs = []
    for b in range(accumulation):
        x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(b)) * 2 - 1
        ctx = StepContext(b, torch.Generator().manual_seed(100 + b))
        result = recipe.generator_step(x, x, ctx)
        assert ("split" in result.carry) == split
        recipe.backward("g", result, lambda loss: (loss / accumulation * scale).backward())
        logs.append({"total": result.total.detach().clone(), **{k: v.clone() for k, v in result.logs.items()}})
    grads = {n: p.grad.clone() / scale for n, p in ae.named_parameters() if p.grad is not None}
    return grads, logs


@pytest.mark.parametrize(
    ("case", "accumulation", "scale"),
    [(case, 1, 1.0) for case in CASES]
    + [
        pytest.param(*c, marks=pytest.mark.slow)  # ~20 s each on a busy 2-core machine
        for c in [("gan_off_vf_adaptive", 3, 1.0), ("gan_on_vf_adaptive", 3, 1.0), ("gan_off_vf_adaptive", 2, 1024.0)]
    ],
)
def test_split_backward_equals_the_reference_composition(
    recipe: VAVAERecipe, case: str, accumulation: int, scale: float
) -> None:
    ref_grads, ref_logs = run(recipe, False, CASES[case], accumulation, scale)
    grads, logs = run(recipe, True, CASES[case], accumulation, scale)
    assert grads.keys() == ref_grads.keys() and len(grads) > 40
    top = max(g.abs().max() for g in ref_grads.values())
    for name, ref in ref_grads.items():
        err = (grads[name] - ref).abs().max() / top
        assert err <= 1e-6, (name, err.item())
    for ours, theirs in zip(logs, ref_logs, strict=True):
        for key in ("total", "vf_weight", "d_weight", "nll_loss", "vf_loss", "g_loss"):
            torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=0.0, msg=key)
    gan = CASES[case]["disc_start"] == 0
    assert (logs[0]["d_weight"] > 0) == gan and logs[0]["vf_weight"] > 0


def test_reference_path_for_grad_norm_batches_and_no_grad(recipe: VAVAERecipe) -> None:
    recipe.loss = dataclasses.replace(recipe.defaults, **CASES["gan_off_vf_adaptive"])  # type: ignore[attr-defined]
    x = torch.zeros(2, 3, 32, 32)
    assert "split" not in recipe.generator_step(x, x, StepContext(0, torch.Generator(), parts=True)).carry
    with torch.no_grad():
        assert "split" not in recipe.generator_step(x, x, StepContext(0, torch.Generator())).carry
