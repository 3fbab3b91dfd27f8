"""Every trainable parameter belongs to exactly one optimizer group; the teacher and LPIPS to none."""

from __future__ import annotations

import pytest
import torch

from aetune.losses import build_lpips
from aetune.models import create_autoencoder, get_family
from aetune.nn.foundation import FrozenTeacher
from aetune.nn.patchgan import NLayerDiscriminator


def test_parameter_ownership() -> None:
    model = create_autoencoder("vavae", **get_family("vavae").tiny)
    model.freeze_encoder_levels(1)
    disc = NLayerDiscriminator(ndf=8)
    teacher = FrozenTeacher("vit_small_patch14_dinov2.lvd142m", pretrained=False)
    with pytest.warns(UserWarning, match="random VGG backbone"):
        lpips = build_lpips(pretrained=False)
    # the layout of the training module: siblings, none hidden inside a loss
    whole = torch.nn.ModuleDict({"autoencoder": model, "discriminator": disc, "teacher": teacher, "lpips": lpips})
    whole.train()
    generator_group = [p for p in model.parameters() if p.requires_grad]  # encoder, decoder, convs, linear_proj
    discriminator_group = [p for p in disc.parameters() if p.requires_grad]
    trainable = {id(p) for p in whole.parameters() if p.requires_grad}
    g_ids, d_ids = {id(p) for p in generator_group}, {id(p) for p in discriminator_group}
    assert not g_ids & d_ids
    assert g_ids | d_ids == trainable
    assert id(model.linear_proj.weight) in g_ids
    assert not {id(p) for p in teacher.parameters()} & trainable
    assert not {id(p) for p in lpips.parameters()} & trainable
    assert not teacher.training and not lpips.training
    assert sum(p.numel() for p in teacher.parameters()) > 0 and sum(p.numel() for p in lpips.parameters()) > 0
