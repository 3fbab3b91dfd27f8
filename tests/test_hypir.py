"""The HYPIR generator (``--family hypir``) with tiny random SD2-shaped parts on CPU: the one step against diffusers,
LoRA-only training through ``--task restoration``, exact resume, step 5's LoRA export in HYPIR's layout, the
hypir_demo preset through steps 3-5, and the errors for missing SD2.1-base weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler
from peft import LoraConfig

import step3_prepare_dataset as step3
import step4_train as step4
import step5_validate_export as step5
from aetune.cli import run_main
from aetune.config import load_config
from aetune.errors import AetuneError
from aetune.families.hypir import parts
from aetune.families.hypir.export import CONFIG_FILE, EXPORT_DIR, WEIGHTS_FILE
from aetune.families.hypir.model import LORA_MODULES, HypirGenerator
from aetune.families.hypir.parts import SD2_SCHEDULER, build_parts, empty_prompt_ids
from aetune.families.hypir.weights import SD2_FILES
from aetune.models import CheckpointError, ModelConfigError, create_autoencoder, load_weights
from aetune.models.checkpoint import load_autoencoder_checkpoint
from aetune.recipes import get_recipe
from aetune.recipes.base import StepContext

RANK = 4


def tiny() -> HypirGenerator:
    model = create_autoencoder("hypir", tiny_random=True, lora_rank=RANK)
    assert isinstance(model, HypirGenerator)
    return model


def perturb_lora(model: HypirGenerator, seed: int = 1) -> None:
    """LoRA B starts at zero (the adapter is a no-op): give every LoRA weight a value so tests see it act."""
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in model.lora_names:
            params[name].copy_(0.05 * torch.randn(params[name].shape, generator=g))


def images(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_one_step_equals_a_hand_composition_of_the_diffusers_parts() -> None:
    model = tiny().eval()
    perturb_lora(model)
    x = images()
    fresh = build_parts("", tiny_random=True)  # the same seeded frozen parts: the text encoder the model dropped
    sf = model.vae.config.scaling_factor
    with torch.no_grad():
        z_in = model.vae.encode(x).latent_dist.mode() * sf
        text = fresh.text_encoder(torch.tensor([[998, 999] + [0] * 75]))[0]
        eps = model.unet(z_in, torch.full((2,), 200), encoder_hidden_states=text.expand(2, -1, -1)).sample
        z = DDPMScheduler(**SD2_SCHEDULER).step(eps, 200, z_in).pred_original_sample
        expected = model.vae.decode(z / sf).sample
        got = model(x)
    assert got.shape == (2, 3, 32, 32)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got - model.vae.decode(z_in / sf).sample).abs().max() > 1e-3  # the UNet step does something


def test_training_samples_the_scaled_posterior_as_hypir() -> None:
    model = tiny()
    x = images()
    enc = model.encode(x)
    with torch.no_grad():
        posterior = model.vae.encode(x).latent_dist
    sample = enc.latent_dist.sample(generator=torch.Generator().manual_seed(3))
    reference = posterior.sample(generator=torch.Generator().manual_seed(3)) * model.vae.config.scaling_factor
    torch.testing.assert_close(sample, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(enc.latents, posterior.mode() * model.vae.config.scaling_factor)


def test_empty_prompt_is_sd2s_tokenization() -> None:
    ids = empty_prompt_ids(49408, 77)
    assert ids.shape == (1, 77) and ids[0, :3].tolist() == [49406, 49407, 0] and int(ids[0, 2:].abs().sum()) == 0


def test_lora_is_hypirs_and_float32_and_the_only_trainable_part() -> None:
    model = create_autoencoder("hypir", tiny_random=True, lora_rank=RANK, base_dtype="bfloat16")
    lora = dict(model.named_parameters())
    assert model.lora_names and all(".lora_A." in n or ".lora_B." in n for n in model.lora_names)
    assert {n for n, p in lora.items() if p.requires_grad} == set(model.lora_names)
    assert all(lora[n].dtype == torch.float32 for n in model.lora_names)
    assert model.unet.conv_in.weight.dtype == torch.bfloat16  # frozen base in the storage asked for
    a = lora["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.default.weight"]
    assert a.shape[0] == RANK and float(a.detach().std()) > 0  # gaussian init; B is zero
    targets = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in model.lora_names}
    assert targets == {"to_k", "to_q", "to_v", "0", "conv", "conv1", "conv2", "conv_shortcut", "conv_out"} | {
        "proj_in",
        "proj_out",
        "2",
        "proj",
    }  # fmt: skip  (to_out.0, ff.net.2 and ff.net.0.proj end in 0, 2 and proj)
    assert model.gan_last_layer is lora["unet.conv_out.lora_B.default.weight"]


def test_a_step_through_the_restoration_task_changes_the_lora_only() -> None:
    cfg = load_config("hypir_demo", ["data.image_size=32"])
    recipe = get_recipe("hypir", "restoration")(cfg, "1")
    nets = recipe.build()
    model = nets.autoencoder
    assert isinstance(model, HypirGenerator)
    recipe.attach(nets)
    trained = recipe.trainable("g")
    assert {id(p) for p in trained} == {id(p) for n, p in model.named_parameters() if n in model.lora_names}
    every = {k: v for c, m in model.named_children() for k, v in m.state_dict(prefix=f"{c}.").items()}
    frozen = {k: v.clone() for k, v in every.items() if k not in model.lora_names}
    prompt = model.prompt_embed.clone()
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if n in model.lora_names}
    opt = torch.optim.AdamW(trained, lr=1e-2)
    x, gt = images(seed=1), images(seed=2)
    result = recipe.generator_step(x, gt, StepContext(batch=0, generator=torch.Generator().manual_seed(0)))
    result.total.backward()
    opt.step()
    now = {k: v for c, m in model.named_children() for k, v in m.state_dict(prefix=f"{c}.").items()}
    assert all(torch.equal(now[k], v) for k, v in frozen.items())  # UNet base, VAE: unchanged
    assert torch.equal(model.prompt_embed, prompt)  # the text encoder's output: unchanged
    params = dict(model.named_parameters())
    assert all(not torch.equal(params[n], v) for n, v in lora.items() if ".lora_A." in n)  # every A moved
    assert set(model.state_dict()) == set(model.lora_names)  # checkpoints hold the LoRA alone


def test_the_ema_copy_shares_the_frozen_base() -> None:
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    model = tiny()
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.999))
    assert ema.module.unet.conv_in.weight is model.unet.conv_in.weight
    assert ema.module.vae.decoder.conv_out.weight is model.vae.decoder.conv_out.weight
    params = dict(model.named_parameters())
    copies = dict(ema.module.named_parameters())
    assert all(copies[n] is not params[n] and torch.equal(copies[n], params[n]) for n in model.lora_names)


def test_missing_sd2_weights_name_the_step2_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AetuneError, match=r"step2_download_models.py --only sd21_base_vae.*sd21-base.vae.safetensors"):
        create_autoencoder("hypir", sd2_dir=str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AetuneError, match=r"--only sd21_base_vae.*model.args.sd2_dir"):
        create_autoencoder("hypir")
    with pytest.raises(AetuneError, match="sd2_dir is given but tiny_random is true"):
        create_autoencoder("hypir", sd2_dir=str(tmp_path), tiny_random=True)


@pytest.mark.parametrize(
    ("option", "match"),
    [
        ({"model_t": 1000}, "model_t = 1000 is outside"),
        ({"lora_rank": 0}, "lora_rank must be >= 1"),
        ({"base_dtype": "fp8"}, "base_dtype must be one of"),
        ({"base_model": "stabilityai/sdxl"}, "base_model must be"),
        ({"lora_modules": ["nothing_here"]}, "match no layer"),
    ],
)
def test_bad_options_are_one_line_errors(option: dict, match: str) -> None:
    with pytest.raises(ModelConfigError, match=match):
        create_autoencoder("hypir", tiny_random=True, **option)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("part", ["vae", "unet", "text_encoder"])
def test_step2_files_and_diffusers_folders_load(part: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both layouts of model.args.sd2_dir, on tiny parts (SD2.1-base's built-in configs swapped for the tiny ones)."""
    net = getattr(build_parts("", tiny_random=True), part)
    net.save_pretrained(tmp_path / "snapshot" / part)  # a diffusers snapshot: <part>/config.json + weights
    assert same_weights(parts._load(part, str(tmp_path / "snapshot")), net)
    flat = tmp_path / "models"
    flat.mkdir()
    (tmp_path / "snapshot" / SD2_FILES[part]).rename(flat / f"sd21-base.{part}.safetensors")
    config = json.loads((tmp_path / "snapshot" / part / "config.json").read_text())
    monkeypatch.setitem(parts.SD2_CONFIGS, part, config)
    assert same_weights(parts._load(part, str(flat)), net)  # step 2's flat file, read with the built-in config


def test_lora_files_load_strictly(tmp_path: Path) -> None:
    model = tiny()
    perturb_lora(model)
    path = tmp_path / "state_dict.pth"
    torch.save(model.lora_state_dict(), path)
    other = tiny()
    report = load_weights(other, path)
    assert report.loaded == len(model.lora_names)
    x = images()
    torch.testing.assert_close(other.eval()(x), model.eval()(x), rtol=0, atol=0)
    recipe = get_recipe("hypir", "restoration")(load_config("hypir_demo"), "1")
    recipe.attach(recipe.build())  # --pretrained_path through the task: the family's loader
    assert f"loaded {len(model.lora_names)} tensors" in recipe.load_pretrained(str(path))
    torch.testing.assert_close(recipe.autoencoder.eval()(x), model(x), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="lora_rank"):
        load_weights(create_autoencoder("hypir", tiny_random=True, lora_rank=RANK + 1), path)
    with pytest.raises(CheckpointError, match="lora_modules"):
        load_weights(create_autoencoder("hypir", tiny_random=True, lora_rank=RANK, lora_modules=["to_q"]), path)


# --- steps 3-5 with the hypir_demo preset (shared by the tests below) ---------------------------------------------

FAST = ["--set", "data.image_size=32", "--max_steps", "4", "--set", "train.val_every_n_steps=2"]
FAST += ["--set", "train.checkpoint_every_n_batches=2", "--set", "train.batch_size=2", "--no_progress"]


def step4_run(work: Path, *extra: str) -> int:
    return run_main(step4.main, step4.parse_args(["--output_dir", str(work), "--config", "hypir_demo", *FAST, *extra]))


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """hypir_demo through steps 3-5 (uninterrupted), and the same stopped after 2 batches then resumed."""
    runs = []
    for name in ("whole", "split"):
        work = tmp_path_factory.mktemp(name) / "work"
        args = ["--synthetic", "paired", "--pairs_per_type", "3", "--image_size", "32", "--output_dir", str(work)]
        assert run_main(step3.main, step3.parse_args([*args, "--no_progress"])) == 0
        runs.append(work)
    whole, split = runs
    assert step4_run(whole) == 0
    assert step4_run(split, "--stop_after_batches", "2") == 0
    assert step4_run(split) == 0
    args = ["--output_dir", str(whole), "--metrics", "--export", "--device", "cpu", "--no_progress"]
    assert run_main(step5.main, step5.parse_args(args)) == 0
    return whole, split


def test_hypir_demo_runs_steps_3_to_5(demo_runs: tuple[Path, Path]) -> None:
    whole, _ = demo_runs
    metrics = json.loads((whole / "results/metrics.json").read_text())
    assert set(metrics["per_user"]) == {"Blur", "LowLight", "Noise", "Occlusion"}
    config = json.loads((whole / "results" / EXPORT_DIR / CONFIG_FILE).read_text())
    assert (config["model_t"], config["coeff_t"], config["lora_rank"]) == (200, 200, RANK)
    assert config["lora_modules"] == list(LORA_MODULES) and config["tiny_random"] is True


def test_resume_is_exact(demo_runs: tuple[Path, Path]) -> None:
    a, b = (torch.load(w / "checkpoints/stage1/last.ckpt", weights_only=True)["state_dict"] for w in demo_runs)
    assert a.keys() == b.keys() and any(k.startswith("autoencoder.unet.") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_export_loads_into_a_fresh_unet_with_lora_as_hypirs_enhancer(demo_runs: tuple[Path, Path]) -> None:
    whole, _ = demo_runs
    state = torch.load(whole / "results" / EXPORT_DIR / WEIGHTS_FILE, weights_only=True)
    final = json.loads((whole / "checkpoints/run_state.json").read_text())["final_model"]
    model, _ = load_autoencoder_checkpoint(whole / "checkpoints" / final, family="hypir")
    assert isinstance(model, HypirGenerator)
    unet = build_parts("", tiny_random=True).unet  # HYPIR's SD2Enhancer.init_generator, on the tiny base
    lora = LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian", target_modules=list(LORA_MODULES))
    unet.add_adapter(lora)
    missing, unexpected = unet.load_state_dict(state, strict=False)
    assert unexpected == [] and not [k for k in missing if "lora" in k]
    assert set(state) == {n.removeprefix("unet.") for n in model.lora_names}
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    t, text = torch.full((2,), 200), model.prompt_embed.expand(2, -1, -1)
    with torch.no_grad():
        torch.testing.assert_close(unet(z, t, text).sample, model.unet(z, t, text).sample, rtol=0, atol=0)
    assert any(v.abs().max() > 0 for k, v in state.items() if ".lora_B." in k)  # B starts at 0: trained weights


def test_step2_config_names_the_sd2_parts_unless_the_preset_builds_random_ones() -> None:
    from aetune.config import load_config
    from aetune.setup.weights_registry import weights_for_config

    assert weights_for_config(load_config("hypir"))[:3] == ["sd21_base_unet", "sd21_base_vae", "sd21_base_text_encoder"]
    assert weights_for_config(load_config("hypir_demo")) == []
