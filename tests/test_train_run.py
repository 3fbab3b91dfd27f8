"""Step 4 end to end on CPU with a tiny VA-VAE: stage chaining, files, final model, errors, early stopping."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import step4_train
from aetune.config import Config, load_config_file
from aetune.errors import AetuneError
from aetune.models.checkpoint import FINAL_FORMAT, load_autoencoder_checkpoint
from aetune.train.flags import KAGGLE_MAX_HOURS, build_config
from aetune.train.runner import TrainRequest, TrainResult, run_training
from tests.train_helpers import make_work_dir, tiny_config, tiny_preset


def train(work: Path, cfg: Config, stages: list[str], **kw: object) -> TrainResult:
    return run_training(TrainRequest(work, cfg, stages, accelerator="cpu", progress_bar=False, **kw))


@pytest.fixture(scope="module")
def chained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Config, TrainResult, TrainResult]:
    """Session 1 runs stages 1,2; session 2 runs stage 3 (4 batches each, validation every 4)."""
    tmp = tmp_path_factory.mktemp("chain")
    work, cfg = make_work_dir(tmp), tiny_config(tmp)
    return work, cfg, train(work, cfg, ["1", "2"]), train(work, cfg, ["3"])


def test_stages_chain_across_sessions(chained: tuple) -> None:
    work, _, first, second = chained
    assert (first.status, first.stages_done) == ("done", ["1", "2"])
    assert (second.status, second.stages_done) == ("done", ["1", "2", "3"])
    state = json.loads((work / "checkpoints" / "run_state.json").read_text())
    assert [s["stages"] for s in state["sessions"]] == [["1", "2"], ["3"]]
    assert [s["exit"] for s in state["sessions"]] == ["done", "done"]
    assert state["origin"] == "scratch" and state["random_teacher"] is True
    assert state["stages"]["1"]["init"].startswith("random initialisation")
    assert state["stages"]["2"]["init"] == "stage 1 final weights (stage1/last.ckpt)"
    assert state["stages"]["3"]["init"] == "stage 2 final weights (stage2/last.ckpt)"
    assert state["final_model"] == "vavae_tiny_final.pt" and state["current_stage"] is None
    s1 = torch.load(work / "checkpoints/stage1/last.ckpt", weights_only=True)
    s2 = torch.load(work / "checkpoints/stage2/last.ckpt", weights_only=True)
    # Done stages keep weights and metadata, not the optimizer states only a resume needs (disk budget).
    assert "optimizer_states" not in s1 and "optimizer_states" not in s2
    assert set(s1["state_dict"]) == set(s2["state_dict"])
    # global_step counts optimizer steps: one per batch without the GAN, two with it; batches are the unit.
    assert (s1["aetune"]["batches_seen"], s1["global_step"]) == (4, 4)
    assert (s2["aetune"]["batches_seen"], s2["global_step"]) == (4, 8)


def test_stage_folder_layout(chained: tuple) -> None:
    work, cfg, _, _ = chained
    for stage in ("1", "2", "3"):
        folder = work / "checkpoints" / f"stage{stage}"
        assert (folder / "last.ckpt").is_file()
        best = sorted(folder.glob("best-*.ckpt"))
        assert 1 <= len(best) <= 2 and best[0].name.startswith("best-b0000004-psnr")
        assert load_config_file(folder / "config.yaml") == cfg
        history = json.loads((folder / "validation_history.json").read_text())
        assert history["random_teacher"] is True and history["lpips"] is False
        assert [v["batches"] for v in history["validations"]] == [4]  # every 4 batches and at the stage end
        assert 0 < history["validations"][0]["psnr"] < 60 and -1 <= history["validations"][0]["ssim"] <= 1
        assert [p.name for p in (folder / "samples").glob("*.png")] == ["val_b0000004.png"]
        header = (folder / "metrics.csv").read_text().splitlines()[0].split(",")
        assert {"step", "val/psnr", "val/ssim", "train/g_total", "train/rec_loss"} <= set(header)


def test_checkpoints_hold_no_frozen_networks_and_load_weights_only(chained: tuple) -> None:
    work, _, _, _ = chained
    ckpt = torch.load(work / "checkpoints/stage3/last.ckpt", weights_only=True)
    prefixes = {k.split(".")[0] for k in ckpt["state_dict"]}
    assert prefixes == {"autoencoder", "discriminator"}  # no teacher., no perceptual.
    assert ckpt["aetune"]["stage_finished"] is True and ckpt["aetune"]["window"] is None


def test_final_model_format_and_loader(chained: tuple, tmp_path: Path) -> None:
    work, cfg, _, _ = chained
    path = work / "checkpoints" / "vavae_tiny_final.pt"
    final = torch.load(path, weights_only=True)
    assert set(final) == {"format", "family", "model_config", "state_dict", "discriminator_state_dict", "config",
                          "labels", "dataset", "stage", "random_teacher", "lpips"}  # fmt: skip
    assert (final["format"], final["family"], final["dataset"], final["stage"]) == (FINAL_FORMAT, "vavae", "tiny", "3")
    assert final["labels"] == {"ID_1": 0, "ID_2": 1, "ID_3": 2} and final["config"] == cfg.to_dict()
    assert "linear_proj.weight" in final["state_dict"] and final["random_teacher"] is True
    last = torch.load(work / "checkpoints/stage3/last.ckpt", weights_only=True)["state_dict"]
    for k, v in final["state_dict"].items():
        torch.testing.assert_close(v, last[f"autoencoder.{k}"], rtol=0, atol=0)
    best = next((work / "checkpoints/stage3").glob("best-*.ckpt"))
    assert "optimizer_states" not in torch.load(best, weights_only=True)  # weights only: for use, not resuming
    _, best_meta = load_autoencoder_checkpoint(best)
    assert best_meta["stage"] == "3" and best_meta["batches_seen"] == 4
    model, meta = load_autoencoder_checkpoint(path, family="vavae")
    from_ckpt, ckpt_meta = load_autoencoder_checkpoint(work / "checkpoints/stage3/last.ckpt")
    assert not model.training and meta["kind"] == "final" and ckpt_meta["kind"] == "stage"
    assert ckpt_meta["batches_seen"] == 4 and meta["labels"] == ckpt_meta["labels"]
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(x), from_ckpt(x), rtol=0, atol=0)
    with pytest.raises(AetuneError, match="holds a 'vavae' autoencoder, not 'kl'"):
        load_autoencoder_checkpoint(path, family="kl")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(AetuneError, match="not a readable checkpoint"):
        load_autoencoder_checkpoint(broken)
    torch.save({"state_dict": final["state_dict"]}, tmp_path / "plain.pt")
    with pytest.raises(AetuneError, match="not an aetune checkpoint"):
        load_autoencoder_checkpoint(tmp_path / "plain.pt")


def test_stage_out_of_order_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    work, cfg = make_work_dir(tmp_path), tiny_config(tmp_path)
    with pytest.raises(AetuneError, match="stage 3 starts from stage 2's final weights.*--allow_stage_gap"):
        train(work, cfg, ["3"])
    assert not (work / "checkpoints").exists()


def test_early_stopping_ends_the_stage(tmp_path: Path) -> None:
    """lr 0: PSNR never improves, so patience 1 stops after the second validation (batch 2 of 8)."""
    work = make_work_dir(tmp_path)
    sets = ["train.learning_rate=0", "train.val_every_n_steps=1", "train.patience=1", "train.stages.1.epochs=2"]
    result = train(work, tiny_config(tmp_path, *sets), ["1"])
    assert result.status == "done" and result.batches == 2 and result.total_batches == 8
    record = json.loads((work / "checkpoints" / "run_state.json").read_text())["stages"]["1"]
    assert record["early_stopped"] is True and record["batches"] == 2 and record["status"] == "done"
    history = json.loads((work / "checkpoints/stage1/validation_history.json").read_text())["validations"]
    assert [v["batches"] for v in history] == [1, 2] and history[0]["psnr"] == history[1]["psnr"]


def test_cli_flags_override_the_preset(tmp_path: Path) -> None:
    args = step4_train.parse_args(
        ["--config", str(tiny_preset(tmp_path)), "--stages", "1,2", "--batch_size", "16", "--gradient_accumulation",
         "1", "--epochs", "5,3", "--max_steps", "7", "--learning_rate", "2e-5", "--precision", "32", "--kaggle",
         "--set", "train.batch_size=2", "--freeze_encoder_levels", "1"]
    )  # fmt: skip
    cfg, stages = build_config(args)
    assert stages == ["1", "2"] and cfg.train.batch_size == 16  # the flag wins over --set
    assert [cfg.train.stages[s].epochs for s in ("1", "2", "3")] == [5, 3, 1]
    assert [cfg.train.stages[s].max_steps for s in ("1", "2", "3")] == [7, 7, -1]
    assert (cfg.train.learning_rate, cfg.train.precision, cfg.model.freeze_encoder_levels) == (2e-5, "32", 1)
    assert cfg.train.max_hours == KAGGLE_MAX_HOURS
    with pytest.raises(AetuneError, match="2 values for 1 stages"):
        build_config(step4_train.parse_args(["--config", "demo", "--stages", "1", "--epochs", "1,2"]))
    with pytest.raises(AetuneError, match="--family kl but"):
        build_config(step4_train.parse_args(["--config", "demo", "--family", "kl"]))


def test_demo_preset_matches_its_teacher() -> None:
    demo = yaml.safe_load((Path(step4_train.__file__).parent / "configs" / "demo.yaml").read_text())
    from aetune.nn.foundation import FrozenTeacher

    teacher = FrozenTeacher(demo["teacher"]["name"], pretrained=False)
    assert demo["model"]["args"]["align_dim"] == teacher.embed_dim


def test_unknown_resume_source_is_an_error(tmp_path: Path) -> None:
    work, cfg = make_work_dir(tmp_path), tiny_config(tmp_path)
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    with pytest.raises(AetuneError, match="--resume_from"):
        train(work, cfg, ["1"], resume_from=tmp_path / "nowhere")


def test_stage_one_starts_from_pretrained_weights(tmp_path: Path) -> None:
    """A LightningDiT-layout file: its autoencoder and discriminator load, and the fine-tuning lr is 1e-5."""
    from aetune.families.vavae.loading import lightningdit_state_dict
    from aetune.models import create_autoencoder
    from aetune.nn.patchgan import NLayerDiscriminator

    work = make_work_dir(tmp_path)
    cfg = tiny_config(tmp_path, "train.learning_rate=null", "model.freeze_encoder_levels=1")
    torch.manual_seed(123)
    ae = create_autoencoder("vavae", **cfg.model.args)
    disc = NLayerDiscriminator(ndf=cfg.discriminator.ndf, n_layers=cfg.discriminator.n_layers)
    torch.save({"state_dict": lightningdit_state_dict(ae, disc)}, tmp_path / "released.ckpt")
    assert train(work, cfg, ["1"], pretrained_path=tmp_path / "released.ckpt").status == "done"
    state = json.loads((work / "checkpoints/run_state.json").read_text())
    assert state["origin"] == "pretrained" and "with its discriminator" in state["stages"]["1"]["init"]
    ckpt = torch.load(work / "checkpoints/stage1/last.ckpt", weights_only=True)
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == 1e-5
    weights = ckpt["state_dict"]
    frozen = weights["autoencoder.encoder.conv_in.weight"]  # frozen level: still the file's value
    torch.testing.assert_close(frozen, ae.encoder.conv_in.weight.detach(), rtol=0, atol=0)
    assert not torch.equal(weights["autoencoder.decoder.conv_out.weight"], ae.decoder.conv_out.weight.detach())
    for k, v in disc.state_dict().items():  # stage 1 has no GAN: the discriminator is the file's
        torch.testing.assert_close(weights[f"discriminator.{k}"], v, rtol=0, atol=0)


def test_every_trainable_parameter_has_exactly_one_optimizer(tmp_path: Path) -> None:
    from aetune.train.module import AutoencoderModule

    cfg = tiny_config(tmp_path, "model.freeze_encoder_levels=1")
    module = AutoencoderModule(cfg, "2", total_batches=4, learning_rate=1e-4, meta={})
    opt_g, opt_d = module.configure_optimizers()
    in_g = {id(p) for g in opt_g.param_groups for p in g["params"]}
    in_d = {id(p) for g in opt_d.param_groups for p in g["params"]}
    trainable = {id(p) for p in module.parameters() if p.requires_grad}
    assert not in_g & in_d and in_g | in_d == trainable
    assert in_d == {id(p) for p in module.discriminator.parameters()}
    assert not {id(p) for p in module.teacher.parameters()} & trainable
    assert module.recipe.frozen_encoder and not {id(p) for p in module.autoencoder.encoder.conv_in.parameters()} & in_g
