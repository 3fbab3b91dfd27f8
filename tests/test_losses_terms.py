"""The loss terms one by one, against formulas written out independently here."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from aetune.errors import AetuneError
from aetune.losses import (
    adaptive_weight,
    build_lpips,
    generator_loss,
    hinge_d_loss,
    kl_loss,
    nll_loss,
    vf_loss,
    vf_loss_parts,
)
from aetune.models import DiagonalGaussian


class ConstantPerceptual(torch.nn.Module):
    """Stands in for LPIPS: distance 0.25 for image 0, 0.5 for image 1, (B, 1, 1, 1) like lpips."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.tensor([0.25, 0.5]).view(2, 1, 1, 1) + 0 * (x - y).sum()


def test_nll_is_l1_summed_per_image_plus_lpips_broadcast_per_pixel() -> None:
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    x_rec = torch.rand(2, 3, 8, 8) * 2 - 1
    nll, rec = nll_loss(x, x_rec)
    l1 = (x - x_rec).abs()
    torch.testing.assert_close(nll, l1.sum() / 2)
    torch.testing.assert_close(rec, l1.mean())
    nll_p, rec_p = nll_loss(x.half(), x_rec.bfloat16(), ConstantPerceptual(), perceptual_weight=2.0)
    l1 = (x.half().float() - x_rec.bfloat16().float()).abs()
    # LightningDiT adds the (B,1,1,1) LPIPS value to every pixel: it weighs C*H*W = 192 times per image
    torch.testing.assert_close(nll_p, l1.sum() / 2 + 2.0 * 192 * (0.25 + 0.5) / 2)
    torch.testing.assert_close(rec_p, l1.mean() + 2.0 * (0.25 + 0.5) / 2)
    assert nll_p.dtype == torch.float32
    with pytest.raises(ValueError, match="needs a perceptual network"):
        nll_loss(x, x_rec, None, perceptual_weight=1.0)


def test_kl_is_per_image_sum_over_batch_size() -> None:
    moments = torch.randn(3, 8, 4, 4, dtype=torch.bfloat16)
    post = DiagonalGaussian(moments)
    mean, logvar = moments.float()[:, :4], moments.float()[:, 4:]
    per_image = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3))
    kl = kl_loss(post)
    assert kl.dtype == torch.float32
    torch.testing.assert_close(kl, per_image.sum() / 3, rtol=1e-2, atol=1e-2)  # bf16 exp rounding
    clamped = DiagonalGaussian(torch.cat([torch.zeros(1, 2, 1, 1), torch.tensor([[[[-50.0]], [[40.0]]]])], 1))
    assert clamped.logvar.flatten().tolist() == [-30.0, 20.0]


def test_hinge_and_generator_terms() -> None:
    real = torch.tensor([[[[2.0, 0.5]]]])
    fake = torch.tensor([[[[-3.0, 0.0]]]])
    # real: relu(1-2)=0, relu(1-0.5)=0.5 -> 0.25; fake: relu(1-3)=0, relu(1+0)=1 -> 0.5
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0.25 + 0.5))
    assert generator_loss(fake.half()).item() == pytest.approx(1.5)
    assert generator_loss(fake.half()).dtype == torch.float32


def test_adaptive_weight_is_the_clamped_gradient_norm_ratio() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    nll = (3 * w).sum()  # grad (3, 3): norm 3 sqrt 2
    term = (w**2).sum()  # grad (2, 4): norm sqrt 20
    got = adaptive_weight(nll, term, w, max_weight=1e4)
    assert got.item() == pytest.approx(3 * 2**0.5 / (20**0.5 + 1e-4))
    assert not got.requires_grad and w.grad is None
    assert adaptive_weight(nll, 1e-9 * term, w, max_weight=10.0).item() == 10.0
    with torch.no_grad():
        assert adaptive_weight((3 * w).sum(), (w**2).sum(), w, 1e4).item() == 0.0
    frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    with pytest.raises(ValueError, match="frozen layer"):
        adaptive_weight(nll, term, frozen, 1e4)


def vf_by_loops(z: torch.Tensor, f: torch.Tensor, md: float, mc: float) -> tuple[float, float]:
    """The VA-VAE margins written token by token (eqs. 2-4), for comparison."""
    b, _, h, w = z.shape
    zs, fs = z.flatten(2), f.flatten(2)
    cos = torch.nn.functional.cosine_similarity
    dm, cm = [], []
    for n in range(b):
        for i in range(h * w):
            cm.append(max(0.0, 1 - mc - cos(zs[n, :, i], fs[n, :, i], dim=0).item()))
            for j in range(h * w):
                d = cos(zs[n, :, i], zs[n, :, j], dim=0) - cos(fs[n, :, i], fs[n, :, j], dim=0)
                dm.append(max(0.0, abs(d.item()) - md))
    return sum(dm) / len(dm), sum(cm) / len(cm)


@pytest.mark.parametrize(("md", "mc"), [(0.0, 0.0), (0.1, 0.3)])
def test_vf_parts_match_the_token_formulas(md: float, mc: float) -> None:
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 16, 3, 3, generator=g)
    z = f + 0.8 * torch.randn(2, 16, 3, 3, generator=g)
    distmat, cos = vf_loss_parts(z.bfloat16(), f, md, mc)
    want_d, want_c = vf_by_loops(z.bfloat16().float(), f, md, mc)
    assert distmat.dtype == torch.float32
    assert distmat.item() == pytest.approx(want_d, rel=1e-5) and cos.item() == pytest.approx(want_c, rel=1e-5)
    total = vf_loss(z, f, md, mc, distmat_weight=2.0, cos_weight=0.5)
    d32, c32 = vf_loss_parts(z, f, md, mc)
    torch.testing.assert_close(total, 2.0 * d32 + 0.5 * c32)
    with pytest.raises(ValueError, match=r"projected latents \(2, 16, 3, 3\) and teacher features \(2, 8, 3, 3\)"):
        vf_loss_parts(z, f[:, :8], md, mc)


def test_lpips_random_backbone_warns_and_keeps_the_package_heads() -> None:
    with pytest.warns(UserWarning, match="random VGG backbone"):
        lp = build_lpips(pretrained=False)
    import lpips

    heads = torch.load(Path(lpips.__file__).parent / "weights/v0.1/vgg.pth", map_location="cpu", weights_only=True)
    for key, value in heads.items():
        torch.testing.assert_close(lp.net.state_dict()[key], value)
    torch.nn.Sequential(lp).train()
    assert not lp.training and not any(m.training for m in lp.modules())
    assert not any(p.requires_grad for p in lp.parameters())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    d = lp(x, x.flip(0))
    assert d.shape == (2, 1, 1, 1) and torch.equal(lp(x, x.flip(0)), d)  # deterministic: dropout is off
    torch.testing.assert_close(lp(x, x), torch.zeros(2, 1, 1, 1))


def test_lpips_pretrained_without_cached_vgg_names_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no silent random fallback
        with pytest.raises(AetuneError, match="vgg16-397923af.pth"):
            build_lpips(pretrained=True)
