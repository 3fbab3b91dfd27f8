"""Step 5's report: summaries, thresholds, final score, probe/silhouette, metrics.json, table and figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aetune.evaluate import figures, report
from aetune.evaluate.evaluator import SplitResult
from aetune.evaluate.latent_stats import LatentStatsAccumulator

NO_LPIPS = {"lpips": "unavailable: vgg16-397923af.pth is missing"}


def _result(latents: np.ndarray, labels: np.ndarray) -> SplitResult:
    acc = LatentStatsAccumulator()
    acc.update(torch.from_numpy(latents[:, :, None, None].astype(np.float32)))
    return SplitResult(labels=labels, latents=latents.astype(np.float32), stats=acc.result())


def test_final_score_and_thresholds() -> None:
    per_image = {
        "psnr": np.array([31.0, 33.0]),
        "ssim_y": np.array([0.9, 0.8]),
        "lpips": np.array([0.05, 0.07]),
        "mse": np.array([0.001, 0.003]),
    }
    s = report.summarize(per_image, {})
    assert s["final_score"] == pytest.approx(32.0 + 10 * 0.85 - 5 * 0.06)
    checks = report.check_thresholds(s)
    assert checks == {
        "PSNR > 25 dB (minimum)": True,
        "PSNR > 30 dB (good)": True,
        "LPIPS < 0.1 (good)": True,
        "MSE < 0.01 (excellent)": True,
    }
    bad = report.summarize({"psnr": np.array([26.0]), "ssim_y": np.array([0.5]), "mse": np.array([0.02])}, NO_LPIPS)
    assert bad["lpips"].startswith("unavailable: vgg16") and bad["final_score"] == "unavailable: needs lpips"
    assert report.check_thresholds(bad) == {
        "PSNR > 25 dB (minimum)": True,
        "PSNR > 30 dB (good)": False,
        "LPIPS < 0.1 (good)": None,
        "MSE < 0.01 (excellent)": False,
    }
    assert report.check_thresholds({"psnr": 24.9})["PSNR > 25 dB (minimum)"] is False


def test_quality_report_overall_and_per_user() -> None:
    per_image = {"psnr": np.array([20.0, 22.0, 30.0, 40.0]), "mse": np.array([0.1, 0.1, 0.0, 0.0])}
    labels = np.array([0, 0, 2, 2])
    q = report.quality_report(per_image, labels, {"ID_1": 0, "ID_2": 1, "ID_10": 2}, NO_LPIPS)
    assert q["overall"]["psnr"] == pytest.approx(28.0)
    assert set(q["per_user"]) == {"ID_1", "ID_10"}  # ID_2 has no image in this split
    assert q["per_user"]["ID_1"]["psnr"] == pytest.approx(21.0) and q["per_user"]["ID_1"]["num_images"] == 2
    assert q["per_user"]["ID_10"]["checks"]["PSNR > 30 dB (good)"] is True
    assert q["per_user"]["ID_1"]["checks"]["PSNR > 25 dB (minimum)"] is False
    table = report.format_table(q)
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["user", "n", "MSE", "PSNR"]
    row = next(line for line in lines if line.startswith("ID_1 "))
    assert "21.00" in row and "FAIL" in row and "n/a" in row  # LPIPS n/a
    assert any(line.startswith("overall") and "28.00" in line for line in lines)
    assert "LPIPS < 0.1 (good): unavailable: vgg16" in table
    assert "final_score: unavailable: needs ssim_y, lpips" in table


def test_constant_image_baseline_beside_each_psnr() -> None:
    per_image = {
        "psnr": np.array([20.0, 22.0, 11.0, 13.0]),
        "psnr_baseline": np.array([12.0, 14.0, 12.5, 13.5]),
        "psnr_y": np.array([21.0, 23.0, 12.0, 14.0]),
        "psnr_y_baseline": np.array([13.0, 15.0, 13.0, 14.0]),
    }
    q = report.quality_report(per_image, np.array([0, 0, 1, 1]), {"ID_1": 0, "ID_2": 1}, NO_LPIPS)
    assert (q["overall"]["psnr_baseline"], q["overall"]["psnr_y_baseline"]) == (13.0, 13.75)
    assert q["checks"][report.BASELINE_CHECK] is True  # 16.5 dB overall against 13.0
    one, two = q["per_user"]["ID_1"], q["per_user"]["ID_2"]
    assert (one["psnr"], one["psnr_baseline"], one["checks"][report.BASELINE_CHECK]) == (21.0, 13.0, True)
    assert (two["psnr"], two["psnr_baseline"], two["checks"][report.BASELINE_CHECK]) == (12.0, 13.0, False)
    lines = report.format_table(q).splitlines()
    assert lines[0].split()[2:7] == ["MSE", "PSNR", "const", "PSNR-Y", "const-Y"]
    assert next(x for x in lines if x.startswith("ID_2")).split()[3:7] == ["12.00", "13.00", "13.00", "13.50"]
    line = next(x for x in lines if report.BASELINE_CHECK in x)
    assert line.split()[0] == "pass" and "16.50 vs 13.00 dB (+3.50 dB)" in line
    collapsed = report.quality_report({k: v[2:] for k, v in per_image.items()}, np.array([1, 1]), {"ID_2": 1}, {})
    line = report.format_baseline(collapsed["overall"])
    assert line.split()[0] == "FAIL" and "(-1.00 dB)" in line and "flat colour" in line
    assert report.beats_baseline({"psnr": 30.0}) is None  # no baseline (no reconstructions): not a pass
    doc = report.metrics_document(q, {}, {"family": "kl"}, "x.pt", "val")
    assert "psnr_baseline" in doc["definitions"] and doc["overall"]["psnr_baseline"] == 13.0


def test_probe_and_silhouette_on_separable_and_random_latents() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 10, (3, 16))

    def separable(n: int) -> SplitResult:
        y = np.repeat(np.arange(3), n)
        return _result(centres[y] + rng.normal(0, 0.5, (3 * n, 16)), y)

    train, val = separable(20), separable(6)
    space = report.latent_space_report(train, val, val, "val")
    assert space["linear_probe_accuracy"] == 1.0 and space["silhouette"] > 0.8
    assert space["chance_accuracy"] == pytest.approx(1 / 3)

    def noise(n: int) -> SplitResult:
        return _result(rng.normal(0, 1, (4 * n, 16)), np.repeat(np.arange(4), n))

    train, val = noise(40), noise(40)
    space = report.latent_space_report(train, val, val, "val")
    assert space["linear_probe_accuracy"] < 0.45  # chance is 0.25
    assert abs(space["silhouette"]) < 0.1
    assert "linear probe accuracy" in report.format_latent_space(space)

    missing = report.latent_space_report(None, val, val, "val")
    assert missing["linear_probe_accuracy"].startswith("unavailable: needs images in both")


def test_metrics_document_records_random_teacher() -> None:
    q = report.quality_report({"psnr": np.array([27.0])}, np.array([0]), {"u": 0}, NO_LPIPS)
    space = {"linear_probe_accuracy": 1.0, "silhouette": 0.5}
    meta = {"family": "vavae", "dataset": "toy", "stage": "3", "random_teacher": True, "lpips": False}
    doc = json.loads(json.dumps(report.metrics_document(q, space, meta, "ckpt.pt", "val")))
    assert doc["random_teacher"] is True and doc["pretrained_lpips"] is False
    assert any("RANDOM TEACHER" in w for w in doc["warnings"])
    assert doc["num_images"] == 1 and doc["split"] == "val" and doc["overall"]["psnr"] == 27.0
    assert doc["task"] == "reconstruction"  # no model.task in the meta's config: the default
    restoration = {**meta, "config": {"model": {"task": "restoration"}}}
    assert report.metrics_document(q, space, restoration, "ckpt.pt", "val")["task"] == "restoration"
    assert {t["name"] for t in doc["thresholds"]} == {t.name for t in report.THRESHOLDS}
    assert "RANDOM TEACHER" in report.figure_title(meta, "val")
    clean = report.metrics_document(q, space, {**meta, "random_teacher": False, "lpips": True}, "c", "val")
    assert clean["warnings"] == [] and "RANDOM" not in report.figure_title({"random_teacher": False}, "val")


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_reconstruction_figure(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    examples = []
    for user in ("ID_1", "ID_2", "ID_3"):
        orig = rng.random((3, 32, 32)).astype(np.float32)
        examples.append((user, orig, np.clip(orig + rng.normal(0, 0.05, orig.shape), 0, 1).astype(np.float32)))
    one = _png_size(figures.plot_reconstructions(examples[:1], tmp_path / "one.png", "title"))
    three = _png_size(figures.plot_reconstructions(examples, tmp_path / "r.png", "title"))
    assert three[1] > 2.5 * one[1] and three[0] == pytest.approx(one[0], rel=0.1)  # one row per example
    with pytest.raises(ValueError, match="no examples"):
        figures.plot_reconstructions([], tmp_path / "empty.png")


@pytest.mark.parametrize(("n", "panels"), [(12, ["PCA"]), (40, ["PCA", "t-SNE"])])
def test_latent_projection(tmp_path: Path, n: int, panels: list[str]) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 24))
    assert list(figures.project_2d(x)) == panels
    assert all(xy.shape == (n, 2) for xy in figures.project_2d(x).values())
    labels = np.arange(n) % 3
    path = figures.plot_latent_users(x, labels, {"a": 0, "b": 1, "c": 2}, tmp_path / "l.png", "probe 1.0")
    assert _png_size(path)[0] > 400


def _write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    cols = sorted({k for r in rows for k in r})
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(cols)] + [",".join(str(r.get(c, "")) for c in cols) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_training_curves_from_sparse_csvs(tmp_path: Path) -> None:
    ckpts = tmp_path / "checkpoints"
    for stage, n in (("1", 30), ("2", 20), ("10", 5)):
        rows: list[dict[str, object]] = [{"step": i, "epoch": 0, "train/total": 1.0 / (i + 1)} for i in range(n)]
        rows += [{"step": n - 1, "epoch": 0, "val/psnr": 20.0 + int(stage)}]
        _write_csv(ckpts / f"stage{stage}" / "metrics.csv", rows)
    (ckpts / "stage3").mkdir()  # a stage that has not logged yet
    files = figures.stage_metrics_files(ckpts)
    assert list(files) == ["1", "2", "10"]
    data = figures.read_metrics_csv(files["1"])
    assert set(data) == {"train/total", "val/psnr"}
    xs, ys = data["val/psnr"]
    assert xs.tolist() == [29.0] and ys.tolist() == [21.0]
    assert len(data["train/total"][0]) == 30
    path = figures.plot_training_curves(files, tmp_path / "curves.png")
    assert path is not None and _png_size(path)[0] > 400
    assert figures.plot_training_curves({}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_curve_panels_put_the_recipes_own_terms_after_the_totals(tmp_path: Path) -> None:
    from aetune.recipes import get_recipe

    rows = [{"step": i, "train/g_total": 1.0, "train/l1": 0.5, "train/gan": 0.1} for i in range(12)]
    _write_csv(tmp_path / "stage1" / "metrics.csv", rows)
    path = figures.plot_training_curves(figures.stage_metrics_files(tmp_path), tmp_path / "c.png", ("l1",))
    assert path is not None and _png_size(path)[0] > 400

    vavae = {"train/g_total", "train/d_total", "train/kl_loss", "train/logits_real", "train/vf_loss"}
    vavae |= {"train/rec_loss", "val/psnr", "val/ssim"}
    first = get_recipe("vavae").progress_keys  # rec_loss, vf_loss
    assert figures.curve_panels(vavae, first, 12) == [
        *("train/d_total", "train/g_total", "train/rec_loss", "train/vf_loss", "train/kl_loss"),
        *("train/logits_real", "val/psnr", "val/ssim"),
    ]
    pair = {"train/g_total", "train/gan", "train/l1", "train/l2", "train/ssim", "val/PSNR"}
    first = get_recipe("kl", "restoration").progress_keys  # l1, ssim: its own names, no family's
    assert figures.curve_panels(pair, first, 12) == [
        *("train/g_total", "train/l1", "train/ssim", "train/gan", "train/l2", "val/PSNR"),
    ]
    assert figures.curve_panels(pair, first, 3) == ["train/g_total", "train/l1", "val/PSNR"]  # val always kept


def test_smoothing_keeps_length_and_constant() -> None:
    y = np.full(200, 3.0)
    assert np.allclose(figures._smooth(y), y) and len(figures._smooth(np.arange(7.0))) == 7
    assert not math.isnan(float(figures._smooth(np.arange(500.0)).mean()))


def test_rfid_report_matches_a_scipy_reference_and_counts_images() -> None:
    from scipy import linalg

    rng = np.random.default_rng(2)
    real = rng.normal(size=(60, 8))
    fake = real @ rng.normal(0, 0.3, (8, 8)) + rng.normal(0.5, 1.0, (60, 8))
    res = _result(rng.normal(size=(60, 4)), np.arange(60) % 3)
    res.real_features, res.fake_features = real, fake
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    ref = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real))
    full = report.rfid_report(res, None)
    assert full["rfid"] == pytest.approx(ref, rel=1e-6)
    assert full["rfid_num_images"] == 60 and "rank-deficient" not in full["rfid_note"]  # 60 images >= 8 dims
    few = _result(rng.normal(size=(5, 4)), np.arange(5) % 2)
    few.real_features, few.fake_features = real[:5], fake[:5]  # 5 images, 8 feature dimensions
    small = report.rfid_report(few, None)
    assert small["rfid_num_images"] == 5 and isinstance(small["rfid"], float)
    assert "fewer than the 8 feature dimensions" in small["rfid_note"] and "rank <= 4" in small["rfid_note"]
    no_features = _result(rng.normal(size=(5, 4)), np.arange(5) % 2)
    assert report.rfid_report(no_features, "unavailable: weights missing") == {"rfid": "unavailable: weights missing"}
    one = _result(rng.normal(size=(2, 4)), np.array([0, 1]))
    one.labels, one.real_features, one.fake_features = one.labels[:1], real[:1], fake[:1]
    assert report.rfid_report(one, None) == {"rfid": "unavailable: rFID needs at least 2 images"}


def test_rfid_note_is_printed_beside_the_value() -> None:
    per_image = {"mse": np.array([0.01, 0.02]), "psnr": np.array([20.0, 22.0])}
    rfid = {"rfid": 12.5, "rfid_num_images": 2, "rfid_note": "2 images, fewer than the 2048 feature dimensions"}
    quality = report.quality_report(per_image, np.array([0, 1]), {"a": 0, "b": 1}, {}, rfid)
    line = next(x for x in report.format_table(quality).splitlines() if "rfid" in x)
    assert "12.50" in line and "2 images, fewer than the 2048 feature dimensions" in line


@pytest.mark.parametrize(
    ("psnr", "advice"),
    [(31.0, "skip fine-tuning"), (30.0, "skip fine-tuning"), (29.9, "light fine-tuning"), (25.0, "light fine-tuning"),
     (24.9, "deep fine-tuning")],
)  # fmt: skip
def test_fine_tuning_advice_by_psnr(psnr: float, advice: str) -> None:
    got = report.fine_tuning_advice({"psnr": psnr})
    assert got["advice"] == advice and got["reason"] == report.FINE_TUNING_ADVICE[advice]
    assert report.format_advice(got).startswith(f"advice: {advice} (PSNR {psnr:.2f} dB)")
    assert report.fine_tuning_advice({"psnr": "unavailable: x"})["advice"] == "unavailable"
