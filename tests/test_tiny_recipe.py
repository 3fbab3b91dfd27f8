"""The taesd / taehv recipes: distillation from a teacher file, hand-computed objective, separated gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aetune.config import load_config
from aetune.errors import AetuneError
from aetune.families.tiny.recipe import TinyRecipe, VideoTinyRecipe
from aetune.models import create_autoencoder, get_family
from aetune.models.checkpoint import FINAL_FORMAT, META_KEYS
from aetune.recipes.base import StepContext

STUDENT = ["model.args.width=8", "model.args.latent_channels=32", "model.args.downsample_factor=4"]


def teacher_file(tmp: Path) -> tuple[Path, Path, torch.nn.Module]:
    """A tiny ``kl`` model (32 channels, f4) saved as a final model file, and its latents_stats.pt."""
    torch.manual_seed(1)
    kl = create_autoencoder("kl", **get_family("kl").tiny).eval()
    meta = dict.fromkeys(META_KEYS) | {"family": "kl", "model_config": kl.config, "config": {}, "labels": {}}
    path = tmp / "kl_tiny_final.pt"
    torch.save({"format": FINAL_FORMAT, **meta, "state_dict": kl.state_dict(), "discriminator_state_dict": {}}, path)
    stats = tmp / "latents_stats.pt"
    torch.save({"mean": torch.linspace(-0.5, 0.5, 32).view(1, 32, 1, 1), "std": torch.full((1, 32, 1, 1), 2.0)}, stats)
    return path, stats, kl


def recipe(cls: type, preset: str, *overrides: str) -> TinyRecipe:
    torch.manual_seed(0)
    r = cls(load_config(preset, ["loss.disc_start=-1", *overrides]), "1")
    r.attach(r.build())
    return r


def test_distillation_objective_matches_a_hand_computation(tmp_path: Path) -> None:
    path, stats, kl = teacher_file(tmp_path)
    r = recipe(
        TinyRecipe,
        "taesd_demo",
        *STUDENT,
        "loss.rec_kind=l1",
        f"distill.teacher={path}",
        f"distill.latent_stats={stats}",
        "distill.latents=mode",  # the hand computation below uses the posterior mean (sampling: the cache test)
    )  # the seed's L1 (the demo preset trains with L2)
    assert "teacher" in r.nets.frozen and not any(p.requires_grad for p in r.nets.frozen["teacher"].parameters())
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    out = r.generator_step(x, x, StepContext(batch=0, generator=torch.Generator(), parts=True))

    mean, std = torch.linspace(-0.5, 0.5, 32).view(1, 32, 1, 1), 2.0
    with torch.no_grad():
        z_t = (kl.encode(x).latents - mean) / std  # the teacher's scaled latents
        z_s = r.autoencoder.encode(x).latents
        x_hat = r.autoencoder.decode(z_t).sample  # the student decodes the teacher's latents
        teacher_rec = kl.decode(z_t * std + mean).sample
    want = {
        "enc_distill": 0.1 * (z_s - z_t).pow(2).mean(),
        "dec_distill": 0.1 * (x_hat - teacher_rec).pow(2).mean(),
        "rec": 10.0 * (x_hat - x).abs().mean(),
    }
    assert set(out.parts) == set(want)  # no LPIPS (demo), no GAN (disc_start -1)
    for k, v in want.items():
        torch.testing.assert_close(out.parts[k].detach(), v, rtol=1e-5, atol=1e-6, msg=k)
    torch.testing.assert_close(out.total.detach(), sum(want.values()), rtol=1e-5, atol=1e-6)

    # The halves meet only through the teacher: the encoder learns from the latent MSE alone.
    out.parts["enc_distill"].backward(retain_graph=True)
    assert all(p.grad is None for p in r.autoencoder.decoder.parameters())
    enc_grad = r.autoencoder.encoder[0].weight.grad.clone()
    r.autoencoder.zero_grad()
    out.total.backward()
    torch.testing.assert_close(r.autoencoder.encoder[0].weight.grad, enc_grad)


def test_without_a_teacher_it_trains_end_to_end() -> None:
    r = recipe(TinyRecipe, "taesd_demo")
    assert "teacher" not in r.nets.frozen and r.discriminator is None
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = r.generator_step(x, x, StepContext(batch=0, generator=torch.Generator(), parts=True))
    assert set(out.parts) == {"rec"}
    out.total.backward()
    assert r.autoencoder.encoder[0].weight.grad.abs().sum() > 0  # the reconstruction reaches the encoder


def test_a_teacher_of_another_latent_shape_or_bad_statistics_is_one_error(tmp_path: Path) -> None:
    path, stats, _ = teacher_file(tmp_path)
    with pytest.raises(AetuneError, match=r"32-channel latents at 1/4 resolution, the taesd model 8 at 1/8"):
        recipe(TinyRecipe, "taesd_demo", "model.args.downsample_factor=8", f"distill.teacher={path}")
    torch.save({"mean": torch.zeros(1, 4, 1, 1), "std": torch.ones(1, 4, 1, 1)}, stats)
    with pytest.raises(AetuneError, match="has 4 channels .* the teacher kl has 32"):
        recipe(TinyRecipe, "taesd_demo", *STUDENT, f"distill.teacher={path}", f"distill.latent_stats={stats}")


def test_video_targets_are_the_frames_that_come_back() -> None:
    r = recipe(VideoTinyRecipe, "taehv_demo", "clip.frames=6")
    clips = torch.randint(0, 256, (2, 6, 3, 32, 32), dtype=torch.uint8)
    x, target = r.inputs((clips, torch.tensor([0, 1])))
    assert x.shape == (2, 6, 3, 32, 32) and target.shape == (2 * 5, 3, 32, 32)  # 6 frames -> 2 latents -> 5
    torch.testing.assert_close(target.view(2, 5, 3, 32, 32), x[:, :5])
    out = r.generator_step(x, target, StepContext(batch=0, generator=torch.Generator()))
    assert torch.isfinite(out.total) and r.reconstruct(r.autoencoder, x).shape == target.shape


def test_step5_scores_video_clips_per_frame_and_averages_per_clip(tmp_path: Path) -> None:
    from aetune import metrics
    from aetune.evaluate.evaluator import evaluate_split, to_unit

    torch.manual_seed(0)
    model = create_autoencoder("taehv", **get_family("taehv").tiny).eval()
    clips = torch.randint(0, 256, (3, 6, 3, 16, 16), dtype=torch.uint8)
    data = torch.utils.data.TensorDataset(clips, torch.tensor([0, 1, 1]))
    res = evaluate_split(model, data, batch_size=2, progress=False, keep_examples=[2])
    assert res.per_image["psnr"].shape == (3,) and res.labels.tolist() == [0, 1, 1]
    assert res.stats.num_images == 3 * 2 and res.stats.latent_shape == (4, 2, 2)  # 2 latents per 6-frame clip
    x = clips[2:].float() / 127.5 - 1
    with torch.no_grad():
        fake = to_unit(model(x))[0]  # (5, 3, 16, 16): the frames that come back
    want = metrics.psnr(to_unit(x)[0, :5], fake, y_channel=False).mean()
    assert abs(res.per_image["psnr"][2] - want.item()) < 1e-4
    real0, fake0 = res.examples[2]
    assert real0.shape == (3, 16, 16) and abs(fake0 - fake[0].numpy()).max() < 1e-5


def test_preview_decoder_export_reloads_and_times_both_decoders(tmp_path: Path) -> None:
    import json

    from aetune.families.tiny.export import SPEED_FILE, export_preview_decoder, has_teacher, load_preview_decoder

    path, stats, kl = teacher_file(tmp_path)
    overrides = [*STUDENT, f"distill.teacher={path}", f"distill.latent_stats={stats}"]
    r = recipe(TinyRecipe, "taesd_demo", *overrides)
    meta = {"config": load_config("taesd_demo", overrides).to_dict()}
    assert has_teacher(meta) and not has_teacher({"config": load_config("taesd_demo").to_dict()})
    files = export_preview_decoder(tmp_path, r.autoencoder, meta, 32, torch.device("cpu"), batch=2)
    assert [f.name for f in files] == ["taesd_decoder_for_previews.pt", SPEED_FILE]
    preview = load_preview_decoder(files[0])
    z_raw = torch.randn(2, 32, 8, 8)
    mean = torch.linspace(-0.5, 0.5, 32).view(1, 32, 1, 1)
    with torch.no_grad():
        want = r.autoencoder.decode((z_raw - mean) / 2.0).sample.clamp(-1, 1)
    torch.testing.assert_close(preview(z_raw, normalised=False), want)
    speed = json.loads(files[1].read_text())
    assert speed["tiny_images_per_s"] > 0 and speed["teacher_images_per_s"] > 0
    ratio = speed["tiny_images_per_s"] / speed["teacher_images_per_s"]
    assert speed["speedup"] == pytest.approx(ratio, rel=0.05, abs=0.01)  # both rounded to 2 decimals


def test_steps_4_and_5_with_a_teacher_write_the_preview_decoder(tmp_path: Path) -> None:
    import step5_validate_export as step5
    from aetune.train.runner import TrainRequest, run_training
    from tests.train_helpers import make_work_dir

    path, stats, _ = teacher_file(tmp_path)
    work = make_work_dir(tmp_path, users=2, per_user=4, size=32)
    cfg = load_config(
        "taesd_demo",
        [*STUDENT, f"distill.teacher={path}", f"distill.latent_stats={stats}", "data.image_size=32",
         "train.batch_size=2", "train.stages.1.max_steps=2", "train.val_every_n_steps=2"],
    )  # fmt: skip
    result = run_training(TrainRequest(work, cfg, ["1"], accelerator="cpu", progress_bar=False))
    assert result.status == "done"
    assert step5.main(step5.parse_args(["--output_dir", str(work), "--export", "--no_progress"])) == 0
    assert (work / "results/taesd_decoder_for_previews.pt").is_file()
    assert (work / "results/decoder_speed.json").is_file()


def test_step3_prepares_synthetic_videos(tmp_path: Path) -> None:
    import json

    import step3_prepare_dataset as step3

    argv = [
        "--output_dir",
        str(tmp_path),
        "--synthetic",
        "microdoppler_video",
        "--num_users",
        "2",
        "--image_size",
        "32",
    ]
    assert step3.main(step3.parse_args([*argv, "--no_progress"])) == 0
    dataset = json.loads((tmp_path / "data/dataset.json").read_text())
    split = json.loads((tmp_path / "data/split.json").read_text())
    assert dataset["kind"] == "video" and dataset["num_users"] == 2 and dataset["accepted"][0]["frames"] == 24
    assert len(split["train"]) + len(split["val"]) == 12 and split["val"]


def test_teacher_latents_come_from_the_feature_cache(tmp_path: Path) -> None:
    path, stats, _ = teacher_file(tmp_path)
    r = recipe(
        TinyRecipe, "taesd_demo", *STUDENT, f"distill.teacher={path}", f"distill.latent_stats={stats}",
        "distill.latents=sample",  # the references' (taesd_psnr, the demo's base, takes the mode)
    )  # fmt: skip
    images = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    cache = r.prepare_feature_cache(images.numpy(), tmp_path, torch.device("cpu"), progress=False)
    assert cache is not None and len(cache) == 3
    x = images[:2].permute(0, 3, 1, 2).float() / 127.5 - 1
    moments = r.teacher.moments(x)
    mean, std = moments.chunk(2, dim=1)
    torch.testing.assert_close(mean, r.teacher.latents(x))  # the mode is the posterior mean
    assert std.min() > 0  # the kl teacher has a posterior: there is something to sample
    r.teacher.moments = None  # type: ignore[assignment]  (a batch in the cache must not run the teacher)
    cached = r.teacher_latents(x, generator=torch.Generator().manual_seed(3))
    eps = torch.randn(std.shape, generator=torch.Generator().manual_seed(3))  # the batch generator's draw
    torch.testing.assert_close(cached, mean + std * eps, rtol=1e-3, atol=2e-3)  # float16 rows
    r.cfg.distill.latents = "mode"
    torch.testing.assert_close(r.teacher_latents(x, generator=torch.Generator()), mean, rtol=1e-3, atol=2e-3)
    off = recipe(TinyRecipe, "taesd_demo", *STUDENT, f"distill.teacher={path}", "distill.cache=false")
    assert off.prepare_feature_cache(images.numpy(), tmp_path, torch.device("cpu"), progress=False) is None


def test_teacher_decodes_of_the_mode_come_from_the_cache(tmp_path: Path) -> None:
    """taesd_psnr's regime (decoder distillation, ``distill.latents: mode``): a cached step never runs the teacher's
    decoder and gives the uncached step's loss; with ``sample`` there is no decode cache."""
    path, stats, _ = teacher_file(tmp_path)
    teacher = [*STUDENT, f"distill.teacher={path}", f"distill.latent_stats={stats}", "loss.dec_distill_weight=0.5"]
    images = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    x = images[:2].permute(0, 3, 1, 2).float() / 127.5 - 1

    def step(r: TinyRecipe) -> dict[str, torch.Tensor]:
        out = r.generator_step(x, x, StepContext(batch=0, generator=torch.Generator().manual_seed(3), parts=True))
        return {k: v.detach() for k, v in out.parts.items()}

    uncached = step(recipe(TinyRecipe, "taesd_demo", *teacher))  # taesd_psnr's (the demo's base) latents: mode
    r = recipe(TinyRecipe, "taesd_demo", *teacher)
    r.prepare_feature_cache(images.numpy(), tmp_path, torch.device("cpu"), progress=False)
    assert r.decode_cache is not None and len(r.decode_cache) == 3
    calls = []
    decode = r.teacher.decode
    r.teacher.decode = lambda z: calls.append(z) or decode(z)  # type: ignore[method-assign]  (counting teacher)
    cached = step(r)
    assert calls == []  # the teacher's decoder did not run in the cached step
    assert set(cached) == set(uncached) >= {"dec_distill", "enc_distill", "rec"}
    for k in uncached:
        torch.testing.assert_close(cached[k], uncached[k], rtol=2e-3, atol=1e-4, msg=k)  # float16 rows
    r.teacher_decode(torch.zeros_like(x), r.teacher_latents(torch.zeros_like(x)))  # an image not in the cache
    assert len(calls) == 1  # ... is decoded by the teacher

    s = recipe(TinyRecipe, "taesd_demo", *teacher, "distill.latents=sample")  # the references' draws
    s.prepare_feature_cache(images.numpy(), tmp_path, torch.device("cpu"), progress=False)
    assert s.feature_cache is not None and s.decode_cache is None  # a fresh draw's decode cannot be cached
