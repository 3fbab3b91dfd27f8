"""Config: defaults, presets, overrides, errors, YAML round trip."""

from __future__ import annotations

import pytest
import yaml

from aetune.config import (
    Config,
    available_presets,
    config_from_dict,
    dump_config,
    load_config,
    load_config_file,
)
from aetune.errors import AetuneError


def test_defaults_are_the_released_vavae_values() -> None:
    c = load_config()
    assert c.model.family == "vavae"
    assert c.loss.kl_weight == 1e-6
    assert c.loss.disc_weight == 0.5
    assert c.train.optimizer.g.betas == c.train.optimizer.d.betas == [0.5, 0.9]
    assert c.teacher.name == "vit_large_patch14_dinov2.lvd142m"
    assert c.teacher.normalize == "none"


def test_vavae_preset_holds_the_seed_stage_plan() -> None:
    c = load_config("vavae")
    assert list(c.train.stages) == ["1", "2", "3"]
    assert [c.train.stages[s].epochs for s in "123"] == [30, 15, 10]
    s1, s2, s3 = (c.stage_loss(s) for s in "123")
    assert (s1.vf_weight, s1.disc_start) == (0.5, -1)
    assert (s2.vf_weight, s2.disc_start) == (0.1, 0)
    assert (s3.distmat_margin, s3.cos_margin) == (0.25, 0.5)
    assert s3.kl_weight == 1e-6  # untouched keys come from the defaults


def test_demo_preset_inherits_and_says_random_teacher() -> None:
    c = load_config("demo")
    assert c.preset == "demo"
    assert c.model.family == "vavae"  # from base: vavae
    assert c.teacher.pretrained is False
    assert c.data.image_size == 64
    assert list(c.train.stages) == ["1", "2", "3"]


@pytest.mark.parametrize("preset", available_presets())
def test_every_preset_loads_and_round_trips(preset: str) -> None:
    c = load_config(preset)
    assert config_from_dict(yaml.safe_load(dump_config(c))) == c


def test_overrides_are_typed() -> None:
    c = load_config(
        "vavae",
        ["train.batch_size=4", "loss.kl_weight=1e-5", "model.args.ch=32", "train.precision=null", "data.hflip=true"],
    )
    assert c.train.batch_size == 4 and isinstance(c.train.batch_size, int)
    assert c.loss.kl_weight == pytest.approx(1e-5) and isinstance(c.loss.kl_weight, float)
    assert c.model.args == {"ch": 32}
    assert c.train.precision is None
    assert c.data.hflip is True


def test_stage_override_merges_into_the_plan() -> None:
    c = load_config("vavae", ["train.stages.2.epochs=3", "train.stages.3.loss.cos_margin=0.4"])
    assert c.train.stages["2"].epochs == 3
    assert c.train.stages["1"].epochs == 30
    assert c.stage_loss("3").cos_margin == pytest.approx(0.4)
    assert c.stage_loss("3").distmat_margin == 0.25


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.batchsize=3", "did you mean 'train.batch_size'"),
        ("loss.kl_weigth=1", "did you mean 'loss.kl_weight'"),
        ("trian.batch_size=3", "did you mean 'train'"),
        ("train.batch_size=abc", "must be an integer"),
        ("train.batch_size=2.5", "must be an integer"),
        ("data.hflip=maybe", "must be true or false"),
        ("loss.kl_weight=[1]", "must be a number"),
        ("train.stages.7.epochs=3", "stage 7 is not in the plan"),
        ("train.stages.1.loss.vf_weigth=0.1", "did you mean 'train.stages.1.loss.vf_weight'"),
        ("no_equals_sign", "expects section.key=value"),
    ],
)
def test_bad_overrides_are_clear_errors(override: str, message: str) -> None:
    with pytest.raises(AetuneError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_config("vavae", [override])


def test_unknown_preset_suggests_a_name() -> None:
    with pytest.raises(AetuneError, match="did you mean 'vavae'"):
        load_config("vavea")


def test_yaml_file_preset_and_base_chain(tmp_path) -> None:
    p = tmp_path / "mine.yaml"
    p.write_text("base: demo\ntrain:\n  batch_size: 2\n")
    c = load_config(str(p))
    assert c.train.batch_size == 2 and c.data.image_size == 64


def test_self_inheriting_preset_is_an_error(tmp_path) -> None:
    p = tmp_path / "loop.yaml"
    p.write_text(f"base: {p}\n")
    with pytest.raises(AetuneError, match="inherits from itself"):
        load_config(str(p))


def test_dump_and_reload_file(tmp_path) -> None:
    c = load_config("demo", ["train.seed=7"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(c))
    again = load_config_file(path)
    assert again == c and isinstance(again, Config)


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("train: [unclosed", "is not valid YAML"),
        ("- a\n- list\n", "must hold a YAML mapping, not a list"),
        ("\xff", ""),
    ],
)
def test_broken_preset_and_config_files_are_one_line_naming_the_file(tmp_path, text: str, what: str) -> None:
    preset = tmp_path / "mine.yaml"
    preset.write_bytes(text.encode("latin-1"))
    with pytest.raises(AetuneError, match=f"mine.yaml {what}") as info:
        load_config(str(preset))
    assert "\n" not in str(info.value)
    with pytest.raises(AetuneError, match="mine.yaml") as info:
        load_config_file(preset)
    assert "re-run step 4" in str(info.value) or "pick a shipped preset" in str(info.value)


def test_a_hand_edited_config_yaml_names_the_file_and_the_key(tmp_path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(load_config("demo")).replace("batch_size: 8", "batch_size: 0"))
    with pytest.raises(AetuneError, match=r"config.yaml: train.batch_size = 0 is out of range"):
        load_config_file(path)
