"""The restoration task's protocol against the HYPIR fork's: 512 x 512 bilinear pairs scored as scikit-image scores
the fork's transform, native-size validation, ``num_samples_per_type``, paired flips and rotations, and step 5's
Final_Score equal to validation's."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import Tensor, nn
from torchvision import transforms

from aetune.config import config_from_dict
from aetune.data.kinds import get_data_kind
from aetune.data.kinds.pair import register_pair_kind
from aetune.data.paired import load_paired, prepare_paired_dataset
from aetune.errors import AetuneError
from aetune.evaluate.evaluator import evaluate_split
from aetune.evaluate.report import quality_report, restoration_protocol
from aetune.recipes.base import StepContext
from aetune.tasks.restoration import recipe as recipe_module
from aetune.tasks.restoration.recipe import RestorationRecipe
from tests.test_restoration_recipe import TINY

SIZES = {"Blur": (640, 480), "Rain": (300, 200)}
"""Stored (width, height) of each validation type's pair: one shrinks to 512, one grows."""


@pytest.fixture(autouse=True)
def default_pair_kind() -> Iterator[None]:
    """Recipes bind validation options into the ``pair`` kind: give the next test the default one back."""
    yield
    register_pair_kind()


def _smooth(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth random (height, width, 3) uint8 image (structure at several scales, as SSIM needs)."""
    coarse = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)).astype(float)
    return np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)


def _write_pair(folder: Path, name: str, size: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    gt = _smooth(rng, *size)
    lq = np.clip(gt + rng.normal(0, 20, gt.shape), 0, 255).astype(np.uint8)  # the "restored" output of the test
    for side, rgb in (("GT", gt), ("LQ", lq)):
        (folder / side).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(folder / side / f"{name}.png")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Training pairs of 32 px (two per type), validation pairs of SIZES (two of each type, one size per type)."""
    tmp = tmp_path_factory.mktemp("protocol")
    for t, size in SIZES.items():
        for i in range(2):
            _write_pair(tmp / "train" / t, f"p{i}", (32, 32), seed=10 * len(t) + i)
            _write_pair(tmp / "val" / t, f"v{i}", size, seed=100 * len(t) + i)
    prepare_paired_dataset(tmp / "train", tmp / "work", val_root=tmp / "val", progress=False)
    return tmp / "work"


def _skimage_y(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> scikit-image's BT.601 Y in [16, 235] (float)."""
    return rgb2ycbcr(rgb)[..., 0]


def test_validation_at_512_bilinear_equals_skimage_on_the_forks_transform(work: Path) -> None:
    """LQ scored as the output against GT: the pair kind's 512 px images and the metrics equal scikit-image's
    PSNR / SSIM of the fork's own transform (torchvision ``Resize((512, 512))`` of the PIL images)."""
    data = load_paired(work)
    dataset = get_data_kind("pair").dataset(data, "val", 512, "ram", work, False)
    recipe = RestorationRecipe(config_from_dict(TINY), "1")
    recipe.attach(recipe.build())
    lq, gt, labels = next(iter(torch.utils.data.DataLoader(dataset, batch_size=len(dataset))))
    names = {label: name for name, label in data.labels.items()}
    values = recipe.validation_values(gt.float() / 255, lq.float() / 255, labels, names)
    assert set(values) == {"PSNR", "SSIM", "Blur/PSNR", "Blur/SSIM", "Rain/PSNR", "Rain/SSIM"}  # the fork's keys
    fork = transforms.Resize((512, 512))
    psnr, ssim = [], []
    for sample in data.val:
        a, b = (np.asarray(fork(Image.open(p).convert("RGB"))) for p in (data.lq_path(sample), data.gt_path(sample)))
        psnr.append(peak_signal_noise_ratio(_skimage_y(b), _skimage_y(a), data_range=255))
        ssim.append(
            structural_similarity(
                np.round(_skimage_y(a)),
                np.round(_skimage_y(b)),
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=255,
            )  # fmt: skip
        )
    assert lq.shape == (4, 3, 512, 512) and [names[int(v)] for v in labels] == ["Blur", "Blur", "Rain", "Rain"]
    np.testing.assert_allclose(values["PSNR"].numpy(), psnr, atol=1e-4)
    np.testing.assert_allclose(values["SSIM"].numpy(), ssim, atol=1e-6)
    np.testing.assert_allclose(values["Rain/PSNR"].numpy(), psnr[2:], atol=1e-4)
    bicubic = np.asarray(Image.open(data.lq_path(data.val[0])).resize((512, 512), Image.Resampling.BICUBIC))
    assert not np.array_equal(bicubic, lq[0].permute(1, 2, 0).numpy())  # the filter is not incidental


def test_validation_options_are_bound_and_checked_by_the_recipe(work: Path) -> None:
    data = load_paired(work)
    cfg = config_from_dict({**TINY, "restoration": {"num_samples_per_type": 1}})
    RestorationRecipe(cfg, "1")  # binds the options into the pair kind, as step 4 does before its data module
    val = get_data_kind("pair").dataset(data, "val", 64, "ram", work, False)
    assert [val[i][2] for i in range(len(val))] == [data.labels["Blur"], data.labels["Rain"]]  # first pair per type
    RestorationRecipe(config_from_dict({**TINY, "restoration": {"native_val": True}}), "1")
    kind = get_data_kind("pair")
    blur = replace(data, val=[s for s in data.val if s.user == "Blur"])
    val = kind.dataset(blur, "val", 64, "ram", work, False)
    assert len(val) == 2 and val[0][0].shape == val[0][1].shape == (3, 480, 640)  # the stored size, no resize
    assert kind.dataset(data, "train", 16, "ram", work, False)[0][0].shape == (3, 16, 16)  # training: resized
    with pytest.raises(AetuneError, match="native_val needs validation pairs of one size, found 640x480 and 300x200"):
        kind.dataset(data, "val", 64, "ram", work, False)
    with pytest.raises(AetuneError, match="restoration.num_samples_per_type"):
        config_from_dict({**TINY, "restoration": {"num_samples_per_type": 0}})
    with pytest.raises(AetuneError, match="health_min_psnr reads val/psnr"):
        RestorationRecipe(config_from_dict({**TINY, "train": {**TINY["train"], "health_min_psnr": 20.0}}), "1")
    with pytest.raises(AetuneError, match="train.monitor val/Blur/psnr: .* use val/Blur/PSNR"):
        RestorationRecipe(config_from_dict({**TINY, "train": {**TINY["train"], "monitor": "val/Blur/psnr"}}), "1")


def test_paired_flips_and_rotations_keep_lq_and_gt_aligned() -> None:
    cfg = config_from_dict(
        {**TINY, "data": {**TINY["data"], "hflip": True}, "restoration": {"rot90": True}}
    )  # fmt: skip
    recipe = RestorationRecipe(cfg, "1")
    x = torch.arange(64 * 9, dtype=torch.float32).reshape(64, 1, 3, 3).expand(64, 3, 3, 3)  # all pixels distinct
    target = -2.0 * x  # pixelwise a function of x: aligned iff the same transform moved both
    views = {tuple(x[0, 0].rot90(k).flip(-1).flatten().tolist()) for k in range(4)}
    views |= {tuple(x[0, 0].rot90(k).flatten().tolist()) for k in range(4)}
    assert len(views) == 8
    a, b = recipe.augment(x, target, StepContext(0, torch.Generator().manual_seed(0)))
    torch.testing.assert_close(b, -2.0 * a)
    seen = {tuple((a[i, 0] - a[i, 0].min()).flatten().tolist()) for i in range(64)}  # image i's pixels: x[0] + 9 i
    assert seen == views  # every image drew its own: all 8 rotations and flips of the square appear
    off = RestorationRecipe(config_from_dict(TINY), "1")  # both off (the defaults): no change
    a, b = off.augment(x, target, StepContext(0, torch.Generator().manual_seed(0)))
    assert torch.equal(a, x) and torch.equal(b, target)


class MeanAbs(nn.Module):
    """A deterministic LPIPS stand-in: (B, 3, H, W) pairs in [-1, 1] -> (B, 1, 1, 1) mean absolute difference."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)


def test_step5_final_score_equals_validations(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Step 5 scores a restoration model as its validation does: Final_Score from PSNR(Y), SSIM(Y), LPIPS."""
    monkeypatch.setattr(recipe_module, "build_lpips", lambda pretrained: MeanAbs())
    torch.manual_seed(0)
    cfg = config_from_dict({**TINY, "loss": {**TINY["loss"], "lpips_pretrained": True}})
    recipe = RestorationRecipe(cfg, "1")
    recipe.attach(recipe.build())
    model = recipe.autoencoder.eval()
    data = load_paired(work)
    dataset = get_data_kind("pair").dataset(data, "val", 32, "ram", work, False)
    sums: dict[str, float] = {}
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(dataset, batch_size=3):  # as the module: per-batch values
            x, target = recipe.inputs(batch)
            out = recipe.reconstruct(model, x)
            names = {v: k for k, v in data.labels.items()}
            values = recipe.validation_values((target + 1) / 2, (out + 1) / 2, batch[-1], names)
            for k in ("PSNR", "SSIM", "LPIPS", "Final_Score"):
                sums[k] = sums.get(k, 0.0) + float(values[k].sum())
    val = {k: v / len(dataset) for k, v in sums.items()}
    evaluated = evaluate_split(model, dataset, lpips_model=MeanAbs(), progress=False)
    overall = quality_report(evaluated.per_image, evaluated.labels, data.labels, {}, psnr="psnr_y")["overall"]
    assert overall["psnr_y"] == pytest.approx(val["PSNR"], abs=1e-4)
    assert overall["ssim_y"] == pytest.approx(val["SSIM"], abs=1e-6)
    assert overall["final_score"] == pytest.approx(val["Final_Score"], abs=1e-4)
    assert abs(overall["psnr"] - overall["psnr_y"]) > 0.05  # RGB PSNR is another number: the key matters
    protocol = restoration_protocol(cfg.to_dict())
    assert protocol["resolution"].startswith("32x32: LQ and GT resized with Pillow's bilinear")
    assert protocol["crop_border"] == 0 and "training_validation" not in protocol
    cropped = config_from_dict({**TINY, "restoration": {"crop_border": 2}}).to_dict()
    assert "cropped 2 px per side" in restoration_protocol(cropped)["training_validation"]
