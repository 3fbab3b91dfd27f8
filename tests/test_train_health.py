"""The early health gate: the warning's causes from hand numbers, firing once, and across a resume."""

from __future__ import annotations

import dataclasses
import math

import pytest

from aetune.train.health import HealthGate, health_check, loss_weights

VAVAE = {"kl_weight": 1e-6, "perceptual_weight": 1.0, "disc_weight": 0.5, "vf_weight": 0.1}
"""The released VA-VAE weights (reconstruction weight 1, implicit)."""


def test_above_the_bar_is_healthy() -> None:
    assert health_check(25.0, 1000, 24.0, 1e-4, VAVAE) is None
    assert health_check(24.0, 1000, 24.0, 1e-4, VAVAE) is None  # at the bar passes


def test_warning_names_the_competing_weights_ranked_and_is_one_line() -> None:
    w = health_check(18.2, 1000, 24.0, 1e-4, VAVAE)
    assert w is not None and "\n" not in w
    assert w.startswith(
        "HEALTH CHECK FAILED at batch 1000: validation PSNR 18.20 dB is below the preset's bar of 24.00"
    )
    # ratio / threshold: disc 0.5 / 0.1 = 5, perceptual 1 / 0.5 = 2, vf 0.1 / 0.1 = 1, kl 1e-6 / 1e-4 < 1 (not named)
    assert "(1) the adversarial weight disc_weight=0.5 is 0.5x" in w
    assert "(2) the perceptual (LPIPS) weight perceptual_weight=1 is 1x" in w
    assert "(3) the alignment weight vf_weight=0.1 is 0.1x" in w
    assert "kl_weight" not in w and "learning rate" not in w


def test_an_explicit_reconstruction_weight_sets_the_ratios() -> None:
    w = health_check(20.0, 1200, 24.0, 1e-4, {"l1_weight": 0.1, "lpips_weight": 0.1, "kl_weight": 1e-3})
    # KL 1e-3 / 0.1 = 0.01 -> 100x its threshold: ranked before LPIPS (ratio 1 -> 2x its threshold)
    assert "(1) the KL weight kl_weight=0.001 is 0.01x the reconstruction's" in w
    assert "(2) the perceptual (LPIPS) weight lpips_weight=0.1 is 1x" in w
    assert "l1_weight=" not in w


def test_learning_rate_far_off_is_ranked_first() -> None:
    high = health_check(15.0, 1000, 24.0, 1e-2, VAVAE)
    assert "(1) the learning rate 0.01 is high for fine-tuning" in high and "(2) the adversarial" in high
    low = health_check(15.0, 1000, 24.0, 1e-8, {"rec_weight": 1.0})
    assert "(1) the learning rate 1e-08 is too low to move the weights in 1000 batches" in low
    assert "(2)" not in low


def test_zero_reconstruction_weight_and_nothing_standing_out() -> None:
    w = health_check(10.0, 1000, 24.0, 1e-4, {"rec_weight": 0.0, "disc_weight": 0.5})
    assert "(1) the reconstruction weight is 0" in w and "(2) the adversarial weight disc_weight=0.5 is infx" in w
    quiet = health_check(22.0, 1000, 24.0, 1e-4, {"kl_weight": 1e-6})
    assert "No learning rate or loss weight stands out" in quiet


@pytest.mark.parametrize("psnr", [math.nan, math.inf, -math.inf])
def test_non_finite_psnr_fails(psnr: float) -> None:
    assert health_check(psnr, 1000, 24.0, 1e-4, VAVAE) is not None


def test_loss_weights_takes_the_weight_numbers_only() -> None:
    @dataclasses.dataclass
    class Options:
        kl_weight: float = 1e-6
        disc_weight: float = 0.5
        vf_adaptive: bool = True
        use_vf_weight: bool = True  # a switch named like a weight is not one
        distmat_margin: float = 0.25

    assert loss_weights(Options()) == {"kl_weight": 1e-6, "disc_weight": 0.5}


def test_gate_fires_once_at_the_first_validation_at_or_after_its_batch(caplog: pytest.LogCaptureFixture) -> None:
    gate = HealthGate(1000, 24.0, lr=1e-4, weights=VAVAE)
    assert gate.observe(800, {"psnr": 10.0}) is None  # before the gate: not checked, however bad
    result = gate.observe(1200, {"psnr": 18.5, "ssim": 0.5})
    assert result["batches"] == 1200 and result["psnr"] == 18.5 and result["bar"] == 24.0
    assert result["passed"] is False and result["warning"].startswith("HEALTH CHECK FAILED at batch 1200")
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [result["warning"]]
    assert gate.observe(1400, {"psnr": 10.0}) is None


def test_gate_passes_and_stays_quiet_after_a_resume() -> None:
    gate = HealthGate(0, 24.0, lr=1e-4, weights=VAVAE)
    assert gate.observe(200, {"psnr": 30.0}) == {
        "batches": 200, "psnr": 30.0, "bar": 24.0, "passed": True, "warning": None,
    }  # fmt: skip
    resumed = HealthGate(0, 24.0, lr=1e-4, weights=VAVAE)
    resumed.load_state_dict(gate.state_dict())
    assert resumed.observe(400, {"psnr": 5.0}) is None
    fresh = HealthGate(0, 24.0, lr=1e-4, weights=VAVAE)
    fresh.load_state_dict(HealthGate(0, 24.0, lr=1e-4, weights=VAVAE).state_dict())  # saved before it fired
    assert fresh.observe(400, {"psnr": 5.0})["passed"] is False


def test_gate_without_a_bar_is_off_and_needs_psnr() -> None:
    assert HealthGate(0, None, lr=1e-4, weights={}).observe(5000, {"psnr": 1.0}) is None
    with pytest.raises(ValueError, match="needs the validation's psnr"):
        HealthGate(0, 24.0, lr=1e-4, weights={}).observe(10, {"ssim": 0.9})
