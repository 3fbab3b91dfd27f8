"""The ``kl3d`` family: our wrapper against MONAI's AutoencoderKL, its options, and the MONAI loss adapters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("monai")
pytest.importorskip("einops")

from monai.networks.nets import AutoencoderKL  # noqa: E402

from aetune.errors import AetuneError  # noqa: E402
from aetune.families.kl3d.losses import SQUEEZENET_FILE, PatchDiscriminator3D, build_perceptual_3d  # noqa: E402
from aetune.families.kl3d.model import KL3DAutoencoder  # noqa: E402
from aetune.models import ModelConfigError, create_autoencoder, get_family  # noqa: E402

# The tiny config with attention switched on at the last level, so the parity covers every block type.
OPTS = {**get_family("kl3d").tiny, "attention_levels": [False, True]}


def tiny(**overrides: object) -> KL3DAutoencoder:
    torch.manual_seed(0)
    model = create_autoencoder("kl3d", **{**OPTS, **overrides})
    assert isinstance(model, KL3DAutoencoder)
    return model


def volumes(batch: int = 2, size: int = 16) -> torch.Tensor:
    return torch.rand(batch, 1, size, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_wrapper_matches_monai_with_the_same_weights() -> None:
    model = tiny().eval()
    c = model._config
    monai_model = AutoencoderKL(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        num_res_blocks=c.num_res_blocks,
        channels=c.channels,
        attention_levels=c.attention_levels,
        latent_channels=c.latent_channels,
        norm_num_groups=c.norm_num_groups,
        use_flash_attention=c.use_flash_attention,
    ).eval()
    monai_model.load_state_dict(model.state_dict(), strict=True)  # the same keys: MONAI's
    x = volumes()
    with torch.no_grad():
        enc = model.encode(x)
        z_mu, z_sigma = monai_model.encode(x)
        assert torch.equal(enc.latents, z_mu)
        assert torch.equal(enc.latent_dist.mean, z_mu)
        assert torch.equal(enc.latent_dist.std, z_sigma)
        assert torch.equal(model.decode(z_mu).sample, monai_model.decode(z_mu))
        assert torch.equal(model(x), monai_model.reconstruct(x))


def test_posterior_and_kl_shapes_and_values() -> None:
    model = tiny().eval()
    x = volumes()
    with torch.no_grad():
        enc = model.encode(x)
    post = enc.latent_dist
    assert model.downsample_factor == 2 and model.latent_channels == 2
    assert enc.latents.shape == (2, 2, 8, 8, 8)
    assert post.logvar.shape == post.std.shape == (2, 2, 8, 8, 8)
    assert post.sample(torch.Generator().manual_seed(0)).shape == (2, 2, 8, 8, 8)
    kl = post.kl()
    assert kl.shape == (2,) and kl.dtype == torch.float32
    want = 0.5 * (post.mean**2 + post.logvar.exp() - 1 - post.logvar).sum(dim=(1, 2, 3, 4))
    torch.testing.assert_close(kl, want)
    assert model.decode(enc.latents).sample.shape == x.shape


def test_default_config_is_the_monai_tutorial_and_rebuilds() -> None:
    model = create_autoencoder("kl3d")
    assert model.config["channels"] == [32, 64, 64] and model.downsample_factor == 4
    assert model.config["attention_levels"] == [False, False, True] and model.latent_channels == 3
    small = tiny()
    rebuilt = create_autoencoder("kl3d", **small.config)
    assert rebuilt.config == small.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in small.state_dict().items()}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"channels": [16, 32, 60], "attention_levels": [False] * 3, "norm_num_groups": 8},
            r"norm_num_groups=8 must divide every entry of channels \[16, 32, 60\], but not 60",
        ),
        ({"channels": [8, 16], "norm_num_groups": 16}, r"norm_num_groups=16 .* but not 8"),
        ({"attention_levels": [True]}, r"attention_levels has 1 entries and channels 2 \(\[8, 16\]\)"),
        ({"latent_channels": 0}, "'latent_channels' must be positive"),
        ({"channels": []}, "non-empty list"),
    ],
)
def test_bad_options_name_the_numbers(overrides: dict, message: str) -> None:
    with pytest.raises(ModelConfigError, match=message):
        create_autoencoder("kl3d", **{**OPTS, **overrides})


def test_bad_shapes_name_the_sizes() -> None:
    model = tiny()
    with pytest.raises(ValueError, match=r"image size 17x16x16 is not a multiple of the downsample factor 2"):
        model.encode(torch.zeros(1, 1, 17, 16, 16))
    with pytest.raises(ValueError, match=r"expects images \(B, 1, D, H, W\), got \(1, 1, 16, 16\)"):
        model.encode(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"decodes latents \(B, 2, d, h, w\)"):
        model.decode(torch.zeros(1, 3, 4, 4, 4))


def test_last_layer_and_checkpointing_give_the_same_gradients() -> None:
    model = tiny()
    assert model.gan_last_layer is model.decoder.blocks[-1].conv.weight
    assert model.gan_last_layer.shape == (1, 8, 3, 3, 3)
    x = volumes(batch=1, size=8)

    def grads() -> list[torch.Tensor]:
        model.zero_grad()
        model(x).square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.set_gradient_checkpointing(True)
    assert model.use_checkpoint
    for a, b in zip(plain, grads(), strict=True):
        torch.testing.assert_close(a, b)


def test_aetune_imports_and_lists_kl3d_without_monai() -> None:
    code = (
        "import sys; sys.modules['monai'] = None\n"
        "from aetune.errors import AetuneError\n"
        "from aetune.models import create_autoencoder, list_families\n"
        "assert 'kl3d' in list_families()\n"
        "try:\n    create_autoencoder('kl3d')\nexcept AetuneError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("monai is not installed (needed for --family kl3d)")


def test_discriminator_returns_patch_logits() -> None:
    torch.manual_seed(0)
    d = PatchDiscriminator3D(in_channels=1, num_layers_d=2, channels=8)
    assert d(volumes(batch=2)).shape == (2, 1, 2, 2, 2)
    with pytest.raises(AetuneError, match="must be positive"):
        PatchDiscriminator3D(num_layers_d=0)


@pytest.mark.filterwarnings("ignore:kl3d perceptual loss with a random")
def test_perceptual_random_backbone_is_frozen_and_leaves_the_hub_dir() -> None:
    hub = torch.hub.get_dir()
    loss = build_perceptual_3d(0.5, pretrained=False)
    assert torch.hub.get_dir() == hub and not loss.pretrained_backbone
    assert not any(p.requires_grad for p in loss.parameters())
    loss.train()
    assert not loss.training and not loss.loss.perceptual_function.training
    x, y = volumes(batch=1, size=20), volumes(batch=1, size=20).flip(2)
    torch.manual_seed(0)
    assert loss(x, x).item() == 0.0
    assert loss(x, y).item() > 0.0
    with pytest.raises(ValueError, match="at least 17 voxels per side, got 16x16x16"):
        loss(volumes(batch=1), volumes(batch=1))


def test_perceptual_pretrained_loads_the_local_file_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torchvision = pytest.importorskip("torchvision")
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    with pytest.raises(AetuneError, match=f"SqueezeNet 1.1 weights at {tmp_path}/checkpoints/{SQUEEZENET_FILE}"):
        build_perceptual_3d(0.25)
    torch.manual_seed(5)
    weights = torchvision.models.squeezenet1_1(weights=None).state_dict()
    (tmp_path / "checkpoints").mkdir()
    torch.save(weights, tmp_path / "checkpoints" / SQUEEZENET_FILE)
    loss = build_perceptual_3d(0.25)
    assert loss.pretrained_backbone and loss.loss.fake_3d_ratio == 0.25
    first_conv = loss.loss.perceptual_function.net.slice1[0].weight
    assert torch.equal(first_conv, weights["features.0.weight"])  # the file we wrote, not a download
    with pytest.raises(AetuneError, match=r"fake_3d_ratio must be in \(0, 1\]"):
        build_perceptual_3d(0.0)


def tiny_cfg(**loss: object):
    """The family's tiny config (``register_schema(tiny=...)``) with ``loss`` overrides."""
    from aetune.config import _merge, config_from_dict, family_schema

    data = _merge({"model": {"family": "kl3d"}}, family_schema("kl3d").tiny, frozenset())
    return config_from_dict(_merge(data, {"loss": loss}, frozenset()))


def built_recipe(**loss: object):
    from aetune.recipes import get_recipe

    torch.manual_seed(0)
    recipe = get_recipe("kl3d")(tiny_cfg(**loss), "1")
    recipe.attach(recipe.build())
    return recipe


@pytest.mark.filterwarnings("ignore:kl3d perceptual loss with a random")
def test_recipe_objectives_match_a_hand_computation() -> None:
    from aetune.recipes import StepContext

    recipe = built_recipe(perceptual_weight=0.3, adversarial_weight=0.5, kl_weight=1e-3, disc_start=2)
    batch = (volumes(batch=2, size=32).half(), torch.zeros(2, dtype=torch.long))
    x, slices = recipe.inputs(batch)
    assert x.dtype == torch.float32 and slices.shape == (64, 3, 32, 32)
    torch.testing.assert_close(slices[33, 0], x[1, 0, 1])  # slice 1 of volume 1, grey in 3 channels
    assert not recipe.phase_active("d", 1) and recipe.phase_active("d", 2)

    def run(batch_index: int):
        ctx = StepContext(batch_index, torch.Generator().manual_seed(7), parts=True)
        return recipe.generator_step(x, slices, ctx)

    g = run(2)
    ae, gen = recipe.autoencoder, torch.Generator().manual_seed(7)
    post = ae.encode(x).latent_dist
    rec = ae.decode(post.sample(generator=gen)).sample
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        perc = recipe.perceptual(rec, x)
    # MONAI's least squares: LeakyReLU(0.05) on the logits, then the squared distance to the target label
    lsq = torch.nn.functional.leaky_relu
    gan = torch.mean((lsq(recipe.discriminator(rec), 0.05) - 1.0) ** 2)
    want = (rec - x).abs().mean() + 1e-3 * post.kl().mean() + 0.3 * perc + 0.5 * gan
    torch.testing.assert_close(g.total, want)
    assert set(g.parts) == {"rec", "kl", "perceptual", "gan"} and "gan_loss" in g.logs
    assert "gan" not in run(1).parts  # before disc_start
    d = recipe.discriminator_step(x, slices, g, StepContext(2, torch.Generator().manual_seed(0)))
    real, fake = lsq(recipe.discriminator(x), 0.05), lsq(recipe.discriminator(rec.detach()), 0.05)
    d_loss = 0.5 * (torch.mean((real - 1) ** 2) + torch.mean(fake**2))
    torch.testing.assert_close(d.total, 0.5 * d_loss)  # times the adversarial weight, as MONAI's notebooks
    torch.testing.assert_close(d.logs["d_loss"], d_loss)
    recipe.loss.d_loss_weighted = False
    torch.testing.assert_close(recipe.discriminator_step(x, slices, g, StepContext(2, torch.Generator())).total, d_loss)
    assert recipe.reconstruct(ae, x).shape == slices.shape
    assert recipe.notes() == {"random_teacher": True, "random_perceptual": True}


def test_a_stage_without_perceptual_loss_builds_no_perceptual_network() -> None:
    recipe = built_recipe(perceptual_weight=0.0, perceptual_pretrained=True)  # no SqueezeNet file needed
    assert recipe.perceptual is None and recipe.phases == ("g", "d")
    assert recipe.notes()["random_teacher"] is False


def test_memory_probe_grid_rows_and_table() -> None:
    from aetune.tools import memory_probe as mp

    args = mp.parse_args(
        ["--family", "kl3d", "--resolution", "32,32,16", "64,64,32", "--batch_size", "1,2", "--channels", "8,16",
         "16,32", "--amp", "off", "--checkpointing", "on,off", "--perceptual", "off,on", "--disc", "off,2x8"]
    )  # fmt: skip
    specs = mp.grid(args)
    assert len(specs) == 2 * 2 * 2 * 2 * 2 * 2  # resolutions, batches, channels, checkpointing, perceptual, D
    assert {tuple(s["sizes"]) for s in specs} == {(32, 32, 16), (64, 64, 32)}
    assert {s["batch_size"] for s in specs} == {1, 2} and {tuple(s["channels"]) for s in specs} == {(8, 16), (16, 32)}
    assert {s["disc"] for s in specs if isinstance(s["disc"], str)} == {"off"}
    with pytest.raises(AetuneError, match="--amp takes on, off or on,off"):
        mp.grid(mp.parse_args(["--family", "kl3d", "--resolution", "8,8,8", "--amp", "yes"]))
    with pytest.raises(AetuneError, match="--resolution items are S or D,H,W, got '8,8'"):
        mp.grid(mp.parse_args(["--family", "kl3d", "--resolution", "8,8,8", "8,8"]))
    gib = 2**30
    ran = {"discriminator": 9, "perceptual": 3}
    rows = [
        (specs[0], {"status": "ok", "peak_rss_over_baseline": 3 * gib, "weights": gib, "step_s": 1.0,
                    "device": "cpu", "forwards": ran}),
        (specs[1], {"status": "oom"}),
        (specs[2], {"status": "ok", "peak_rss_over_baseline": gib, "weights": 0, "step_s": 2.0, "device": "cpu",
                    "forwards": {"discriminator": 0, "perceptual": 0}}),
    ]  # fmt: skip
    table = mp.format_table(rows, target_gb=4).splitlines()
    assert "NOT GPU memory" in table[0] and table[1].split()[:8] == [
        "resolution", "batch", "channels", "amp", "ckpt", "perceptual", "D", "phases"
    ]  # fmt: skip
    cheap, dear, oom = (line.split() for line in table[2:5])
    # projected = weights + peak RSS + 0.5 GiB context; 90 % of 4 GiB = 3.6 GiB usable
    assert (
        cheap[2] == "8,16"
        and cheap[7] == "G"
        and cheap[9:11] == ["1.00", "1.50"]
        and cheap[12:] == ["yes", "(2.1", "left)"]
    )
    assert dear[7] == "G+D+perceptual" and dear[9:11] == ["3.00", "4.50"] and dear[12:] == ["no", "(+0.9)"]
    assert oom[8] == "oom"
    advice = mp.advice(rows, 4).splitlines()
    assert advice[0] == "target 4 GiB (3.6 GiB usable, projected from CPU): 1 of 3 rows fit, fastest first:"
    assert advice[1].startswith("  res=32x32x16, batch=1, channels=8,16") and advice[1].endswith("(2.1 GiB left)")
    gpu_row = {"status": "ok", "max_reserved": 10 * gib, "fixed": 2 * gib, "per_item": 4 * gib}
    assert mp.needed_bytes(gpu_row) == 10 * gib and mp.max_batch(gpu_row, 24 * gib) == 4  # (21.6 - 2) // 4


@pytest.mark.filterwarnings("ignore:kl3d perceptual loss with a random")
def test_memory_probe_measures_the_phases_it_names_over_the_stage_settings() -> None:
    """kl3d's stage 1 is the warm-up (disc_start -1, and kl3d_quality's has no perceptual loss): the probe's
    switches must still run the discriminator and the perceptual network (3 steps: D sees the fake in G's phase,
    real and fake in its own; the perceptual loss runs once a step), and ``--disc off`` must run neither D."""
    from aetune.tools import memory_probe as mp

    def spec(*extra: str) -> dict:
        argv = ["--family", "kl3d", "--config", "kl3d_quality", "--stage", "1", "--resolution", "24,24,24",
                "--channels", "8,16", "--set", "model.args.norm_num_groups=4", "--amp", "off", "--checkpointing",
                "off", *extra]  # fmt: skip
        return mp.grid(mp.parse_args(argv))[0]

    row = mp.measure(spec("--perceptual", "on", "--disc", "2x8"))  # in this process: the subprocess only isolates it
    assert row["status"] == "ok" and row["device"] == "cpu" and row["step_s"] > 0
    assert row["forwards"] == {"discriminator": 9, "perceptual": 3} and mp.phases(row) == "G+D+perceptual"
    assert row["peak_rss_over_baseline"] > 0 and row["weights"] > 0
    warm_up = mp.measure(spec("--perceptual", "off", "--disc", "off"))
    assert warm_up["forwards"] == {"discriminator": 0} and mp.phases(warm_up) == "G"
    bad = mp.run_one({**spec(), "set": ["model.args.norm_num_groups=3"]}, timeout=300)
    assert bad["status"] == "failed (exit 2)" and "norm_num_groups=3 must divide" in bad["detail"]


def test_the_random_backbone_build_leaves_torch_home_in_charge(tmp_path, monkeypatch) -> None:
    """After the temporary hub folder, torch hub follows $TORCH_HOME again (it used to stay pinned)."""
    from aetune.families.kl3d.losses import _hub_dir

    with _hub_dir(tmp_path / "tmp_hub"):
        assert torch.hub.get_dir() == str(tmp_path / "tmp_hub")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    assert torch.hub.get_dir() == str(tmp_path / "home" / "hub")
