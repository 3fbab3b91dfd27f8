"""The restoration task: objective numbers, presets, the recipe's phases and gradients, and a step 4 run on pairs.

``model.task: restoration`` selects the task's config sections and its recipe for the ``kl`` family here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from aetune.config import config_from_dict
from aetune.data.kinds import get_data_kind
from aetune.data.paired import prepare_paired_dataset
from aetune.data.prepared import load_prepared
from aetune.data.synthetic.paired import generate_paired_dataset
from aetune.losses import generator_loss
from aetune.recipes.base import StepContext
from aetune.tasks.restoration.losses import RestorationWeights, restoration_objective
from aetune.tasks.restoration.options import RestorationLossConfig
from aetune.tasks.restoration.recipe import RestorationRecipe

TINY = {
    "model": {
        "family": "kl",
        "task": "restoration",
        "args": {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "resolution": 32},
    },
    "discriminator": {"kind": "patchgan", "ndf": 8, "n_layers": 2},
    "loss": {"lpips_weight": 0.0, "lpips_pretrained": False, "ssim_weight": 1.0, "disc_start": 0},
    "data": {"image_size": 32, "num_workers": 0},
    "train": {
        "batch_size": 2,
        "learning_rate": 1e-3,
        "precision": "32",
        "val_every_n_steps": 4,
        "checkpoint_every_n_batches": 2,
        "grad_norm_every": 1,
        "monitor": "val/PSNR",
        "stages": {"1": {"epochs": 1, "max_steps": 4}},
    },
}


def test_objective_matches_a_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    out = (gt + 0.2 * torch.randn(gt.shape, generator=g)).clamp(-1, 1).requires_grad_()
    logits = torch.randn(2, 1, 4, 4, generator=g)

    class HalfL1(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return 0.5 * (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)

    w = RestorationWeights(l1=2.0, l2=2.0, lpips=3.0, ssim=1.0, gan=0.3)
    terms = restoration_objective(gt, out, w, HalfL1(), generator_loss(logits))  # the PatchGAN's G loss
    l1, l2 = (out - gt).abs().mean(), ((out - gt) ** 2).mean()
    assert terms["l1"].item() == pytest.approx(l1.item()) and terms["l2"].item() == pytest.approx(l2.item())
    assert terms["lpips"].item() == pytest.approx(0.5 * l1.item())
    assert terms["gan"].item() == pytest.approx(-logits.mean().item())
    expected = 2 * l1 + 2 * l2 + 3 * 0.5 * l1 + (1 - terms["ssim"]) - 0.3 * logits.mean()
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(terms) == {"total", "l1", "l2", "lpips", "ssim", "gan", "w_l1", "w_l2", "w_lpips", "w_ssim", "w_gan"}
    only = restoration_objective(gt, out, RestorationWeights(l1=1, l2=0, lpips=0, ssim=0, gan=1), None, None)
    assert set(only) == {"total", "l1", "w_l1"}  # weight 0 and an inactive GAN are not computed
    with pytest.raises(ValueError, match="perceptual network"):
        restoration_objective(gt, out, RestorationWeights(), None, None)


@pytest.fixture(scope="module")
def paired_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Step 3 run on the synthetic paired set: 4 types x 3 pairs of 32 px (8 train, 4 val)."""
    tmp = tmp_path_factory.mktemp("restoration")
    root = generate_paired_dataset(tmp / "pairs", pairs_per_type=3, image_size=32, num_users=2, progress=False)
    prepare_paired_dataset(root, tmp / "work", val_ratio=0.34, progress=False)
    return tmp / "work"


def test_recipe_phases_gradients_and_data(paired_work: Path) -> None:
    cfg = config_from_dict(TINY)
    assert type(cfg.loss) is RestorationLossConfig and cfg.schema.data_kind == "pair"
    recipe = RestorationRecipe(cfg, "1")
    nets = recipe.build()
    recipe.attach(nets)
    assert recipe.phases == ("g", "d") and "perceptual" not in nets.frozen
    data = get_data_kind("pair").dataset(load_prepared(paired_work), "train", 32, "ram", paired_work, False)
    lq_u8, gt_u8, label = data[0]
    assert lq_u8.shape == gt_u8.shape == (3, 32, 32) and lq_u8.dtype == torch.uint8 and isinstance(label, int)
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=2)))
    x, target = recipe.inputs(batch)
    assert x.min() >= -1 and target.max() <= 1 and not torch.equal(x, target)  # input LQ, target GT
    g = recipe.generator_step(x, target, StepContext(0, torch.Generator().manual_seed(1), parts=True))
    assert set(g.parts) == {"conv_out_l1", "conv_out_l2", "conv_out_ssim", "conv_out_disc"}  # the fork's grad_norm/
    assert {"l1", "l2", "ssim", "gan"} <= set(g.logs)
    layer = recipe.grad_norm_layer
    for name, part in g.parts.items():  # every term reaches the last layer: grad_norm/<term> is informative
        (grad,) = torch.autograd.grad(part, layer, retain_graph=True)
        assert grad.norm() > 0, name
    assert all(p.grad is None for p in recipe.discriminator.parameters())  # the G loss leaves D alone
    opt = torch.optim.SGD(recipe.trainable("g"), lr=1e-2)
    before = layer.detach().clone()
    g.total.backward()
    opt.step()
    assert not torch.equal(before, layer)
    d = recipe.discriminator_step(x, target, g, StepContext(0, torch.Generator().manual_seed(1)))
    assert d.total.requires_grad and set(d.logs) == {"logits_real", "logits_fake"}
    rec = recipe.reconstruct(recipe.autoencoder, x)
    assert rec.shape == target.shape and rec.abs().max() <= 1


def test_ssim_term_alone_trains_the_autoencoder(paired_work: Path) -> None:
    """The fork's bug: its (1 - SSIM) had no gradient. Here SSIM alone lowers the loss in a few steps."""
    torch.manual_seed(0)  # the model's initialisation
    cfg = config_from_dict({**TINY, "loss": {**TINY["loss"], "l1_weight": 0, "l2_weight": 0, "gan_weight": 0}})
    recipe = RestorationRecipe(cfg, "1")
    recipe.attach(recipe.build())
    assert recipe.phases == ("g",)  # no GAN weight: no discriminator
    data = get_data_kind("pair").dataset(load_prepared(paired_work), "train", 32, "ram", paired_work, False)
    x, target = recipe.inputs(next(iter(torch.utils.data.DataLoader(data, batch_size=2))))
    opt = torch.optim.Adam(recipe.trainable("g"), lr=2e-3)
    losses = []
    for step in range(5):
        opt.zero_grad()
        g = recipe.generator_step(x, target, StepContext(step, torch.Generator().manual_seed(step)))
        assert set(g.logs) == {"ssim"}
        g.total.backward()
        opt.step()
        losses.append(g.total.item())
    assert losses[-1] < losses[0] - 0.02, losses
    assert F.l1_loss(recipe.reconstruct(recipe.autoencoder, x), target) < 2


def test_step4_trains_on_pairs(paired_work: Path) -> None:
    """The generic module and runner train the restoration recipe on the pair data kind, end to end."""
    from aetune.train.runner import TrainRequest, run_training

    cfg = config_from_dict(TINY)
    result = run_training(TrainRequest(paired_work, cfg, ["1"], accelerator="cpu", progress_bar=False))
    assert result.status == "done"
    ckpt = torch.load(paired_work / "checkpoints/stage1/last.ckpt", weights_only=True)
    assert ckpt["aetune"]["task"] == "restoration" and ckpt["aetune"]["batches_seen"] == 4

    import step5_validate_export as step5
    from aetune.cli import run_main

    args = ["--output_dir", str(paired_work), "--metrics", "--figures", "--device", "cpu", "--no_progress"]
    assert run_main(step5.main, step5.parse_args(args)) == 0
    metrics = json.loads((paired_work / "results/metrics.json").read_text())
    per_type = metrics["quality"]["per_user"] if "quality" in metrics else metrics["per_user"]
    assert set(per_type) == {"Blur", "LowLight", "Noise", "Occlusion"}  # one row per degradation type
    assert all(row["num_images"] == 1 for row in per_type.values())
    figure = Image.open(paired_work / "results/reconstruction_results.png")
    assert figure.width > figure.height  # four panels per row: LQ | output | GT | error


def test_validation_values_per_degradation_type() -> None:
    cfg = config_from_dict({**TINY, "restoration": {"crop_border": 2}})
    recipe = RestorationRecipe(cfg, "1")
    recipe.attach(recipe.build())
    g = torch.Generator().manual_seed(2)
    gt = torch.rand(4, 3, 24, 24, generator=g)
    out = (gt + 0.05 * torch.randn(gt.shape, generator=g)).clamp(0, 1)
    labels = torch.tensor([1, 0, 1, 1])
    values = recipe.validation_values(gt, out, labels, {0: "Blur", 1: "Noise"})
    assert set(values) == {"PSNR", "SSIM", "Blur/PSNR", "Blur/SSIM", "Noise/PSNR", "Noise/SSIM"}  # no LPIPS: none
    from aetune.tasks.restoration.metrics import aggregate_by_type, psnr_y

    torch.testing.assert_close(values["PSNR"], psnr_y(out, gt, crop_border=2))
    assert values["Noise/PSNR"].shape == (3,)
    agg = aggregate_by_type(["Noise", "Blur", "Noise", "Noise"], {"psnr": values["PSNR"], "ssim": values["SSIM"]})
    assert agg["Noise/psnr"] == pytest.approx(values["Noise/PSNR"].mean().item())
    assert agg["Blur/ssim"] == pytest.approx(values["Blur/SSIM"].item())
