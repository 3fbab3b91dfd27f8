"""The frozen timm teacher: grid math, normalisation, frozen state, and weights that are never downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from aetune.errors import AetuneError
from aetune.nn.foundation import FrozenTeacher

REG = "vit_small_patch14_reg4_dinov2.lvd142m"  # 14 px patches, CLS + 4 register tokens


@pytest.fixture(scope="module")
def teacher() -> FrozenTeacher:
    torch.manual_seed(0)
    return FrozenTeacher(REG, pretrained=False)


def test_patch_tokens_on_the_latent_grid(teacher: FrozenTeacher) -> None:
    x = torch.rand(2, 3, 64, 48) * 2 - 1
    feat = teacher(x, grid=(4, 3))  # an f16 latent grid of a 64x48 image
    assert feat.shape == (2, 384, 4, 3) and teacher.embed_dim == 384 and teacher.patch_size == (14, 14)
    # by hand: resize to (4*14, 3*14), drop CLS + 4 registers, tokens row-major over the grid
    tokens = teacher.model.forward_features(F.interpolate(x, size=(56, 42), mode="bilinear", align_corners=False))
    assert tokens.shape[1] == 5 + 12
    torch.testing.assert_close(feat[:, :, 2, 1], tokens[:, 5 + 2 * 3 + 1])
    assert not feat.requires_grad


def test_frozen_and_pinned_to_eval(teacher: FrozenTeacher) -> None:
    parent = torch.nn.Sequential(teacher)
    parent.train()
    assert not teacher.training and not teacher.model.training
    assert not any(p.requires_grad for p in teacher.parameters())


def test_imagenet_normalisation_is_the_teachers_mean_std(teacher: FrozenTeacher) -> None:
    x = torch.rand(1, 3, 28, 28) * 2 - 1
    normed = FrozenTeacher(REG, pretrained=False, normalize="imagenet")
    normed.model.load_state_dict(teacher.model.state_dict())
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(normed(x, grid=(2, 2)), teacher(((x + 1) / 2 - mean) / std, grid=(2, 2)))
    with pytest.raises(ValueError, match="normalize must be one of"):
        FrozenTeacher(REG, pretrained=False, normalize="clip")


def test_pretrained_without_cached_weights_names_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(AetuneError, match=rf"weights of teacher '{REG}' are not in the Hugging Face cache .*"
                       rf"huggingface.co/timm/{REG}/resolve/main/model.safetensors"):  # fmt: skip
        FrozenTeacher(REG, pretrained=True)
    with pytest.raises(AetuneError, match="does not exist"):
        FrozenTeacher(REG, pretrained=True, weights_path=str(tmp_path / "missing.safetensors"))
    with pytest.raises(AetuneError, match="unknown timm model"):
        FrozenTeacher("vit_nonexistent_patch14", pretrained=False)


def test_weights_from_a_local_file(teacher: FrozenTeacher, tmp_path: Path) -> None:
    path = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in teacher.model.state_dict().items()}, path)
    loaded = FrozenTeacher(REG, pretrained=True, weights_path=str(path))
    x = torch.rand(1, 3, 28, 28) * 2 - 1
    torch.testing.assert_close(loaded(x, grid=(2, 2)), teacher(x, grid=(2, 2)))


@pytest.mark.slow
def test_default_teacher_matches_the_vavae_projection() -> None:
    """The released setup: DINOv2 ViT-L/14, 1024 wide, 256 px -> 224 px -> 16x16 patch tokens."""
    from aetune.models import create_autoencoder

    teacher = FrozenTeacher(pretrained=False)
    assert teacher.embed_dim == create_autoencoder("vavae").config["align_dim"] == 1024
    assert teacher(torch.zeros(1, 3, 256, 256), grid=(16, 16)).shape == (1, 1024, 16, 16)
