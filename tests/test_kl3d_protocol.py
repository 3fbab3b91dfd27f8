"""kl3d against MONAI's 3-D LDM protocol (issue 22): the presets' numbers, per-volume validation scores, and the
generator's Adam state carried from the warm-up stage into the adversarial one."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("monai")

from aetune.config import _merge, family_schema, load_config  # noqa: E402
from aetune.data.kinds.volume import axial_slices, volumes_from_slices  # noqa: E402
from aetune.errors import AetuneError  # noqa: E402
from aetune.families.kl3d.metrics import volume_l1, volume_psnr, volume_ssim  # noqa: E402
from aetune.metrics import psnr  # noqa: E402
from aetune.train.module import AutoencoderModule, carry_optimizer_state  # noqa: E402
from aetune.train.runner import TrainRequest, run_training  # noqa: E402
from tests.family_fixtures import TINY_DATA  # noqa: E402


def test_the_default_preset_is_the_monai_3d_ldm_first_stage() -> None:
    cfg = load_config("kl3d")
    warm_up, gan = cfg.stage_loss("1"), cfg.stage_loss("2")
    for loss in (warm_up, gan):
        assert (loss.l1_weight, loss.kl_weight, loss.perceptual_weight) == (1.0, 1e-6, 0.001)
        assert (loss.fake_3d_ratio, loss.adversarial_weight, loss.adversarial_criterion) == (0.2, 0.01, "least_squares")
        assert loss.d_loss_weighted is True
    assert (warm_up.disc_start, gan.disc_start) == (-1, 0)
    # the notebook's `epoch > 5` over 100 epochs: epochs 0..5 without the adversarial part, 94 with it
    assert [cfg.stage(s).epochs for s in ("1", "2")] == [6, 94]
    assert [cfg.stage(s).carry_optimizer for s in ("1", "2")] == [False, True]
    assert cfg.train.learning_rate == cfg.train.d_learning_rate == 1e-4
    assert cfg.stage_optimizer("2", "g").betas == cfg.stage_optimizer("2", "d").betas == [0.9, 0.999]
    assert cfg.discriminator.norm == "BATCH"


def test_the_ae_notebook_preset_keeps_the_former_numbers_and_the_others_follow_the_ldm() -> None:
    ae = load_config("kl3d_ae_notebook")
    loss = ae.stage_loss("1")
    assert (loss.kl_weight, loss.perceptual_weight, loss.fake_3d_ratio, loss.adversarial_weight) == (
        1e-8,
        1.0,
        0.25,
        0.02,
    )
    assert loss.disc_start == 0 and list(ae.train.stages) == ["1"] and ae.stage("1").epochs == 50
    assert (ae.train.learning_rate, ae.train.d_learning_rate) == (1e-4, 5e-4)
    assert ae.model.args["channels"] == [32, 64, 64] and ae.model.args["norm_num_groups"] == 32
    assert (ae.discriminator.num_layers_d, ae.discriminator.channels, ae.discriminator.norm) == (3, 32, "BATCH")
    quality = load_config("kl3d_quality")
    assert quality.stage_loss("3").perceptual_weight == 0.001 and quality.stage_loss("3").fake_3d_ratio == 0.2
    assert [quality.stage(s).carry_optimizer for s in ("1", "2", "3")] == [False, False, True]
    assert load_config("kl3d_demo").stage_loss("1").perceptual_weight == 0.0  # no SqueezeNet weights offline


def test_slices_regroup_into_their_volumes() -> None:
    v = torch.rand(2, 1, 5, 12, 13, generator=torch.Generator().manual_seed(0))
    assert torch.equal(volumes_from_slices(axial_slices(v), 2), v)
    with pytest.raises(ValueError, match="10 slices do not split into 3 volumes"):
        volumes_from_slices(axial_slices(v), 3)


def padded_pair(pad: int, padding_error: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A 16^3 volume in [0, 1] with 0.05 noise on its content, plus ``pad`` empty slices on each side whose
    reconstruction is off by ``padding_error`` (0: exactly reproduced padding)."""
    g = torch.Generator().manual_seed(0)
    content = torch.rand(1, 1, 16, 16, 16, generator=g) * 0.8 + 0.1
    rec = content + 0.05 * torch.randn(content.shape, generator=g)
    empty = torch.zeros(1, 1, pad, 16, 16)
    real = torch.cat([empty, content, empty], dim=2)
    fake = torch.cat([empty + padding_error, rec, empty + padding_error], dim=2)
    return real, fake


def test_volume_psnr_is_not_gamed_by_exactly_reproduced_padding() -> None:
    """The issue's case: a model that gets only the padding right. The slice mean jumps by tens of dB (each empty
    slice reads the 100 dB cap); the volume PSNR moves by the squared error the padding really removed."""
    noisy, exact = padded_pair(16, 0.01), padded_pair(16, 0.0)
    slice_gain = (psnr(*map(axial_slices, exact)).mean() - psnr(*map(axial_slices, noisy)).mean()).item()
    volume_gain = (volume_psnr(*exact) - volume_psnr(*noisy)).item()
    err_content = (exact[1] - exact[0]).pow(2).sum().item()
    err_padding = 2 * 16 * 16 * 16 * 0.01**2
    assert slice_gain > 30.0
    assert volume_gain == pytest.approx(10 * math.log10((err_content + err_padding) / err_content), abs=1e-3)
    assert volume_gain < 1.0
    # and the padding voxels count as voxels, nothing more: PSNR = 10 log10(voxels / squared error)
    assert volume_psnr(*exact).item() == pytest.approx(10 * math.log10(exact[0].numel() / err_content), abs=1e-3)


def test_volume_scores_match_their_definitions() -> None:
    real, fake = padded_pair(0, 0.0)
    torch.testing.assert_close(volume_l1(real, fake), (real - fake).abs().mean().reshape(1))
    assert volume_psnr(real, real).item() == pytest.approx(100.0)  # the cap, for identical volumes only
    assert volume_ssim(real, real).item() == pytest.approx(1.0)
    assert 0.0 < volume_ssim(real, fake).item() < 0.99
    small = torch.rand(2, 1, 6, 12, 16)  # shorter than MONAI's window of 11 along D: a window of 5 there
    assert volume_ssim(small, small).shape == (2,) and torch.allclose(volume_ssim(small, small), torch.ones(2))


def test_validation_scores_volumes_and_keeps_the_slices_as_extra_keys() -> None:
    from aetune.recipes import get_recipe

    cfg = load_config("kl3d_demo")
    recipe = get_recipe("kl3d")(cfg, "1")
    real, fake = padded_pair(4, 0.0)
    real, fake = torch.cat([real, fake]), torch.cat([fake, fake])  # volume 2 reconstructed exactly
    values = recipe.validation_values(axial_slices(real), axial_slices(fake), torch.tensor([0, 1]), {})
    assert set(values) == {"psnr", "ssim", "l1_loss", "psnr_slices", "ssim_slices"}
    torch.testing.assert_close(values["psnr"], volume_psnr(real, fake))
    torch.testing.assert_close(values["ssim"], volume_ssim(real, fake))
    assert values["psnr"][1].item() == pytest.approx(100.0) and values["l1_loss"][1].item() == 0.0
    assert values["psnr_slices"].shape == (2 * 24,) and values["ssim_slices"].shape == (2 * 24,)
    with pytest.raises(ValueError, match="needs the batch's labels"):
        recipe.validation_values(axial_slices(real), axial_slices(fake), None, {})


def test_carry_optimizer_state_keeps_the_moments_and_takes_the_new_settings() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    before = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.5, 0.9))
    for _ in range(3):
        net(torch.randn(5, 3)).square().mean().backward()
        before.step()
    after = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.9, 0.999))
    carry_optimizer_state(after, before.state_dict(), "g")
    for p in net.parameters():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(after.state[p][key], before.state[p][key]), key
    assert after.param_groups[0]["lr"] == 1e-4 and after.param_groups[0]["betas"] == (0.9, 0.999)
    other = torch.optim.Adam(torch.nn.Linear(3, 4).parameters())
    with pytest.raises(AetuneError, match="holds 4 parameters, this stage trains 2"):
        carry_optimizer_state(other, before.state_dict(), "g")
    wider = torch.optim.Adam(torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 2)).parameters())
    with pytest.raises(AetuneError, match=r"has shape \(4, 3\) where this stage's parameter is \(5, 3\)"):
        carry_optimizer_state(wider, before.state_dict(), "g")


@pytest.mark.filterwarnings("ignore:kl3d perceptual loss with a random")
def test_the_adversarial_stage_starts_with_the_warm_up_stage_adam_moments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two stages as the kl3d preset (warm-up without D, then D on with carry_optimizer): the generator's Adam
    state when stage 2 starts training equals stage 1's last state; without the option it starts empty."""
    plan = {
        "1": {"epochs": 1, "max_steps": 2, "loss": {"disc_start": -1}},
        "2": {"epochs": 1, "max_steps": 1, "loss": {"disc_start": 0}, "carry_optimizer": True},
    }
    run = {"data": {"image_size": 32, "num_workers": 0}, "loss": {"perceptual_weight": 0.0},
           "train": {"batch_size": 2, "precision": "32", "val_every_n_steps": 100, "stages": plan}}  # fmt: skip
    data = _merge(_merge({"model": {"family": "kl3d"}}, family_schema("kl3d").tiny, frozenset()), run, frozenset())
    preset = tmp_path / "kl3d_two_stages.yaml"
    preset.write_text(yaml.safe_dump(data), encoding="utf-8")
    seen: dict[str, tuple[dict, dict]] = {}
    work = tmp_path
    real_start = AutoencoderModule.on_train_start

    def on_train_start(self: AutoencoderModule) -> None:
        real_start(self)
        if self.stage == "2":  # stage 1's checkpoint still holds its optimizer state (pruned once stage 2 is done)
            before = torch.load(work / "checkpoints/stage1/last.ckpt", weights_only=True)["optimizer_states"][0]
            seen["2"] = (before, copy.deepcopy(self._optimizers()[0].optimizer.state_dict()))  # training updates it

    monkeypatch.setattr(AutoencoderModule, "on_train_start", on_train_start)
    for carry in (True, False):
        work = TINY_DATA["volume"](tmp_path / f"carry_{carry}")
        cfg = load_config(str(preset), [f"train.stages.2.carry_optimizer={str(carry).lower()}"])
        out = run_training(TrainRequest(work, cfg, ["1", "2"], accelerator="cpu", progress_bar=False))
        assert out.status == "done"
        before, after = seen.pop("2")
        if carry:
            assert before["state"] and before["state"].keys() == after["state"].keys()
            for i, state in before["state"].items():
                assert int(state["step"]) == 2  # two warm-up batches, one window each
                for key in ("exp_avg", "exp_avg_sq", "step"):
                    assert torch.equal(after["state"][i][key], state[key]), (i, key)
            assert after["param_groups"][0]["betas"] == tuple(cfg.stage_optimizer("2", "g").betas)
        else:
            assert after["state"] == {}


def test_a_checkpoint_without_optimizer_state_is_one_error_line() -> None:
    from aetune.train.runner import carried_optimizer_states

    states = carried_optimizer_states({"optimizer_states": [{"g": 1}, {"d": 2}]}, ("g", "d"), Path("s1/last.ckpt"))
    assert states == {"g": {"g": 1}, "d": {"d": 2}}
    with pytest.raises(AetuneError, match=r"s1/last.ckpt holds 0 optimizer states, this stage has 2 phases \(g, d\)"):
        carried_optimizer_states({}, ("g", "d"), Path("s1/last.ckpt"))
