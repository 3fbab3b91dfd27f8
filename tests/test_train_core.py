"""The training core's smaller guarantees: EMA starts from the loaded weights, FSDP is refused with one line,
LPIPS runs in float32 under autocast, the fast attention hands contiguous q/k/v to SDPA, stage-order advice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from aetune.errors import AetuneError
from aetune.losses import build_lpips
from aetune.models.checkpoint import read_checkpoint, split_stage_checkpoint
from aetune.nn.ldm import AttnBlock
from aetune.train.module import AutoencoderModule
from aetune.train.plan import RunState, check_order
from aetune.train.precision import FSDP_REFUSAL, plan_devices
from aetune.train.runner import TrainRequest, run_training
from tests.train_helpers import make_work_dir, tiny_config, tiny_preset

ROOT = Path(__file__).resolve().parent.parent


def test_ema_starts_from_the_loaded_weights_and_validation_scores_the_live_ones(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "train.ema.decay=0.99", "train.ema.start_batch=100")
    module = AutoencoderModule(cfg, "1", 4, 1e-3, {})
    loaded = {k: torch.randn_like(v) for k, v in module.autoencoder.state_dict().items()}
    module.autoencoder.load_state_dict(loaded)
    assert module.eval_autoencoder is module.autoencoder  # nothing averaged yet: the live weights
    module.reset_ema()
    for k, v in module.ema.module.state_dict().items():
        assert torch.equal(v, loaded[k]), k
    assert int(module.ema.n_averaged) == 0 and module.eval_autoencoder is module.autoencoder


def test_a_stage_ending_before_the_ema_starts_exports_its_live_weights(tmp_path: Path) -> None:
    """Stage 2 (EMA from batch 100, never reached) starts from stage 1's weights: its average holds them, not the
    random initialisation, and its checkpoint and final model give the trained live weights."""
    work = make_work_dir(tmp_path)
    cfg = tiny_config(tmp_path, "train.stages.2.ema.decay=0.99", "train.stages.2.ema.start_batch=100")
    assert run_training(TrainRequest(work, cfg, ["1", "2"], accelerator="cpu", progress_bar=False)).status == "done"
    s1 = read_checkpoint(work / "checkpoints/stage1/last.ckpt")["state_dict"]
    s2 = read_checkpoint(work / "checkpoints/stage2/last.ckpt")
    key = "decoder.conv_out.weight"
    assert torch.equal(s2["state_dict"][f"ema.module.{key}"], s1[f"autoencoder.{key}"])  # the loaded weights
    assert int(s2["state_dict"]["ema.n_averaged"]) == 0
    live, _, _ = split_stage_checkpoint(s2, "stage2")
    assert torch.equal(live[key], s2["state_dict"][f"autoencoder.{key}"])
    final = torch.load(next((work / "checkpoints").glob("*_final.pt")), weights_only=True)["state_dict"]
    assert torch.equal(final[key], s2["state_dict"][f"autoencoder.{key}"])


def test_fsdp_is_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(AetuneError, match="--strategy fsdp is not supported yet"):
        plan_devices("cpu", None, None, tmp_path, strategy="fsdp")
    work, preset = make_work_dir(tmp_path), tiny_preset(tmp_path)
    cmd = [sys.executable, str(ROOT / "step4_train.py"), "--config", str(preset), "--output_dir", str(work),
           "--accelerator", "cpu", "--no_progress", "--strategy", "fsdp"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and out.stderr.strip() == f"error: {FSDP_REFUSAL}"
    assert not (work / "checkpoints").exists()


def test_lpips_runs_in_float32_under_autocast() -> None:
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="random VGG"):
        lpips = build_lpips(pretrained=False)
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    reference = lpips(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = lpips(x.bfloat16(), y.bfloat16())
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, lpips(x.bfloat16().float(), y.bfloat16().float()), rtol=0, atol=0)
    assert reference.dtype == torch.float32


def test_fast_attention_passes_contiguous_qkv(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA's fused SDPA kernels need a unit-stride last dimension; a transposed view would fall back to math."""
    seen = []
    real = F.scaled_dot_product_attention

    def sdpa(q, k, v, *args, **kwargs):
        seen.append([t.is_contiguous() for t in (q, k, v)])
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
    block = AttnBlock(32)
    block.kernels = "fast"
    block(torch.randn(2, 32, 4, 4))
    assert seen == [[True, True, True]]


def test_a_stage_out_of_order_suggests_every_stage_still_to_run(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    with pytest.raises(AetuneError, match=r"run --stages 1,2,3,"):
        check_order(["3"], RunState("vavae", None, "tiny", True), cfg, allow_gap=False)
    with pytest.raises(AetuneError, match=r"run --stages 2,3,"):
        check_order(["3"], RunState("vavae", None, "tiny", True, stages_done=["1"]), cfg, allow_gap=False)


def test_the_origin_is_decided_by_the_session_that_trains_the_first_batch(tmp_path: Path) -> None:
    from aetune.train.runner import decide_origin

    cfg = tiny_config(tmp_path)
    state = RunState("vavae", None, "tiny", True)
    state.record("1")  # a first attempt that stopped before any checkpoint (e.g. a wrong --pretrained_path)
    decide_origin(state, TrainRequest(tmp_path, cfg, ["1"], pretrained_path=tmp_path / "released.pt"))
    assert state.origin == "pretrained"
    decide_origin(state, TrainRequest(tmp_path, cfg, ["1"]))  # then from scratch: re-decided
    assert state.origin == "scratch"
    state.record("1").batches = 3  # it trained and saved: fixed from now on
    with pytest.raises(AetuneError, match=r"stage 1 started from random weights.*cannot change that mid-stage"):
        decide_origin(state, TrainRequest(tmp_path, cfg, ["1"], pretrained_path=tmp_path / "released.pt"))
    state.stages_done.append("1")  # later stages start from stage 1's weights: the flag is only unused
    decide_origin(state, TrainRequest(tmp_path, cfg, ["2"], pretrained_path=tmp_path / "released.pt"))
    assert state.origin == "scratch"


def test_a_resume_that_fails_on_a_truncated_checkpoint_records_no_experiment(tmp_path: Path) -> None:
    work = make_work_dir(tmp_path)
    cfg = tiny_config(tmp_path)
    first = run_training(TrainRequest(work, cfg, ["1"], accelerator="cpu", progress_bar=False, stop_after_batches=2))
    assert first.status == "session_limit"
    experiments = work / "checkpoints/experiments.yaml"
    before = experiments.read_text()
    last = work / "checkpoints/stage1/last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(AetuneError, match="last.ckpt"):
        run_training(TrainRequest(work, cfg, ["1"], accelerator="cpu", progress_bar=False))
    assert experiments.read_text() == before


def test_a_task_run_is_named_for_its_task(tmp_path: Path) -> None:
    from aetune.evaluate.export import lightningdit_export_name
    from aetune.evaluate.report import figure_title
    from aetune.train.artifacts import final_model_path

    assert final_model_path(tmp_path, "kl", "pairs", "restoration").name == "kl_restoration_pairs_final.pt"
    assert final_model_path(tmp_path, "vavae", "microdoppler").name == "vavae_microdoppler_final.pt"
    meta = {"family": "kl", "dataset": "pairs", "stage": "1", "config": {"model": {"task": "restoration"}}}
    assert figure_title(meta, "val").startswith("kl restoration / pairs / stage 1")
    assert lightningdit_export_name("kl", "pairs", "restoration") == "kl_restoration_pairs_lightningdit.pt"
    assert lightningdit_export_name("vavae", "microdoppler") == "vavae_microdoppler_lightningdit.pt"


def test_a_family_on_another_data_kind_is_one_error(tmp_path: Path) -> None:
    """taehv trains on videos: a work directory step 3 filled with images is refused before anything is built."""
    work = make_work_dir(tmp_path)
    cfg = tiny_config(tmp_path)
    cfg.model.family = "taehv"
    with pytest.raises(AetuneError, match=r"step 3 prepared image data .* taehv trains on video data"):
        run_training(TrainRequest(work, cfg, ["1"], accelerator="cpu", progress_bar=False))
    cfg.model.family, cfg.model.task = "kl", "restoration"
    with pytest.raises(AetuneError, match=r"step 3 prepared image data .* kl restoration trains on pair data"):
        run_training(TrainRequest(work, cfg, ["1"], accelerator="cpu", progress_bar=False))
    assert not (work / "checkpoints").exists()


def test_gpu_kernel_settings_follow_the_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    """cudnn.benchmark on any GPU; TF32 matmuls only under mixed precision (fp32 keeps float32 matmuls)."""
    from aetune.train.precision import DevicePlan, configure_kernels

    for flag in ("cudnn.benchmark", "cuda.matmul.allow_tf32"):
        owner, name = flag.rsplit(".", 1)
        obj = torch.backends.cudnn if owner == "cudnn" else torch.backends.cuda.matmul
        monkeypatch.setattr(obj, name, False)
    configure_kernels(DevicePlan("cpu", 1, 1, "32-true", ""))
    assert not torch.backends.cudnn.benchmark
    configure_kernels(DevicePlan("gpu", [0], 1, "32-true", ""))
    assert torch.backends.cudnn.benchmark and not torch.backends.cuda.matmul.allow_tf32
    configure_kernels(DevicePlan("gpu", [0], 1, "bf16-mixed", ""))
    assert torch.backends.cuda.matmul.allow_tf32


def test_host_keys_equal_the_hashes_the_cache_lookup_computes(tmp_path: Path) -> None:
    """The feature cache is looked up with hashes taken on the host before the transfer: they must be the hashes of
    the images the step feeds the network (``to_uint8`` of the model-range input), or the cache would miss."""
    from aetune.data.feature_cache import fingerprint, to_uint8
    from aetune.families.vavae.recipe import VAVAERecipe

    recipe = VAVAERecipe(tiny_config(tmp_path), "1")
    recipe.feature_cache = object()  # any cache: host_keys only checks that one is in use
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    x, _ = recipe.inputs((images, torch.zeros(3)))
    assert torch.equal(recipe.host_keys((images, torch.zeros(3))), fingerprint(to_uint8(x)))
    recipe.feature_cache = None
    assert recipe.host_keys((images, torch.zeros(3))) is None


def test_rfid_runs_inception_on_the_training_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import aetune.train.runner as runner

    seen = []
    monkeypatch.setattr(runner, "build_fid_tracker", lambda weights, random_weights, device: (seen.append(device), 0))
    runner.build_rfid(tiny_config(tmp_path, "train.rfid_images=4"), tmp_path, "cuda")
    assert seen == ["cuda"]
